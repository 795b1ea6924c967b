"""``harness weights download`` against a loopback HTTP server started here: direct links (fresh, resumed, a server
that ignores Range, an interrupted transfer), size / sha256 checks, 404 and unreachable hosts, form-gated files,
Google Drive's virus-scan confirmation (form and legacy cookie/link), the Hugging Face Hub (HEAD metadata with an LFS
sha256 and a CDN redirect, through huggingface_hub), files already there, and the real CLI end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT

from harness import download
from harness.method import Checkpoint
from harness.weights import WeightStore

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def blob(n: int, seed: int) -> bytes:
    return hashlib.shake_256(f"blob-{seed}".encode()).digest(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Loopback:
    """A tiny web: ``/files/<name>`` (Range-aware), ``/norange/<name>`` (ignores Range), ``/flaky/<name>`` (the
    first answer breaks off halfway), ``/gdrive/uc?id=`` + ``/usercontent/download`` (plays Google Drive),
    ``/hf/<repo>/resolve/<rev>/<path>`` (plays the Hub, redirecting LFS files to ``localhost``). Every request is
    logged as (method, path, Range header)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}  # /files, /norange and /flaky names
        self.drive: dict[str, tuple[str, bytes]] = {}  # id -> (small | large | legacy | quota | private, bytes)
        self.hub: dict[str, tuple[bytes, bool]] = {}  # "<repo>/<path>" -> (bytes, lfs)
        self.log: list[tuple[str, str, str | None]] = []
        self.flaky_done: set[str] = set()
        loop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                loop.handle(self, head=True)

            def do_GET(self):
                loop.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def requests(self, fragment: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.log if fragment in r[1]]

    # ------------------------------------------------------------------ answers
    def handle(self, h: BaseHTTPRequestHandler, head: bool):
        url = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.log.append((h.command, h.path, h.headers.get("Range")))
        parts = url.path.strip("/").split("/", 1)
        kind, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        if kind in ("files", "norange", "flaky") and rest in self.files:
            data = self.files[rest]
            if kind == "flaky" and rest not in self.flaky_done:
                self.flaky_done.add(rest)
                return self.send(h, data, head, cut=len(data) // 2)
            return self.send(h, data, head, ranges=kind != "norange")
        if kind == "gdrive" and rest == "uc" and query.get("id") in self.drive:
            mode, data = self.drive[query["id"]]
            if mode == "small" or (mode == "legacy" and query.get("confirm") == "Tok3n"):
                return self.send(h, data, head)
            if mode == "large":
                page = (f'<html><head><title>Google Drive - Virus scan warning</title></head><body>'
                        f'<form id="download-form" action="{self.base}/usercontent/download" method="get">'
                        f'<input type="submit" value="Download anyway"/>'
                        f'<input type="hidden" name="id" value="{query["id"]}">'
                        f'<input type="hidden" name="export" value="download">'
                        f'<input type="hidden" name="confirm" value="t">'
                        f'<input type="hidden" name="uuid" value="u-1"></form></body></html>')
                return self.html(h, page)
            if mode == "legacy":
                page = (f'<html><body><a id="uc-download-link" href="/gdrive/uc?export=download&amp;confirm=Tok3n'
                        f'&amp;id={query["id"]}">Download anyway</a></body></html>')
                return self.html(h, page, cookie=f"download_warning_1_{query['id']}=Tok3n; Path=/")
            if mode == "quota":
                return self.html(h, "<html><title>Google Drive - Quota exceeded</title><body>Too many users have "
                                    "viewed or downloaded this file recently.</body></html>")
            return self.html(h, '<html><body>Sign in: <a href="https://accounts.google.com/x">Google</a></body></html>')
        if kind == "usercontent" and query.get("confirm") == "t" and query.get("uuid") == "u-1" \
                and query.get("id") in self.drive:
            return self.send(h, self.drive[query["id"]][1], head)
        if kind == "hf":
            match = re.fullmatch(r"([^/]+/[^/]+)/resolve/([^/]+)/(.+)", rest)
            if match and f"{match[1]}/{match[3]}" in self.hub:
                data, lfs = self.hub[f"{match[1]}/{match[3]}"]
                extra = {"X-Repo-Commit": COMMIT}
                if lfs:  # the Hub redirects LFS files to a CDN on another host, with their metadata on the redirect
                    name = f"hub-{sha(data)[:12]}"
                    self.files.setdefault(name, data)
                    extra |= {"X-Linked-Etag": f'"{sha(data)}"', "X-Linked-Size": str(len(data)),
                              "Location": f"http://localhost:{self.port}/files/{name}"}
                    return self.status(h, 302, extra)
                extra["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
                return self.send(h, data, head, headers=extra)
            return self.status(h, 404, {"X-Repo-Commit": COMMIT, "X-Error-Code": "EntryNotFound"})
        return self.status(h, 404)

    @staticmethod
    def status(h, code: int, headers: dict[str, str] | None = None):
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()

    @staticmethod
    def html(h, page: str, cookie: str | None = None):
        body = page.encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/html; charset=utf-8")
        if cookie:
            h.send_header("Set-Cookie", cookie)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def send(h, data: bytes, head: bool, ranges: bool = True, cut: int | None = None,
             headers: dict[str, str] | None = None):
        start = 0
        wanted = h.headers.get("Range")
        if ranges and wanted:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data) - start))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(data[start:cut] if cut is not None else data[start:])


@pytest.fixture
def web():
    server = Loopback()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def ckpt(key: str, *sources: str, data: bytes | None = None, known: bool = True, **kw) -> Checkpoint:
    return Checkpoint(key=key, filename=f"{key}.pth", source=kw.pop("source", "test"), purpose="test",
                      size=len(data) if data is not None and known else None,
                      sha256=sha(data) if data is not None and known else None, download=sources, **kw)


def fetch(c: Checkpoint, root: Path, mirrors=()) -> download.Outcome:
    return download.fetch(c, root, WeightStore(root, env={}), progress=False, mirrors=mirrors)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.part*"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ direct links

def test_fresh_download_verifies_and_lands_atomically(web, tmp_path):
    data = web.files["a.bin"] = blob(300_000, 1)
    out = fetch(ckpt("net_a", f"{web.base}/files/a.bin", data=data), tmp_path)
    assert out.state == "fetched" and out.path == tmp_path / "net_a" / "net_a.pth"
    assert out.path.read_bytes() == data and "size and sha256 checked" in out.detail
    assert leftovers(tmp_path) == []
    assert WeightStore(tmp_path, env={}).status(out.checkpoint, verify_hash=True).state == "found"


def test_resume_requests_a_range_and_ends_with_the_right_bytes(web, tmp_path):
    data = web.files["b.bin"] = blob(200_001, 2)
    url = f"{web.base}/files/b.bin"
    dest = download.destination(ckpt("net_b"), tmp_path)
    dest.parent.mkdir(parents=True)
    (dest.parent / "net_b.pth.part").write_bytes(data[:100_000])
    (dest.parent / "net_b.pth.part.src").write_text(url + "\n")  # what an interrupted run leaves behind
    out = fetch(ckpt("net_b", url, data=data), tmp_path)
    assert out.state == "fetched" and dest.read_bytes() == data
    assert web.requests("/files/b.bin") == [("GET", "/files/b.bin", "bytes=100000-")]
    assert leftovers(tmp_path) == []


def test_an_interrupted_transfer_keeps_the_part_and_the_next_run_resumes(web, tmp_path):
    data = web.files["c.bin"] = blob(150_000, 3)
    c = ckpt("net_c", f"{web.base}/flaky/c.bin", data=data)
    first = fetch(c, tmp_path)
    assert first.state == "failed" and "run the command again to resume" in first.detail
    assert leftovers(tmp_path) == ["net_c/net_c.pth.part", "net_c/net_c.pth.part.src"]
    second = fetch(c, tmp_path)
    assert second.state == "fetched" and second.path.read_bytes() == data
    assert web.requests("/flaky/c.bin")[-1][2] == "bytes=75000-"
    assert leftovers(tmp_path) == []


def test_a_server_that_ignores_range_restarts_cleanly(web, tmp_path):
    data = web.files["d.bin"] = blob(120_000, 4)
    url = f"{web.base}/norange/d.bin"
    part = tmp_path / "net_d" / "net_d.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 50_000)  # not even the right prefix: a 200 must not be appended to it
    part.with_name("net_d.pth.part.src").write_text(url)
    out = fetch(ckpt("net_d", url, data=data), tmp_path)
    assert out.state == "fetched" and out.path.read_bytes() == data
    assert web.requests("/norange/d.bin") == [("GET", "/norange/d.bin", "bytes=50000-")]


def test_a_part_from_another_source_is_not_continued(web, tmp_path):
    data = web.files["e.bin"] = blob(10_000, 5)
    part = tmp_path / "net_e" / "net_e.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"y" * 4000)
    part.with_name("net_e.pth.part.src").write_text("https://elsewhere.example/e.bin")
    out = fetch(ckpt("net_e", f"{web.base}/files/e.bin", data=data, known=False), tmp_path)
    assert out.state == "fetched" and out.path.read_bytes() == data
    assert web.requests("/files/e.bin")[0][2] is None


def test_sha256_and_size_mismatches_are_reported_and_leave_no_file(web, tmp_path):
    data = web.files["f.bin"] = blob(5000, 6)
    bad_hash = Checkpoint(key="net_f", filename="f.pth", source="test", purpose="test", size=len(data),
                          sha256="0" * 64, download=(f"{web.base}/files/f.bin",))
    out = fetch(bad_hash, tmp_path)
    assert out.state == "failed" and "sha256 mismatch" in out.detail and sha(data) in out.detail
    bad_size = Checkpoint(key="net_g", filename="g.pth", source="test", purpose="test", size=4999,
                          download=(f"{web.base}/files/f.bin",))
    out = fetch(bad_size, tmp_path)
    assert out.state == "failed" and "size mismatch: got 5,000 bytes, expected 4,999" in out.detail
    assert list(tmp_path.rglob("*.pth*")) == []


def test_404_and_unreachable_host_are_reported_with_the_reason(web, tmp_path):
    out = fetch(ckpt("net_h", f"{web.base}/files/nothing.bin"), tmp_path)
    assert out.state == "failed" and "HTTP 404" in out.detail
    port = closed_port()
    out = fetch(ckpt("net_i", f"http://127.0.0.1:{port}/x.bin"), tmp_path)
    assert out.state == "failed" and "offline or host unreachable" in out.detail and "refused" in out.detail
    assert list(tmp_path.iterdir()) == []


def test_sources_are_tried_in_order(web, tmp_path):
    data = web.files["j.bin"] = blob(3000, 7)
    out = fetch(ckpt("net_j", f"{web.base}/files/gone.bin", f"{web.base}/files/j.bin", data=data), tmp_path)
    first, tried = out.detail.splitlines()
    assert out.state == "fetched" and first.endswith(f"from {web.base}/files/j.bin, size and sha256 checked")
    assert tried == f"tried first: {web.base}/files/gone.bin: HTTP 404 Not Found"


def test_form_gated_file_is_reported_with_its_source(tmp_path):
    gated = ckpt("mapper", source="https://github.com/x/y (README: form-gated, https://forms.gle/abc)")
    out = fetch(gated, tmp_path)
    assert out.state == "no source" and "no automatic source" in out.detail and "forms.gle/abc" in out.detail
    assert "could not fetch (1):" in download.summary([out])


def test_files_already_there_are_skipped(web, tmp_path):
    data = web.files["k.bin"] = blob(4000, 8)
    c = ckpt("net_k", f"{web.base}/files/k.bin", data=data)
    assert fetch(c, tmp_path).state == "fetched"
    n = len(web.log)
    again = fetch(c, tmp_path)
    assert again.state == "already there" and again.path == tmp_path / "net_k" / "net_k.pth" and len(web.log) == n
    (tmp_path / "net_k" / "net_k.pth").write_bytes(data[:-1] + b"!")  # same size, wrong hash: fetched again
    assert fetch(c, tmp_path).state == "fetched" and (tmp_path / "net_k" / "net_k.pth").read_bytes() == data


# ------------------------------------------------------------------------------------------------ Google Drive

def test_google_drive_confirm_form_and_legacy_token(web, tmp_path):
    mirrors = [("https://drive.google.com", f"{web.base}/gdrive")]
    small, large, legacy = blob(2000, 9), blob(90_000, 10), blob(7000, 11)
    web.drive |= {"SMALL": ("small", small), "LARGE": ("large", large), "LEGACY": ("legacy", legacy)}
    for file_id, data in (("SMALL", small), ("LARGE", large), ("LEGACY", legacy)):
        out = fetch(ckpt(f"drive_{file_id.lower()}", f"gdrive:{file_id}", data=data), tmp_path, mirrors)
        assert out.state == "fetched", out.detail
        assert out.path.read_bytes() == data
    confirmed = web.requests("/usercontent/download")
    assert len(confirmed) == 1 and "confirm=t" in confirmed[0][1] and "id=LARGE" in confirmed[0][1]
    assert any("confirm=Tok3n" in r[1] for r in web.requests("/gdrive/uc"))
    assert leftovers(tmp_path) == []


def test_google_drive_resumes_after_the_confirmation(web, tmp_path):
    data = blob(80_000, 12)
    web.drive["LARGE"] = ("large", data)
    part = tmp_path / "drive_r" / "drive_r.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:30_000])
    part.with_name("drive_r.pth.part.src").write_text("gdrive:LARGE")
    out = fetch(ckpt("drive_r", "gdrive:LARGE", data=data), tmp_path, [("https://drive.google.com",
                                                                      f"{web.base}/gdrive")])
    assert out.state == "fetched" and out.path.read_bytes() == data
    assert web.requests("/usercontent/download")[0][2] == "bytes=30000-"


def test_google_drive_html_answers_are_reported(web, tmp_path):
    mirrors = [("https://drive.google.com", f"{web.base}/gdrive")]
    web.drive |= {"BUSY": ("quota", b""), "PRIVATE": ("private", b"")}
    out = fetch(ckpt("busy", "gdrive:BUSY"), tmp_path, mirrors)
    assert out.state == "failed" and "quota is exceeded" in out.detail
    out = fetch(ckpt("private", "gdrive:PRIVATE"), tmp_path, mirrors)
    assert out.state == "failed" and "not shared publicly" in out.detail
    assert list(tmp_path.iterdir()) == []


def test_drive_confirm_url_parsing():
    form = ('<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
            '<input type="hidden" name="id" value="X1"><input type="hidden" name="confirm" value="t"></form>')
    assert download.drive_confirm_url(form, "https://drive.google.com/uc?id=X1", "X1") == \
        "https://drive.usercontent.google.com/download?id=X1&confirm=t"
    link = '<a href="/uc?export=download&amp;confirm=AbC&amp;id=X1">Download anyway</a>'
    assert download.drive_confirm_url(link, "https://drive.google.com/uc?id=X1", "X1") == \
        "https://drive.google.com/uc?export=download&confirm=AbC&id=X1"
    assert download.drive_confirm_url("<p>hi</p>", "https://drive.google.com/uc", "X1",
                                      {"download_warning_13": "T0k"}).endswith("confirm=T0k&id=X1")
    assert download.drive_confirm_url("<p>hi</p>", "https://drive.google.com/uc", "X1") is None


# ------------------------------------------------------------------------------------------------ Hugging Face

def test_hugging_face_files_through_huggingface_hub(web, tmp_path):
    mirrors = [("https://huggingface.co", f"{web.base}/hf")]
    lfs, small = blob(60_000, 13), blob(900, 14)
    web.hub |= {"Org/Repo/pretrained_models/Big/model.pth": (lfs, True),
                "Org/Repo/pretrained_models/small.pt": (small, False)}
    out = fetch(ckpt("hub_big", "hf:Org/Repo/pretrained_models/Big/model.pth"), tmp_path, mirrors)
    assert out.state == "fetched" and out.path.read_bytes() == lfs
    assert web.requests("/hf/Org/Repo/resolve/main/pretrained_models/Big/model.pth")[0][0] == "HEAD"
    assert web.requests(f"/files/hub-{sha(lfs)[:12]}")  # the bytes came from the "CDN" it redirected to
    out = fetch(ckpt("hub_small", "hf:Org/Repo/pretrained_models/small.pt", data=small), tmp_path, mirrors)
    assert out.state == "fetched" and out.path.read_bytes() == small
    out = fetch(ckpt("hub_none", "hf:Org/Repo/pretrained_models/none.pt"), tmp_path, mirrors)
    assert out.state == "failed" and "Hugging Face Hub" in out.detail and "404" in out.detail
    # the Hub's LFS sha256 is checked even when the registry knows none: a corrupted CDN copy is refused
    web.hub["Org/Repo/pretrained_models/bad.pth"] = (lfs, True)
    web.files[f"hub-{sha(lfs)[:12]}"] = blob(60_000, 99)
    out = fetch(ckpt("hub_bad", "hf:Org/Repo/pretrained_models/bad.pth"), tmp_path, mirrors)
    assert out.state == "failed" and "sha256 mismatch" in out.detail
    assert leftovers(tmp_path) == []


def test_hub_endpoint_follows_the_mirror_rule():
    assert download.hf_endpoint() is None
    assert download.hf_endpoint([("https://huggingface.co", "http://127.0.0.1:9/hf/")]) == "http://127.0.0.1:9/hf"
    assert download.hf_parts("AIRI-Institute/HairFastGAN/pretrained_models/StyleGAN/ffhq.pt") == \
        ("AIRI-Institute/HairFastGAN", "pretrained_models/StyleGAN/ffhq.pt")


# ------------------------------------------------------------------------------------------------ registry, CLI

def test_every_registered_source_is_well_formed():
    from harness.cli import weights_to_fetch

    everything = weights_to_fetch(None, False)
    for c in everything:
        for source in c.download:
            assert re.fullmatch(r"https://\S+|gdrive:[\w-]{20,}|hf:[\w.-]+/[\w.-]+/\S+", source), source
    by_key = {c.key: c for c in everything}
    assert not by_key["hairmapper_final"].download and "form" in by_key["hairmapper_final"].source
    assert all(c.download[0].startswith("hf:AIRI-Institute/HairFastGAN/pretrained_models/")
               for c in everything if c.key.startswith("hairfast_") and c.key != "hairfast_sean_median_codes")
    metrics = {c.key for c in weights_to_fetch(None, True)}
    assert metrics >= set(download.METRIC_KEYS) and "hairmapper_final" not in metrics


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARNESS_CACHE": str(home / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("HARNESS_WEIGHTS", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_cli_downloads_real_checkpoints_from_the_loopback(web, tmp_path):
    """The real registry (barbershop + hairflash:balding): HF files, Drive files, direct links, a form-gated file,
    a file with no published source, sha256-checked files (random bytes: refused), and a Drive quota page that falls
    back to the Hub copy."""
    from harness.cli import weights_to_fetch

    wanted = weights_to_fetch("barbershop,hairflash:balding", False)
    content: dict[str, bytes] = {}
    for i, c in enumerate(wanted):
        for source in c.download:
            data = content.setdefault(c.key, blob(2048 + i, 100 + i))
            if source.startswith("hf:"):
                web.hub[source[3:]] = (data, True)
            elif source.startswith("gdrive:"):
                web.drive[source[7:]] = ("quota" if c.key == "bisenet19" else "large", data)
            else:
                web.files[urllib.parse.urlsplit(source).netloc + urllib.parse.urlsplit(source).path] = data
    mirror = [f"--mirror=https://huggingface.co={web.base}/hf", f"--mirror=https://drive.google.com={web.base}/gdrive"]
    for host in ("openaipublic.azureedge.net", "download.pytorch.org", "github.com"):
        mirror.append(f"--mirror=https://{host}={web.base}/files/{host}")
    dest = tmp_path / "weights"
    proc = run_cli("weights", "download", "--methods", "barbershop,hairflash:balding", "--dir", str(dest),
                   "--quiet", *mirror, home=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    # random bytes fail a known size or sha256; a file without a source cannot be fetched
    expect_failed = {c.filename for c in wanted if not c.download or c.size or c.sha256}
    assert {"ViT-B-32.pt", "vgg.pth", "best_model.pt", "sean_median_style_codes.npy"} <= expect_failed
    fetched = [c for c in wanted if c.filename not in expect_failed]
    assert f"fetched ({len(fetched)}):" in out and f"could not fetch ({len(expect_failed)}):" in out
    for c in fetched:
        assert (dest / c.key / c.filename).read_bytes() == content[c.key]
    assert "sha256 mismatch" in out and "forms.gle" in out and "no automatic source" in out
    assert "quota is exceeded" in out and "79999_iter.pth" in out
    assert "from hf:AIRI-Institute/HairFastGAN/pretrained_models/BiSeNet/face_parsing_79999_iter.pth" in out
    assert leftovers(dest) == []
    # the harness now finds them; a second run fetches nothing
    listing = json.loads(run_cli("weights", "--json", "--weights-dir", str(dest), home=tmp_path).stdout)
    state = {c["key"]: c["state"] for c in listing["checkpoints"]}
    assert all(state[c.key] == "found" for c in fetched if c.key in state)
    n = len(web.log)
    again = run_cli("weights", "download", "--methods", "barbershop,hairflash:balding", "--dir", str(dest),
                    "--quiet", *mirror, home=tmp_path)
    assert again.returncode == 1 and f"already there ({len(fetched)}):" in again.stdout
    assert all("/files/" in r[1] or "/hf/" in r[1] for r in web.log[n:])  # only the still-missing files asked for


def test_cli_usage_errors(tmp_path):
    proc = run_cli("weights", "download", "--methods", "nosuch", "--dir", str(tmp_path), home=tmp_path)
    assert proc.returncode == 2 and "unknown method 'nosuch'" in proc.stderr
    proc = run_cli("weights", "download", "--mirror", "nonsense", "--dir", str(tmp_path), home=tmp_path)
    assert proc.returncode == 2 and "PREFIX=REPLACEMENT" in proc.stderr


def test_a_second_concurrent_download_of_the_same_file_is_refused(web, tmp_path):
    import fcntl

    data = web.files["m.bin"] = blob(1000, 15)
    folder = tmp_path / "net_m"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is downloading it
        out = fetch(ckpt("net_m", f"{web.base}/files/m.bin", data=data), tmp_path)
        assert out.state == "failed" and "another download" in out.detail and not web.requests("m.bin")
    finally:
        os.close(fd)
    assert fetch(ckpt("net_m", f"{web.base}/files/m.bin", data=data), tmp_path).state == "fetched"


def test_hf_endpoint_environment_variable_is_honoured(web, tmp_path):
    data = blob(5000, 16)
    web.hub["Org/Repo/w.pt"] = (data, True)
    code = ("import sys; from pathlib import Path; from harness import download\n"
            "print(download.fetch_hf('Org/Repo/w.pt', Path(sys.argv[1]), progress=False))\n")
    env = {**os.environ, "HF_ENDPOINT": f"{web.base}/hf", "HARNESS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pt")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w.pt").read_bytes() == data and web.requests("/hf/Org/Repo/resolve/main/w.pt")
