"""The board: leaderboard/README.md, a static sortable index.html and two plots, from the entries.

Output is a pure function of the entries (sorted input, fixed formatting, PNGs without
timestamps), so CI can rebuild the board and `git diff --exit-code` it.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from leaderboard.entries import BASELINE, ENTRIES_DIR, headline, load_entries
from modarb_tasks.catalog import FOLLOW_SLOTS, LABELS, MF_RATIO, SCORES, SLOTS, Metric, catalog, pooled_mf_ratio
from modarb_tasks.files import write_atomic

BOARD_DIR = ENTRIES_DIR.parent
TEXT_COLUMNS = ("model", "intervention", "suite")
COLUMNS = (*TEXT_COLUMNS, "items", *SCORES, "delta_mf_ratio")
HEADERS = {"model": "Model", "intervention": "Intervention", "suite": "Suite", "items": "Items (n)",
           **{score: LABELS[score].heading for score in SCORES}, "delta_mf_ratio": "Δ MF ratio"}
PLOT_FILES = {"scatter": "plots/mf_ratio_vs_controls.png", "bars": "plots/per_task.png"}
MISSING = "–"


@dataclass(frozen=True)
class Row:
    """One line of the board: one entry's scores on one task suite."""

    slug: str
    kind: str
    model: str
    intervention: str
    identity: str
    suite: str
    date: str
    scores: dict[str, Metric | None]  # keyed by SCORES: the slots and "mf_ratio"
    delta_mf_ratio: float | None = None

    @property
    def items(self) -> tuple[int | None, ...]:
        """Items scored per slot: runs compare only when these are equal (same tasks, same --limit)."""
        return tuple(None if self.scores[slot] is None else self.scores[slot].n for slot in SLOTS)

    @property
    def label(self) -> str:
        return f"{self.model} / {self.intervention} ({self.suite})"


def _rows_of(slug: str, entry: dict[str, Any]) -> list[Row]:
    rows = []
    for suite in sorted({catalog().tasks[task].suite for task in entry["tasks"]}):
        present = {slot: task for slot, task in catalog().suites[suite].items() if task in entry["tasks"]}
        scores: dict[str, Metric | None] = {
            slot: headline(present[slot], entry["tasks"][present[slot]]) if slot in present else None for slot in SLOTS}
        scores[MF_RATIO] = pooled_mf_ratio(*(scores[slot] for slot in FOLLOW_SLOTS))
        rows.append(Row(slug, entry["kind"], entry["model"], entry["intervention"]["name"],
                        entry["intervention"]["identity"], suite, entry["date"], scores))
    return rows


def _sort_key(row: Row) -> tuple:
    return (row.model, row.identity != BASELINE["identity"], row.intervention, row.suite, row.date, row.slug)


def board_rows(entries: dict[str, dict[str, Any]]) -> list[Row]:
    """All rows, sorted by model then intervention (baseline first), each with Δ MF ratio
    against the latest baseline entry of the same model, suite and kind on the same items: a
    run on fewer items (a --limit 8 check) is never the baseline of a fuller one."""
    rows = sorted((row for slug, entry in entries.items() for row in _rows_of(slug, entry)), key=_sort_key)
    baselines: dict[tuple, Row] = {}
    for row in rows:
        if row.identity == BASELINE["identity"] and row.scores[MF_RATIO] is not None:
            key = (row.kind, row.model, row.suite, row.items)
            if key not in baselines or (row.date, row.slug) > (baselines[key].date, baselines[key].slug):
                baselines[key] = row
    out = []
    for row in rows:
        base = baselines.get((row.kind, row.model, row.suite, row.items))
        delta = (row.scores[MF_RATIO].value - base.scores[MF_RATIO].value
                 if base is not None and row.scores[MF_RATIO] is not None else None)
        out.append(replace(row, delta_mf_ratio=delta))
    return out


def format_metric(metric: Metric | None) -> str:
    if metric is None:
        return MISSING
    return f"{metric.value:.3f}" if metric.stderr is None else f"{metric.value:.3f} ± {metric.stderr:.3f}"


def format_delta(delta: float | None) -> str:
    return MISSING if delta is None else f"{round(delta, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"


def format_items(items: tuple[int | None, ...]) -> str:
    """One count when every task scored as many items, else the count per slot (– for a missing task)."""
    present = {n for n in items if n is not None}
    if len(present) == 1 and None not in items:
        return str(present.pop())
    return "/".join(MISSING if n is None else str(n) for n in items)


def cell_text(row: Row, column: str) -> str:
    """The text a column shows for a row, shared by the Markdown and HTML tables."""
    if column in TEXT_COLUMNS:
        return getattr(row, column)
    if column == "items":
        return format_items(row.items)
    if column == "delta_mf_ratio":
        return format_delta(row.delta_mf_ratio)
    return format_metric(row.scores[column])


def _sort_value(row: Row, column: str) -> str:
    if column in TEXT_COLUMNS:
        return getattr(row, column)
    if column == "items":
        return repr(sum(n for n in row.items if n is not None))
    value = row.delta_mf_ratio if column == "delta_mf_ratio" else getattr(row.scores[column], "value", None)
    return "" if value is None else repr(value)


def markdown_table(rows: list[Row]) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
             "|" + "|".join("---" if c in ("model", "intervention", "suite") else "---:" for c in COLUMNS) + "|"]
    def cell(row: Row, column: str) -> str:
        text = escape(cell_text(row, column))
        return f"`{text}`" if column == "suite" else text  # suites hold "*" and "_"

    lines += ["| " + " | ".join(cell(row, c) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    results = [r for r in rows if r.kind == "result"]
    smoke = [r for r in rows if r.kind == "smoke"]
    parts = [
        "# modarb leaderboard",
        "",
        "Built by `modarb leaderboard build` from the entries in `entries/` (one JSON per "
        "lm-eval run, added with `modarb leaderboard add`); do not edit by hand. "
        "Sortable page with plots: `index.html`.",
        "",
        "Scores are value ± standard error. Follow image / follow text: modality-following ratio "
        "(share of conflict items answered from the instructed modality); MF ratio: both sides "
        "pooled; visual / language control: accuracy on image-only / context-only questions. "
        "Suite: the task family, named by its tasks with the slot starred (`mf_*`: shapes, "
        "`mc2_*`: MC², `*_ll`: likelihood scoring). "
        "Items (n): items scored per task (per follow image / follow text / visual / language "
        "control task when they differ). "
        "Δ MF ratio: against the latest baseline entry of the same model and suite on the same items "
        "(– where there is none: runs on different items are not compared).",
        "",
        "## Results",
        "",
        markdown_table(results) if results else "No result entries yet.",
        "",
    ]
    if results:
        parts += [f"![MF ratio vs control accuracy]({PLOT_FILES['scatter']})", "",
                  f"![Scores per task]({PLOT_FILES['bars']})", ""]
    parts += [
        "## Smoke entries (tiny random-init models, not results)",
        "",
        "These rows only show that a model family runs end to end; their scores mean nothing.",
        "",
        markdown_table(smoke) if smoke else "No smoke entries.",
        "",
    ]
    return "\n".join(parts)


SORT_SCRIPT = """
function sortBy(table, column, descending) {
  const index = [...table.tHead.rows[0].cells].findIndex(th => th.dataset.column === column);
  if (index < 0) return;
  const numeric = table.tHead.rows[0].cells[index].dataset.type === "number";
  const key = row => row.cells[index].dataset.sort;
  const rows = [...table.tBodies[0].rows];
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");  // blanks last
    const order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
    return descending ? -order : order;
  });
  rows.forEach(row => table.tBodies[0].appendChild(row));
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  table.tHead.rows[0].cells[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
}
document.querySelectorAll("table.board").forEach(table => {
  for (const th of table.tHead.rows[0].cells) {
    th.addEventListener("click", () =>
      sortBy(table, th.dataset.column, th.getAttribute("aria-sort") === "ascending"));
  }
  const wanted = new URLSearchParams(location.hash.slice(1)).get("sort");  // e.g. #sort=-mf_ratio
  if (wanted) sortBy(table, wanted.replace(/^-/, ""), wanted.startsWith("-"));
});
document.body.dataset.sortable = "ready";
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table.board { border-collapse: collapse; margin-bottom: 1.5rem; }
table.board th, table.board td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; }
table.board th { background: #f2f2f2; cursor: pointer; user-select: none; }
table.board th[aria-sort=ascending]::after { content: " ▲"; }
table.board th[aria-sort=descending]::after { content: " ▼"; }
table.board td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
"""


def html_table(rows: list[Row], table_id: str) -> str:
    def header(column: str) -> str:
        kind = "text" if column in ("model", "intervention", "suite") else "number"
        return f'<th data-column="{column}" data-type="{kind}">{html.escape(HEADERS[column])}</th>'

    def cell(row: Row, column: str) -> str:
        css = "" if column in ("model", "intervention", "suite") else ' class="number"'
        return (f'<td data-sort="{html.escape(_sort_value(row, column))}"{css}>'
                f"{html.escape(cell_text(row, column))}</td>")

    body = "\n".join(f'<tr data-entry="{html.escape(row.slug)}">' + "".join(cell(row, c) for c in COLUMNS) + "</tr>"
                     for row in rows)
    return (f'<table class="board" id="{table_id}">\n<thead><tr>{"".join(header(c) for c in COLUMNS)}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table>")


def render_html(rows: list[Row], plots: dict[str, bytes]) -> str:
    results = [r for r in rows if r.kind == "result"]
    smoke = [r for r in rows if r.kind == "smoke"]
    images = "\n".join(
        f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(plots[name]).decode()}">'
        for name, alt in (("scatter", "MF ratio vs control accuracy"), ("bars", "Scores per task"))
        if name in plots)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>modarb leaderboard</title>
<style>{STYLE}</style>
</head>
<body>
<h1>modarb leaderboard</h1>
<p>Modality-following ratio (share of conflict items answered from the instructed modality) and
control accuracies, value ± standard error. Suite: the task family (<code>mf_*</code>: shapes,
<code>mc2_*</code>: MC², <code>*_ll</code>: likelihood scoring). Items (n): items scored per task. Δ MF ratio: against
the latest baseline entry of the same model and suite on the same items (– where there is none: runs on different items
are not compared). Click a column header to sort; link a sorted view with <code>#sort=-mf_ratio</code>.</p>
<h2>Results</h2>
{html_table(results, "results") if results else "<p>No result entries yet.</p>"}
{images}
<h2>Smoke entries (tiny random-init models, not results)</h2>
<p>These rows only show that a model family runs end to end; their scores mean nothing.</p>
{html_table(smoke, "smoke") if smoke else "<p>No smoke entries.</p>"}
<script>{SORT_SCRIPT}</script>
</body>
</html>
"""


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _legend_below(axes) -> None:
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)


def render_plots(rows: list[Row]) -> dict[str, bytes]:
    """PNG bytes of the two plots (result rows only; none when there are no result rows)."""
    results = [r for r in rows if r.kind == "result"]
    if not results:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = plt.get_cmap("tab10")
    plots = {}

    figure, axes = plt.subplots(figsize=(7, 5))
    for i, row in enumerate(results):
        mf = row.scores[MF_RATIO]
        for slot, marker in (("visual_control", "o"), ("language_control", "^")):
            control = row.scores[slot]
            if mf is not None and control is not None:
                axes.errorbar(mf.value, control.value, xerr=mf.stderr, yerr=control.stderr, fmt=marker,
                              color=colour(i % 10), capsize=2)
        axes.plot([], [], "s", color=colour(i % 10), label=row.label)
    axes.plot([], [], "ko", label="visual control")
    axes.plot([], [], "k^", label="language control")
    axes.set(xlabel="MF ratio", ylabel="control accuracy", xlim=(-0.05, 1.05), ylim=(-0.05, 1.05),
             title="Modality following vs preserved ability, per intervention")
    _legend_below(axes)
    plots["scatter"] = _png(figure)
    plt.close(figure)

    columns = SCORES
    figure, axes = plt.subplots(figsize=(max(7, 1.6 * len(columns) + 0.25 * len(results)), 5))
    width = 0.8 / len(results)
    for i, row in enumerate(results):
        metrics = [row.scores[c] for c in columns]
        axes.bar([x + i * width for x in range(len(columns))], [m.value if m else 0 for m in metrics], width,
                 yerr=[(m.stderr or 0) if m else 0 for m in metrics], capsize=2, label=row.label)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(columns))], [HEADERS[c] for c in columns])
    axes.set(ylabel="score", ylim=(0, 1.05), title="Scores per task")
    _legend_below(axes)
    plots["bars"] = _png(figure)
    plt.close(figure)
    return plots


def build_board(entries_dir: Path = ENTRIES_DIR, out_dir: Path = BOARD_DIR) -> list[Path]:
    """Write README.md, index.html and the plot PNGs under `out_dir`; return the paths written."""
    rows = board_rows(load_entries(entries_dir) if entries_dir.is_dir() else {})
    plots = render_plots(rows)
    outputs = {out_dir / "README.md": render_markdown(rows).encode("utf-8"),
               out_dir / "index.html": render_html(rows, plots).encode("utf-8")}
    outputs |= {out_dir / PLOT_FILES[name]: data for name, data in plots.items()}
    for path, data in outputs.items():
        write_atomic(path, data)
    for name in PLOT_FILES.keys() - plots.keys():  # no stale plots from an earlier board
        (out_dir / PLOT_FILES[name]).unlink(missing_ok=True)
    return list(outputs)
