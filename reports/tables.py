"""Result tables like the report's tables 6.1 / 8.x, written as CSV, Markdown, LaTeX and HTML.

Rows are methods; column groups are metric x task variant. Per column the best value is bold and the second
best underlined (direction from the metric catalog; compared at the displayed precision; reference bounds such
as ``identity`` / ``oracle`` are not ranked). A metric without a number (skipped, failed) shows an en dash with
its reason as a footnote (shortened by :func:`reports.reasons.readable_reason`), never a number.

Tables: "Main results" (FID / FID_CLIP / KID per task, time), "Ground-truth metrics" (runs with synthetic ground
truth: PSNR / hair colour / PSNR outside the hair / LPIPS per task) and one reference table per task. The files
(CSV, Markdown, LaTeX) hold every column; the HTML shows a metric whose every value is skipped as one note
("FID, KID x1e3 skipped: ...") instead of a column of dashes (:func:`fold_skipped`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

from harness.metrics.catalog import info
from reports.files import write_text
from reports.reasons import WEIGHTS_HINT, readable_reason
from reports.runs import Comparison, Entry, MetricValue

DASH = "\u2013"  # en dash
FILLED_BANNER = "filled weights: not a result"

# Report table 6.1 / 8.x: distribution metrics per task, then time.
MAIN_METRICS = ("fid", "fid_clip", "kid", "time_median_s")
# Metrics against references (ground truth, the face image), cost and failures; one table per task.
# Metrics against the synthetic ground truth, per task variant: the first table with numbers on synthetic data.
GROUND_TRUTH_METRICS = ("psnr_gt", "hair_color_de", "psnr_outside_hair", "lpips_gt")
REFERENCE_METRICS = ("psnr_gt", "ssim_gt", "lpips_gt", "hair_color_de", "psnr_outside_hair", "psnr_rec",
                     "ssim_rec", "lpips_rec", "identity", "clip_text_shape", "clip_text_color", "time_median_s",
                     "time_iqr_s", "peak_mem_mb", "failures")


@dataclass(frozen=True)
class Column:
    metric: str
    task: str
    group: str  # the metric's label (first header row)
    sub: str  # the task (second header row); "" when the group has one column for the table's only task

    @property
    def higher_is_better(self) -> bool:
        return info(self.metric).higher_is_better

    @property
    def arrow(self) -> str:
        return "\u2191" if self.higher_is_better else "\u2193"

    @property
    def header(self) -> str:
        """One-line header: ``FID full``."""
        return f"{self.group} {self.sub}".strip()


@dataclass(frozen=True)
class Cell:
    text: str  # the number as shown; DASH when there is none; "" when the metric was not computed
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_text: str = ""  # "±0.40" (half the 95% interval) or ""
    note: int | None = None  # footnote number (1-based): why there is a dash, or a note on the number
    rank: int = 0  # 1 best, 2 second best, 0 otherwise
    n: int | None = None


@dataclass(frozen=True)
class Row:
    label: str
    reference: bool = False  # a bound (identity, oracle): not ranked
    filled: bool = False  # from a run with filled weights, in a table that also has real runs (marked †)

    @property
    def ranked(self) -> bool:
        """Bounds, and filled-weights rows beside real ones, take no best / second marks."""
        return not self.reference and not self.filled


@dataclass
class Table:
    key: str  # file stem
    title: str
    caption: str
    columns: list[Column]
    rows: list[Row]
    cells: list[list[Cell]]  # [row][column]
    notes: list[str]  # footnotes, number i + 1
    filled: bool = False  # some row comes from a run with filled weights: "not a result"

    def groups(self) -> list[tuple[str, str, int]]:
        """Consecutive column groups: (label, arrow, span)."""
        out: list[tuple[str, str, int]] = []
        for col in self.columns:
            if out and out[-1][0] == col.group:
                out[-1] = (col.group, col.arrow, out[-1][2] + 1)
            else:
                out.append((col.group, col.arrow, 1))
        return out

    @property
    def has_reference(self) -> bool:
        return any(row.reference for row in self.rows)


def format_value(value: float, decimals: int) -> str:
    """``decimals`` places (from the catalog); a non-zero value that would show as zero gets 2 significant digits."""
    text = f"{value:.{decimals}f}"
    if value != 0 and math.isfinite(value) and float(text) == 0:
        places = min(12, max(decimals, 1 - math.floor(math.log10(abs(value)))))
        return f"{value:.{places}f}"
    return text


def _note(text: str, notes: list[str]) -> int:
    if text not in notes:
        notes.append(text)
    return notes.index(text) + 1


def _cell(value: MetricValue | None, decimals: int, notes: list[str]) -> Cell:
    if value is None:
        return Cell("")
    if not value.ok:
        return Cell(DASH, note=_note(readable_reason(value.reason), notes), n=value.n)
    assert value.value is not None
    note = _note(value.note, notes) if value.note else None
    if value.has_ci:
        assert value.ci_low is not None and value.ci_high is not None
        ci_text = "\u00b1" + format_value((value.ci_high - value.ci_low) / 2, decimals)
        return Cell(format_value(value.value, decimals), value.value, value.ci_low, value.ci_high, ci_text, note,
                    n=value.n)
    return Cell(format_value(value.value, decimals), value.value, note=note, n=value.n)


def _rank(cells: list[list[Cell]], rows: list[Row], columns: list[Column]) -> list[list[Cell]]:
    """Mark best (1) and second best (2) per column among ranked rows (:attr:`Row.ranked`), at the displayed
    precision.

    Ties share a mark; a column whose values are all equal gets none; "second" needs a third, worse value.
    """
    out = [list(r) for r in cells]
    for j, col in enumerate(columns):
        decimals = info(col.metric).decimals
        values = [(i, round(c[j].value, decimals)) for i, c in enumerate(cells)
                  if c[j].value is not None and rows[i].ranked]
        distinct = sorted({v for _, v in values}, reverse=col.higher_is_better)
        if len(distinct) < 2:
            continue  # nothing to compare, or all equal
        for i, v in values:
            if v == distinct[0]:
                out[i][j] = replace(out[i][j], rank=1)
            elif v == distinct[1] and len(distinct) >= 3:  # never mark the worst value "second best"
                out[i][j] = replace(out[i][j], rank=2)
    return out


def build_table(comp: Comparison, key: str, title: str, caption: str, columns: list[Column]) -> Table:
    mixed = len({e.filled for e in comp.entries}) > 1
    rows = [Row(e.label, e.reference, e.filled and mixed) for e in comp.entries]
    notes: list[str] = []
    cells = [[_cell(comp.metric(e, col.task, col.metric), info(col.metric).decimals, notes) for col in columns]
             for e in comp.entries]
    return Table(key, title, caption, columns, rows, _rank(cells, rows, columns), notes,
                 filled=any(e.filled for e in comp.entries))


def _has_any(comp: Comparison, entries: list[Entry], task: str, metric: str) -> bool:
    return any(comp.metric(e, task, metric) is not None for e in entries)


def main_table(comp: Comparison) -> Table | None:
    """FID / FID_CLIP / KID per task variant, then time (like report tables 6.1 and 8.x)."""
    columns = []
    for metric in MAIN_METRICS:
        tasks = comp.tasks_for(metric)
        if metric.startswith("time") and "all" in tasks:
            tasks = ["all"]
        columns += [Column(metric, t, info(metric).label, t) for t in tasks
                    if _has_any(comp, comp.entries, t, metric)]
    if not columns:
        return None
    caption = ("Distribution metrics per task variant (clean-fid implementation; comparable only with numbers "
               "from the same implementation), and the median time per item.")
    return build_table(comp, "main", "Main results", caption, columns)


def ground_truth_table(comp: Comparison) -> Table | None:
    """Runs with synthetic ground truth: PSNR gt, hair colour difference, PSNR outside the hair (and LPIPS gt)
    per task variant, side by side (the numbers that exist without Inception / CLIP weights)."""
    if not comp.synthetic:
        return None
    columns = [Column(m, t, info(m).label, t) for m in GROUND_TRUTH_METRICS for t in comp.tasks_for(m)
               if _has_any(comp, comp.entries, t, m)]
    if not columns:
        return None
    caption = ("Metrics against the synthetic ground truth per task variant: PSNR, CIEDE2000 between the mean hair "
               "colours, PSNR outside the hair and headwear (against the face image), and LPIPS when its weights "
               "are present.")
    return build_table(comp, "ground_truth", "Ground-truth metrics", caption, columns)


def reference_tables(comp: Comparison) -> list[Table]:
    """One table per task: metrics against references, time, memory, failures (and any other metric)."""
    extra = [m for m in comp.metric_names() if m not in MAIN_METRICS and m not in REFERENCE_METRICS]
    tables = []
    for task in comp.tasks:
        columns = [Column(m, task, info(m).label, "") for m in (*REFERENCE_METRICS, *extra)
                   if _has_any(comp, comp.entries, task, m)]
        if columns:
            tables.append(build_table(
                comp, f"reference_{task}", f"Reference metrics: task {task}",
                f"Metrics against references (synthetic ground truth, the face image), cost and failures; "
                f"task variant {task}.", columns))
    return tables


def build_tables(comp: Comparison) -> list[Table]:
    """Main results, ground-truth metrics (synthetic runs), then one reference table per task."""
    first = [t for t in (main_table(comp), ground_truth_table(comp)) if t is not None]
    return first + reference_tables(comp)


# ------------------------------------------------------------------------------------------- skipped metrics
@dataclass(frozen=True)
class Skipped:
    """Metrics (column groups) of a table with no number at all, and why (deduplicated, readable)."""

    labels: tuple[str, ...]  # "FID", "KID x1e3"
    reasons: tuple[str, ...]  # "skipped: missing weight file ..."

    @property
    def text(self) -> str:
        """``FID, KID x1e3 skipped: missing weight file ...`` (``LABEL: reason`` for other reasons)."""
        labels = ", ".join(self.labels)
        if all(r.startswith("skipped: ") for r in self.reasons):
            return f"{labels} skipped: " + " / ".join(r.removeprefix("skipped: ") for r in self.reasons)
        return f"{labels}: " + " / ".join(self.reasons)


def skipped_lines(skipped: list[Skipped]) -> list[str]:
    """The lines of a table's skipped note; when every entry ends with the same weight-directory hint
    (``; pass --weights-dir DIR or set $HARNESS_WEIGHTS (searched: ...)``), the hint is said once, last."""
    texts = [s.text for s in skipped]
    marker = f"; {WEIGHTS_HINT}"
    tails = {t[t.rfind(marker):] if marker in t else None for t in texts}
    if len(texts) < 2 or len(tails) != 1 or None in tails:
        return texts
    tail = tails.pop()
    assert tail is not None
    hint = tail.removeprefix("; ")
    return [t[:t.rfind(marker)] + "." for t in texts] + [hint[:1].upper() + hint[1:] + "."]


def fold_skipped(table: Table) -> tuple[Table, list[Skipped]]:
    """Split off the column groups in which no cell has a number (every value skipped or failed).

    Returns the table without them (footnotes renumbered; no columns when every group is skipped) and one
    :class:`Skipped` per distinct set of reasons, in column order.
    """
    spans: list[tuple[int, int]] = []  # consecutive columns of one metric
    for j, col in enumerate(table.columns):
        if spans and table.columns[spans[-1][0]].metric == col.metric:
            spans[-1] = (spans[-1][0], j + 1)
        else:
            spans.append((j, j + 1))
    keep: list[int] = []
    folded: dict[tuple[str, ...], list[str]] = {}
    for start, stop in spans:
        cells = [row[j] for row in table.cells for j in range(start, stop)]
        if any(c.value is not None for c in cells) or not any(c.note is not None for c in cells):
            keep += range(start, stop)
            continue
        reasons = tuple(dict.fromkeys(table.notes[c.note - 1] for c in cells if c.note is not None))
        labels = folded.setdefault(reasons, [])
        if table.columns[start].group not in labels:
            labels.append(table.columns[start].group)
    if not folded:
        return table, []
    notes: list[str] = []
    cells = []
    for row in table.cells:
        out = []
        for j in keep:
            cell = row[j]
            out.append(replace(cell, note=_note(table.notes[cell.note - 1], notes)) if cell.note else cell)
        cells.append(out)
    shown = replace(table, columns=[table.columns[j] for j in keep], cells=cells, notes=notes)
    return shown, [Skipped(tuple(labels), reasons) for reasons, labels in folded.items()]


# ---------------------------------------------------------------------------------------------------- writers
def _row_mark(row: Row) -> str:
    return "\u2020" if row.filled else ""


def to_csv(table: Table) -> str:
    """Plain values (full precision); a dash cell holds its reason; ``ci_low``/``ci_high`` columns when known."""
    ci_cols = [j for j in range(len(table.columns)) if any(r[j].ci_low is not None for r in table.cells)]
    header = ["method"]
    for j, col in enumerate(table.columns):
        header.append(col.header)
        if j in ci_cols:
            header += [f"{col.header} ci_low", f"{col.header} ci_high"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row, cells in zip(table.rows, table.cells, strict=True):
        out = [row.label]
        for j, cell in enumerate(cells):
            if cell.value is not None:
                out.append(repr(float(cell.value)))
            elif cell.note is not None:  # a dash: its reason
                out.append(table.notes[cell.note - 1])
            else:
                out.append("")
            if j in ci_cols:
                out += ["" if cell.ci_low is None else repr(cell.ci_low),
                        "" if cell.ci_high is None else repr(cell.ci_high)]
        writer.writerow(out)
    return buf.getvalue()


def _md_escape(text: str) -> str:
    for ch in "\\|*_<>[]`":
        text = text.replace(ch, "\\" + ch)
    return text


def to_markdown(table: Table, *, ci: bool = True) -> str:
    lines = [f"### {_md_escape(table.title)}", ""]
    if table.filled:
        mark = " (\u2020: from a run with filled weights)" if any(r.filled for r in table.rows) else ""
        lines += [f"> **{FILLED_BANNER.upper()}**{mark}: networks ran with filled weights instead of "
                  "pretrained checkpoints; the numbers only exercise the code path.", ""]
    lines += [_md_escape(table.caption) + " Best **bold**, second <u>underlined</u>; "
              "\u2193 lower is better, \u2191 higher is better.", ""]
    lines.append("| Method | " + " | ".join(f"{_md_escape(c.header)} {c.arrow}" for c in table.columns) + " |")
    lines.append("|---|" + "---:|" * len(table.columns))
    for row, cells in zip(table.rows, table.cells, strict=True):
        label = _md_escape(row.label) + _row_mark(row)
        if row.reference:
            label = f"*{label}*"
        out = []
        for cell in cells:
            text = cell.text
            if cell.rank == 1:
                text = f"**{text}**"
            elif cell.rank == 2:
                text = f"<u>{text}</u>"
            if cell.note is not None:
                text += f"<sup>{cell.note}</sup>"
            if ci and cell.ci_text:
                text += f" {cell.ci_text}"
            out.append(text)
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    if table.notes or table.has_reference or any(r.filled for r in table.rows):
        lines.append("")
    for i, note in enumerate(table.notes, 1):
        lines.append(f"<sup>{i}</sup> {_md_escape(note)}  ")
    if table.has_reference:
        lines.append("*Italic*: reference bounds, not ranked.  ")
    if any(r.filled for r in table.rows):
        lines.append("\u2020: from a run with filled weights (not a result), not ranked.")
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"\textless{}", ">": r"\textgreater{}", DASH: "--", "\u00b1": r"$\pm$",
                "\u2020": r"$^\dagger$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table, *, ci: bool = True) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    n = len(table.columns)
    lines = [f"% {table.title} (generated by hair-harness; needs \\usepackage{{booktabs}})"]
    caption = tex_escape(table.caption)
    if table.filled:
        lines.append(f"% {FILLED_BANNER.upper()}")
        mark = r" ($\dagger$)" if any(r.filled for r in table.rows) else ""
        caption = r"\textbf{" + tex_escape(FILLED_BANNER.upper()) + mark + ".} " + caption
    lines += [r"\begin{table}[t]", r"\centering", r"\small",
              r"\begin{tabular}{l" + "r" * n + "}", r"\toprule"]
    groups = table.groups()
    head, rules, col = [""], [], 2
    for label, arrow, span in groups:
        arrow_tex = r"$\uparrow$" if arrow == "\u2191" else r"$\downarrow$"
        head.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(label)} {arrow_tex}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
        col += span
    lines.append(" & ".join(head) + r" \\")
    if any(c.sub for c in table.columns):
        lines.append(" ".join(rules))
        lines.append(" & ".join(["Method"] + [tex_escape(c.sub) for c in table.columns]) + r" \\")
    lines.append(r"\midrule")
    for row, cells in zip(table.rows, table.cells, strict=True):
        label = tex_escape(row.label + _row_mark(row))
        if row.reference:
            label = rf"\textit{{{label}}}"
        out = [label]
        for cell in cells:
            text = tex_escape(cell.text)
            if cell.rank == 1:
                text = rf"\textbf{{{text}}}"
            elif cell.rank == 2:
                text = rf"\underline{{{text}}}"
            if cell.note is not None:
                text += rf"\textsuperscript{{{cell.note}}}"
            if ci and cell.ci_text:
                text += r"\,{\scriptsize$\pm$" + tex_escape(cell.ci_text[1:]) + "}"
            out.append(text)
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption += r" Best \textbf{bold}, second \underline{underlined}."
    if table.notes:
        caption += " " + "; ".join(rf"\textsuperscript{{{i}}}{tex_escape(note)}"
                                   for i, note in enumerate(table.notes, 1)) + "."
    if table.has_reference:
        caption += r" \textit{Italic}: reference bounds, not ranked."
    if any(r.filled for r in table.rows):
        caption += r" $\dagger$: from a run with filled weights (not a result), not ranked."
    lines += [rf"\caption{{{caption}}}", rf"\label{{tab:{tex_escape(table.key)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: Table, *, ci: bool = True) -> str:
    """A fragment (see ``templates/_table.html``): a note on the metrics with no number at all
    (:func:`fold_skipped`), then the ``<table>`` of the others with its footnotes (none when nothing is left)."""
    from reports.templating import environment

    shown, skipped = fold_skipped(table)
    return environment().get_template("_table.html").render(table=shown, skipped=skipped_lines(skipped), ci=ci)


def write_table(table: Table, out_dir: Path, *, ci: bool = True, page_html: str | None = None) -> dict[str, str]:
    """Write ``<key>.csv/.md/.tex`` (and ``.html`` when given) under ``out_dir``; returns {format: file name}."""
    files = {"csv": f"{table.key}.csv", "md": f"{table.key}.md", "tex": f"{table.key}.tex"}
    write_text(out_dir / files["csv"], to_csv(table))
    write_text(out_dir / files["md"], to_markdown(table, ci=ci))
    write_text(out_dir / files["tex"], to_latex(table, ci=ci))
    if page_html is not None:
        files["html"] = f"{table.key}.html"
        write_text(out_dir / files["html"], page_html)
    return files
