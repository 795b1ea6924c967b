"""The HTML report: tables (best / second, skipped metrics), the image grid (roles, failures, paging, thumbnails),
the filled-weights banner, escaping, and merging runs. Builds small fake run directories (reports.sample)."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from harness.protocol import TASKS
from harness.store import METRICS_COLUMNS, RunStore, write_csv
from reports import render
from reports.runs import merge
from reports.sample import FAILED_ERROR, make_run
from reports.tables import DASH, build_tables, format_value, to_csv, to_latex, to_markdown

METHODS = ("identity", "hairflash:final", "barbershop", "hairclip")
SKIP_REASON = "skipped: needs ViT-B-32.pt (not found in the weight directories)"


def _metric_rows() -> list[tuple]:
    """FID (lower is better): hairflash best, barbershop second; identity lower still but a bound (not ranked).
    PSNR gt (higher is better): barbershop best, hairclip second (with a note: "ok (2/3 items)"). FID_CLIP
    skipped (with a stray value that must never be shown). Memory the same for all (no marks), with a note."""
    fid = {"identity": 5.0, "hairflash:final": 10.0, "barbershop": 12.5, "hairclip": 20.0}
    psnr = {"identity": 30.0, "hairflash:final": 20.0, "barbershop": 25.0, "hairclip": 22.0}
    rows = []
    for m in METHODS:
        for task in TASKS:
            rows.append((m, task, "fid", fid[m], fid[m] - 1.5, fid[m] + 1.5, 3, "ok"))
            rows.append((m, task, "fid_clip", 7.77, "", "", 3, SKIP_REASON))
            rows.append((m, task, "psnr_gt", psnr[m], "", "", 3, "ok (2/3 items)" if m == "hairclip" else "ok"))
            rows.append((m, task, "peak_mem_mb", 100.0, "", "", 3, "ok (rss_peak)"))
            rows.append((m, task, "time_median_s", {"identity": 0.001}.get(m, 1.5), "", "", 3, "ok"))
    return rows


def fake_run(root: Path, *, filled: bool = True, name: str | None = None, n_triplets: int = 3,
             methods: tuple[str, ...] = METHODS) -> Path:
    make_run(root, methods=methods, n_triplets=n_triplets, size=32, filled=filled, name=name,
             failed=(("hairclip", "full", "t001"),))
    write_csv(root / "metrics.csv", METRICS_COLUMNS, [r for r in _metric_rows() if r[0] in methods])
    return root


class _Cells(HTMLParser):
    """Rows of one ``<table>`` (by id, or the first with the class): cells as (text, bold, underlined, html)."""

    def __init__(self, table_id: str | None = None, table_class: str | None = None):
        super().__init__()
        self.table_id, self.table_class = table_id, table_class
        self.inside = False
        self.depth = 0
        self.rows: list[list[dict]] = []
        self.cell: dict | None = None
        self.marks: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            if not self.inside and (a.get("id") == self.table_id or
                                    (self.table_class and self.table_class in (a.get("class") or "").split())):
                self.inside = True
                self.depth = 0
            if self.inside:
                self.depth += 1
            return
        if not self.inside:
            return
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = {"text": "", "bold": False, "underline": False, "imgs": [], "links": [],
                         "class": a.get("class") or "", "tag": tag}
            self.rows[-1].append(self.cell)
        elif self.cell is not None:
            if tag == "b":
                self.cell["bold"] = True
            elif tag == "u":
                self.cell["underline"] = True
            elif tag == "img":
                self.cell["imgs"].append(a.get("src"))
            elif tag == "a":
                self.cell["links"].append(a.get("href"))

    def handle_endtag(self, tag):
        if self.inside and tag == "table":
            self.depth -= 1
            if self.depth == 0:
                self.inside = False
        elif tag in ("td", "th"):
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


def table_rows(html: str, *, table_id: str | None = None, table_class: str | None = None) -> list[list[dict]]:
    parser = _Cells(table_id, table_class)
    parser.feed(html)
    return parser.rows


def md_cells(md: str) -> dict[str, dict[str, str]]:
    """{row label: {header: cell text}} of a Markdown table."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        out[cells[0].strip("*").rstrip("\u2020").replace("\\", "")] = dict(zip(header, cells, strict=True))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """One fake run, rendered into RUN/report (inside the run)."""
    run = fake_run(tmp_path_factory.mktemp("reports") / "run1")
    render([run], run / "report")
    return run


def test_markdown_latex_best_bold_second_underlined():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run = fake_run(Path(tmp) / "r")
        main = build_tables(merge([run]))[0]
    assert main.key == "main"
    md = md_cells(to_markdown(main))
    # lower is better (FID): hairflash best, barbershop second; identity is a bound, never marked
    assert md["hairflash:final"]["FID full \u2193"].startswith("**10.00**")
    assert md["barbershop"]["FID full \u2193"].startswith("<u>12.50</u>")
    assert md["hairclip"]["FID full \u2193"].startswith("20.00")
    assert md["identity"]["FID full \u2193"].startswith("5.00")
    assert "\u00b11.50" in md["hairclip"]["FID full \u2193"]  # the 95% interval, half width
    tex = to_latex(main)
    assert r"\textbf{10.00}" in tex and r"\underline{12.50}" in tex
    assert r"\textbf{5.00}" not in tex and r"\underline{20.00}" not in tex
    assert format_value(1.23456, 2) == "1.23" and format_value(0.0, 3) == "0.000"
    assert format_value(0.00021, 3) == "0.00021" and format_value(-7.5e-05, 2) == "-0.000075"  # never "0.000"
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\cmidrule(lr){2-6}" in tex


def test_tables_higher_is_better_and_html(report: Path):
    md = md_cells((report / "report" / "tables" / "reference_full.md").read_text())
    # higher is better (PSNR gt): barbershop 25 best, hairclip 22 second, hairflash 20 plain, identity 30 a bound
    assert md["barbershop"]["PSNR gt \u2191"] == "**25.00**"
    assert md["hairclip"]["PSNR gt \u2191"] == "<u>22.00</u><sup>2</sup>"  # a number with a note
    assert md["barbershop"]["Mem MB \u2193"] == "100<sup>1</sup>"  # all equal: not marked
    md_text = (report / "report" / "tables" / "reference_full.md").read_text()
    assert "<sup>2</sup> 2/3 items" in md_text and "<sup>1</sup> rss\\_peak" in md_text
    assert md["hairflash:final"]["PSNR gt \u2191"] == "20.00"
    assert md["identity"]["PSNR gt \u2191"] == "30.00"
    tex = (report / "report" / "tables" / "reference_full.tex").read_text()
    assert r"\textbf{25.00}" in tex and r"\underline{22.00}" in tex and r"\textbf{30.00}" not in tex

    for page in (report / "report" / "index.html", report / "report" / "tables" / "main.html"):
        rows = table_rows(page.read_text(), table_id="table-main")
        header = [c["text"].strip() for c in rows[1]]
        body = {r[0]["text"].split("bound")[0].strip(): r[1:] for r in rows[2:]}
        assert header[0] == "full"
        fid_full = {label: cells[0] for label, cells in body.items()}
        assert fid_full["hairflash:final"]["bold"] and not fid_full["hairflash:final"]["underline"]
        assert fid_full["barbershop"]["underline"] and not fid_full["barbershop"]["bold"]
        assert not fid_full["hairclip"]["bold"] and not fid_full["hairclip"]["underline"]
        assert not fid_full["identity"]["bold"] and not fid_full["identity"]["underline"]
    rows = table_rows((report / "report" / "index.html").read_text(), table_id="table-reference_full")
    psnr = {r[0]["text"].split("bound")[0].strip(): r[1] for r in rows[1:]}
    assert psnr["barbershop"]["bold"] and psnr["hairclip"]["underline"]
    assert not psnr["identity"]["bold"] and not psnr["hairflash:final"]["underline"]


def test_skipped_metric_dash_and_reason_never_a_number(report: Path):
    tables = report / "report" / "tables"
    md_text = (tables / "main.md").read_text()
    md = md_cells(md_text)
    for label in METHODS:
        assert md[label]["FID\\_CLIP full \u2193"] == f"{DASH}<sup>1</sup>"
    assert "<sup>1</sup> skipped: needs ViT-B-32.pt (not found in the weight directories)" in md_text
    for name in ("main.md", "main.tex", "main.csv", "main.html"):
        assert "7.77" not in (tables / name).read_text(), name
    index = (report / "report" / "index.html").read_text()
    assert "7.77" not in index
    # every FID_CLIP value is skipped: the HTML shows one note instead of a column group of dashes
    rows = table_rows(index, table_id="table-main")
    assert [c["text"].strip() for c in rows[0][1:]] == ["FID \u2193", "Time s \u2193"]
    assert len(rows[1]) == 10 and all(len(r) == 11 for r in rows[2:])  # FID x5, Time x5
    assert DASH not in "".join(c["text"] for r in rows for c in r)
    assert index.count("FID_CLIP skipped: needs ViT-B-32.pt (not found in the weight directories)") == 1
    assert r"--\textsuperscript{1}" in (tables / "main.tex").read_text()
    assert SKIP_REASON in (tables / "main.csv").read_text()


def _grid(report_dir: Path, task: str, page: int = 1) -> tuple[list[str], list[list[dict]]]:
    rows = table_rows((report_dir / f"grid-{task}-{page}.html").read_text(), table_class="grid")
    return [c["text"].strip() for c in rows[0]], rows[1:]


def _tid(row: list[dict]) -> str:
    """The triplet id of a grid row (row head: id, then #number)."""
    return row[0]["text"].split("#")[0].strip()


def test_grid_columns_roles_and_links(report: Path):
    store = RunStore(report)
    triplets = {t.id: t for t in store.triplets()}
    out = report / "report"
    for task, roles in TASKS.items():
        header, rows = _grid(out, task)
        assert header == ["Triplet", f"Face ({roles[0]})", f"Shape ({roles[1]})", f"Color ({roles[2]})",
                          "Ground truth", *METHODS]
        assert len(rows) == len(triplets)
        for row in rows:
            t = triplets[_tid(row)]
            for k, role in enumerate(roles):  # the image playing the role, by id and by thumbnail
                image_id = getattr(t, role)
                assert row[1 + k]["text"].strip() == image_id
                assert row[1 + k]["imgs"][0].endswith(f"/inputs/{image_id}.jpg")
            for cell in row[1:]:  # every link and thumbnail resolves (relative, file://)
                for href in cell["links"] + cell["imgs"]:
                    assert not href.startswith(("/", "http")), href
                    assert (out / unquote(href)).is_file(), href
            assert row[5]["links"][0] == f"../outputs/identity/{task}/{t.id}.png"  # inside the run: relative
    _, rows = _grid(out, "color")
    for row in rows:  # task color: the Shape column shows the face image
        assert row[2]["imgs"] == row[1]["imgs"]
        assert row[3]["imgs"] != row[1]["imgs"]
    _, rows = _grid(out, "shape")
    for row in rows:  # task shape: the Color column shows the face image
        assert row[3]["imgs"] == row[1]["imgs"]


def test_failure_shown_and_error_escaped(report: Path):
    out = report / "report"
    html = (out / "grid-full-1.html").read_text()
    _, rows = _grid(out, "full")
    row = next(r for r in rows if _tid(r) == "t001")
    failed = row[1 + 3 + 1 + METHODS.index("hairclip")]
    assert "failed" in failed["class"] and failed["imgs"] == []
    assert "bad output <script>alert('x')</script>" in failed["text"]  # the text, as text
    assert "<script>alert(" not in html and "&lt;script&gt;alert(" in html
    assert "<script>alert(" not in (out / "index.html").read_text()
    assert "<script>" not in (out / "grid-data" / "full.js").read_text()
    assert FAILED_ERROR.split("<")[0] in (out / "index.html").read_text()  # first error per method listed
    others = [r[1 + 3 + 1 + METHODS.index("hairclip")] for r in rows if _tid(r) != "t001"]
    assert all(c["imgs"] and "failed" not in c["class"] for c in others)


def _html_pages(out: Path) -> list[Path]:
    pages = sorted(out.rglob("*.html"))
    assert len(pages) >= 1 + len(TASKS) + 1
    return pages


def test_filled_banner_on_every_page(report: Path, tmp_path: Path):
    for page in _html_pages(report / "report"):
        assert 'id="filled-banner"' in page.read_text() and "FILLED WEIGHTS: NOT A RESULT" in page.read_text(), page
    for name in ("main.md", "main.tex"):
        assert "FILLED WEIGHTS: NOT A RESULT" in (report / "report" / "tables" / name).read_text()
    real = fake_run(tmp_path / "real", filled=False)
    render([real], tmp_path / "out")
    for page in _html_pages(tmp_path / "out"):
        assert 'id="filled-banner"' not in page.read_text() and "NOT A RESULT" not in page.read_text(), page


def test_merge_two_runs(tmp_path: Path):
    a = fake_run(tmp_path / "a", name="runA", methods=("identity", "hairflash:final", "barbershop"))
    b = fake_run(tmp_path / "b", name="runB", filled=False, methods=("identity", "hairflash:final", "hairclip"))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["protocol"]["eval_size"] = 64
    (b / "manifest.json").write_text(json.dumps(manifest))
    comp = merge([a, b])
    labels = [e.label for e in comp.entries]
    assert labels == ["identity (runA)", "hairflash:final (runA)", "barbershop", "identity (runB)",
                      "hairflash:final (runB)", "hairclip"]
    out = tmp_path / "cmp"
    index = render([a, b], out).read_text()
    assert "protocols differ" in index and "eval_size" in index
    assert 'id="filled-banner"' in index and "runA" in index  # one filled run: banner, naming it
    md = md_cells((out / "tables" / "main.md").read_text())
    assert set(md) == set(labels)
    assert "\u2020" in (out / "tables" / "main.md").read_text()  # mixed: filled rows marked
    header, rows = _grid(out, "full")
    assert [h.replace("filled weights", "") for h in header[5:]] == labels
    assert [h.endswith("filled weights") for h in header[5:]] == [True] * 3 + [False] * 3  # mixed: marked
    # filled-weights rows beside real ones are not ranked: runB's hairflash is best, runA's equal value is not
    assert md["hairflash:final (runB)"]["FID full \u2193"].startswith("**10.00**")
    assert md["hairflash:final (runA)"]["FID full \u2193"].startswith("10.00")
    assert len(rows) == 3  # same images and triplets in both runs: one row each
    for row in rows:
        for cell in row[1:]:
            for href in cell["links"]:
                assert href.startswith("images/"), href  # report outside the runs: images copied in
                assert (out / unquote(href)).is_file()


def test_paging(tmp_path: Path):
    run = fake_run(tmp_path / "run", n_triplets=3)
    out = tmp_path / "out"
    render([run], out, page_size=2)
    _, rows1 = _grid(out, "full", 1)
    _, rows2 = _grid(out, "full", 2)
    assert [_tid(r) for r in rows1] == ["t000", "t001"]
    assert [_tid(r) for r in rows2] == ["t002"]
    assert not (out / "grid-full-3.html").exists()
    assert 'href="grid-full-2.html"' in (out / "grid-full-1.html").read_text()
    assert 'href="grid-full-1.html"' in (out / "grid-full-2.html").read_text()
    render([run], out, page_size=50)
    assert not (out / "grid-full-2.html").exists()  # stale pages of an earlier render removed
    assert len(_grid(out, "full", 1)[1]) == 3


def test_thumbnails_made_once(tmp_path: Path):
    run = fake_run(tmp_path / "run")
    render([run], run / "report")
    thumbs = sorted((run / "report" / "thumbs").rglob("*.jpg"))
    assert thumbs
    before = {p: p.stat().st_mtime_ns for p in thumbs}
    render([run], run / "report")
    assert {p: p.stat().st_mtime_ns for p in thumbs} == before
    # a newer source image gets a new thumbnail
    source = run / "outputs" / "barbershop" / "full" / "t000.png"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))
    render([run], run / "report")
    thumb = run / "report" / "thumbs" / "128" / "run" / "outputs" / "barbershop" / "full" / "t000.jpg"
    assert thumb.stat().st_mtime_ns != before[thumb]
    assert sum(p.stat().st_mtime_ns != before[p] for p in thumbs) == 1


def test_index_sections_and_plots(report: Path):
    out = report / "report"
    index = (out / "index.html").read_text()
    for text in ("synthetic", "sample CPU", "0123456789ab", "Main results", "Reference metrics: task full",
                 "grid-full-1.html", "tables/main.csv", "tables/main.tex", "tables/main.md", "Failures",
                 "mixing", "<details"):
        assert text in index, text
    plots = re.findall(r'<img src="(plots/[^"]+\.png)"', index)
    assert "plots/quality_vs_time.png" in plots and "plots/bars_fid.png" in plots
    for p in plots:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in index and "https://" not in index  # no network
    csv_text = to_csv(build_tables(merge([report]))[0])
    assert csv_text.splitlines()[0].startswith("method,FID full,FID full ci_low,FID full ci_high")


def test_run_in_progress_without_ground_truth(tmp_path: Path):
    """A folder dataset (no ground truth) whose metrics are not computed yet, with an unreadable output, renders."""
    import shutil

    run = fake_run(tmp_path / "run", methods=("identity", "hairflash:final"))
    shutil.rmtree(run / "ground_truth")
    (run / "metrics.csv").unlink()
    (run / "per_item.csv").unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["dataset"]["kind"] = manifest["protocol"]["dataset"]["kind"] = "folder"
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "outputs" / "hairflash.final" / "full" / "t002.png").write_bytes(b"not a png")  # a torn output
    index = render([run], run / "report").read_text()
    assert "no metrics.csv" in index
    assert "1 image(s) could not be read" in index
    header, rows = _grid(run / "report", "full")
    assert header == ["Triplet", "Face (face)", "Shape (shape)", "Color (color)", "identity", "hairflash:final"]
    assert all(len(r) == 6 and r[4]["imgs"] for r in rows)
    assert not list((run / "report").glob("tables/*.csv"))  # no metrics, no tables


def test_client_side_sort_in_headless_chromium(tmp_path: Path):
    """The inline script sorts all rows of a task by a per-item metric (failed items first when worst first)."""
    from reports.screenshot import dump_dom, find_browser

    try:
        find_browser()
    except FileNotFoundError:
        pytest.skip("no Chromium/Chrome (apt-get install -y chromium)")
    run = fake_run(tmp_path / "run", n_triplets=4)
    out = tmp_path / "out"
    render([run], out, page_size=2)
    psnr = {r["triplet"]: float(r["value"]) for r in csv_rows(run / "per_item.csv")
            if r["method"] == "hairclip" and r["task"] == "full" and r["metric"] == "psnr_gt"}
    assert "t001" not in psnr  # the failed item
    worst = sorted(psnr, key=psnr.get)
    page = (out / "grid-full-1.html").as_uri()

    def order(hash_: str) -> list[str]:
        dom = dump_dom(f"{page}#{hash_}")
        return re.findall(r'class="rowhead"><b>([^<]+)</b>', dom)

    j = METHODS.index("hairclip")
    assert order(f"sort=psnr_gt%7C{j}&dir=worst&page=1") == ["t001", worst[0]]
    assert order(f"sort=psnr_gt%7C{j}&dir=worst&page=2") == worst[1:3]
    assert order(f"sort=psnr_gt%7C{j}&dir=best&page=1") == worst[::-1][:2]
    assert order("") == ["t000", "t001"]  # no hash: the static page in triplet order


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ ground-truth table, skipped notes, reasons
# Skip reasons exactly as harness writes them into metrics.csv (harness.metrics.fid / harness.weights, one-lined).
SEARCHED = "/root/.cache/hair-harness/weights"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CLIP_URL = ("https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
INCEPTION_SKIP = (f"skipped: needs inception-2015-12-05.pt (from {INCEPTION_URL}) in --weights-dir or "
                  f"$HARNESS_WEIGHTS (searched: {SEARCHED})")
CLIP_SKIP = ("skipped: the 'clip_vitb32' network needs weights: missing weight files:; - ViT-B-32.pt (OpenAI CLIP "
             "ViT-B/32 (FID_CLIP features; HairFast blending encoder's CLIP embeddings)); official source: "
             f"{CLIP_URL}; searched: {SEARCHED}; put them in one of these directories, pass --weights-dir DIR or "
             "set $HARNESS_WEIGHTS")
LPIPS_SKIP = ("skipped: the 'lpips_vgg' network needs weights: missing weight files:; - vgg16-397923af.pth (VGG16 "
              "ImageNet trunk of LPIPS (torchvision layout: features.N.*, classifier.*)); official source: "
              f"{VGG_URL} (torchvision VGG16_Weights.IMAGENET1K_V1); searched: {SEARCHED}; put them in one of "
              "these directories, pass --weights-dir DIR or set $HARNESS_WEIGHTS")
HINT = f"pass --weights-dir DIR or set $HARNESS_WEIGHTS (searched: {SEARCHED})"
INCEPTION_TEXT = f"missing weight file inception-2015-12-05.pt from {INCEPTION_URL}"
CLIP_TEXT = f"missing weight file ViT-B-32.pt (OpenAI CLIP ViT-B/32, for clip_vitb32) from {CLIP_URL}"
LPIPS_TEXT = f"missing weight file vgg16-397923af.pth (VGG16 ImageNet trunk of LPIPS, for lpips_vgg) from {VGG_URL}"


def test_readable_reason():
    from reports.reasons import readable_reason

    assert readable_reason(INCEPTION_SKIP) == f"skipped: {INCEPTION_TEXT}; {HINT}"
    assert readable_reason(CLIP_SKIP) == f"skipped: {CLIP_TEXT}; {HINT}"
    assert readable_reason(LPIPS_SKIP) == f"skipped: {LPIPS_TEXT}; {HINT}"
    two = ("skipped: missing weight files:; - a.pt (net A, 1,024 bytes); official source: https://x.org/a.pt; "
           "- b.pt (net B); official source: org/repo b.pt; searched: /w1, /w2; put them in one of these "
           "directories, pass --weights-dir DIR or set $HARNESS_WEIGHTS")
    assert readable_reason(two) == ("skipped: missing weight files a.pt (net A) from https://x.org/a.pt, b.pt (net B) "
                                    "from org/repo b.pt; pass --weights-dir DIR or set $HARNESS_WEIGHTS "
                                    "(searched: /w1, /w2)")
    assert readable_reason(SKIP_REASON) == SKIP_REASON  # already short: unchanged
    assert readable_reason("skipped: no successful outputs") == "skipped: no successful outputs"
    assert readable_reason("skipped: something:; - first;  - second") == "skipped: something: first; second"


# PSNR gt (higher is better) per task: barbershop best, hairflash second, except task shape (hairclip best,
# barbershop second). Hair dE00 (lower is better): hairflash best, hairclip second; identity lower still (a bound).
# PSNR non-hair: hairflash best, the two others tie (only two distinct values: no second); hairclip skipped on rec.
GT_PSNR = {"identity": 30.0, "hairflash:final": 24.0, "barbershop": 26.0, "hairclip": 22.0}
GT_DE = {"identity": 0.5, "hairflash:final": 3.0, "barbershop": 9.0, "hairclip": 5.0}
GT_OUTSIDE = {"identity": 50.0, "hairflash:final": 40.0, "barbershop": 35.0, "hairclip": 35.0}


def _gt_rows() -> list[tuple]:
    rows = []
    for m in METHODS:
        for task in TASKS:
            psnr = 27.0 if (m, task) == ("hairclip", "shape") else GT_PSNR[m]
            rows.append((m, task, "psnr_gt", psnr, psnr - 1, psnr + 1, 3, "ok"))
            rows.append((m, task, "hair_color_de", GT_DE[m], "", "", 3, "ok"))
            if (m, task) == ("hairclip", "rec"):
                rows.append((m, task, "psnr_outside_hair", "", "", "", 0, "skipped: no successful outputs"))
            else:
                rows.append((m, task, "psnr_outside_hair", GT_OUTSIDE[m], "", "", 3, "ok"))
            rows.append((m, task, "lpips_gt", "", "", "", 0, LPIPS_SKIP))
            rows.append((m, task, "fid", "", "", "", 0, INCEPTION_SKIP))
            rows.append((m, task, "kid", "", "", "", 0, INCEPTION_SKIP))
            rows.append((m, task, "fid_clip", 7.77, "", "", 0, CLIP_SKIP))
    return rows


@pytest.fixture(scope="module")
def gt_report(tmp_path_factory) -> Path:
    """A synthetic run without Inception / CLIP / VGG weights: FID, KID, FID_CLIP and LPIPS all skipped."""
    run = tmp_path_factory.mktemp("reports_gt") / "run"
    make_run(run, methods=METHODS, n_triplets=3, size=32, filled=False)
    write_csv(run / "metrics.csv", METRICS_COLUMNS, _gt_rows())
    render([run], run / "report")
    return run


def _text(html: str) -> str:
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def _section(index: str, key: str) -> str:
    start = index.index(f'<section class="result" id="{key}">')
    return index[start:index.index("</section>", start)]


def test_ground_truth_table_bold_underline(gt_report: Path):
    comp = merge([gt_report])
    assert [t.key for t in build_tables(comp)] == ["main", "ground_truth", *(f"reference_{t}" for t in TASKS)]
    index = (gt_report / "report" / "index.html").read_text()
    # the main table has no number at all: the ground-truth table comes first
    assert index.index('id="ground_truth"') < index.index('id="main"') < index.index('id="reference_full"')
    rows = table_rows(index, table_id="table-ground_truth")
    assert [c["text"].strip() for c in rows[0][1:]] == ["PSNR gt \u2191", "Hair dE00 \u2193", "PSNR non-hair \u2191"]
    assert [c["text"].strip() for c in rows[1]] == list(TASKS) * 3  # LPIPS gt (all skipped) is a note, not columns
    body = {r[0]["text"].split("bound")[0].strip(): r[1:] for r in rows[2:]}
    assert list(body) == list(METHODS)

    def marks(label: str) -> list[str]:
        return ["B" if c["bold"] else "U" if c["underline"] else "." for c in body[label]]

    #                          PSNR gt: full color shape both rec | Hair dE00 x5 | PSNR non-hair x5
    assert marks("identity") == ["."] * 15  # a bound: never marked
    assert marks("hairflash:final") == list("UU.UU") + list("BBBBB") + list("BBBBB")
    assert marks("barbershop") == list("BBUBB") + list(".....") + list(".....")
    assert marks("hairclip") == list("..B..") + list("UUUUU") + list(".....")
    assert body["hairclip"][14]["text"].strip() == f"{DASH}1"  # one skipped cell stays a dash with its footnote
    assert body["barbershop"][0]["text"].strip().startswith("26.00")
    gt_text = _text(_section(index, "ground_truth"))
    assert gt_text.count(f"LPIPS gt skipped: {LPIPS_TEXT}; {HINT}") == 1
    assert "1 skipped: no successful outputs" in gt_text

    md = md_cells((gt_report / "report" / "tables" / "ground_truth.md").read_text())
    assert md["barbershop"]["PSNR gt full \u2191"].startswith("**26.00**")
    assert md["hairflash:final"]["PSNR gt full \u2191"].startswith("<u>24.00</u>")
    assert md["hairclip"]["PSNR gt shape \u2191"].startswith("**27.00**")
    assert md["hairflash:final"]["Hair dE00 color \u2193"] == "**3.00**"
    assert md["hairclip"]["Hair dE00 color \u2193"] == "<u>5.00</u>"
    assert md["identity"]["Hair dE00 color \u2193"] == "0.50"
    assert md["barbershop"]["PSNR non-hair full \u2191"] == "35.00"  # tie of the two worse values: no second
    assert md["hairflash:final"]["LPIPS gt full \u2193"] == f"{DASH}<sup>1</sup>"  # the files keep every column
    tex = (gt_report / "report" / "tables" / "ground_truth.tex").read_text()
    assert r"\textbf{26.00}" in tex and r"\underline{24.00}" in tex and r"\textbf{0.50}" not in tex
    assert (gt_report / "report" / "tables" / "ground_truth.csv").read_text().splitlines()[0].startswith(
        "method,PSNR gt full,PSNR gt full ci_low,PSNR gt full ci_high,PSNR gt color")


def test_all_skipped_table_is_one_note(gt_report: Path):
    out = gt_report / "report"
    index = (out / "index.html").read_text()
    for page in (_section(index, "main"), (out / "tables" / "main.html").read_text()):
        html = page.split("<main>")[-1]  # the page body (no style sheet)
        assert "<table" not in html and 'id="table-main"' not in html  # no grid at all
        text = _text(html)
        assert DASH not in text and "7.77" not in text
        assert text.count(f"FID, KID x1e3 skipped: {INCEPTION_TEXT}.") == 1  # one reason for two metrics, once
        assert text.count(f"FID_CLIP skipped: {CLIP_TEXT}.") == 1
        assert text.lower().count("pass --weights-dir dir or set $harness_weights") == 1  # the shared hint, once
        assert text.count(SEARCHED) == 1
        assert ":;" not in text and "; -" not in text and "put them in one of" not in text
    assert "Distribution metrics per task variant" not in _section(index, "main")  # title and note only
    # the table files are still written, with every value and the readable reasons as footnotes
    for name in ("main.csv", "main.md", "main.tex", "main.html"):
        assert (out / "tables" / name).is_file(), name
    md_text = (out / "tables" / "main.md").read_text()
    md = md_cells(md_text)
    assert md["barbershop"]["FID full \u2193"] == f"{DASH}<sup>1</sup>"
    assert md["barbershop"]["FID\\_CLIP rec \u2193"] == f"{DASH}<sup>2</sup>"
    assert md["barbershop"]["KID x1e3 rec \u2193"] == f"{DASH}<sup>1</sup>"
    notes = [line for line in md_text.splitlines() if line.startswith("<sup>")]
    assert len(notes) == 2 and "ViT-B-32.pt" in notes[1] and "\\_" not in notes[0].split("from")[0]
    assert "7.77" not in md_text and ":;" not in md_text
    csv_text = (out / "tables" / "main.csv").read_text()
    assert f"skipped: {INCEPTION_TEXT}; {HINT}" in csv_text and "official source" not in csv_text
    # per-task reference tables are kept, collapsed under the ground-truth table
    assert re.search(r'<details class="result" id="reference_full">\s*<summary>', index)
    assert 'id="table-reference_full"' in index
