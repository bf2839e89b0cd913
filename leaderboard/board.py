"""The board: leaderboard/README.md, a static sortable index.html and two plots, from the entries.

Output is a pure function of the entries (sorted input, fixed formatting, PNGs without
timestamps), so CI can rebuild the board and `git diff --exit-code` it. This module computes the
rows and each cell's text; the pages' layout and wording live in leaderboard/templates (Jinja).
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from leaderboard.entries import BASELINE, ENTRIES_DIR, headline, load_entries
from modarb_tasks.catalog import FOLLOW_SLOTS, LABELS, MF_RATIO, SCORES, SLOTS, Metric, catalog, pooled_mf_ratio
from modarb_tasks.errors import ModarbError
from modarb_tasks.files import check_writable, png_bytes, write_all_atomic
from modarb_tasks.paired import Paired, pair

BOARD_DIR = ENTRIES_DIR.parent
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEXT_COLUMNS = ("model", "intervention", "suite")
COLUMNS = (*TEXT_COLUMNS, "items", *SCORES, "delta_mf_ratio")
HEADERS = {"model": "Model", "intervention": "Intervention", "suite": "Suite", "items": "Items (n)",
           **{score: LABELS[score].heading for score in SCORES}, "delta_mf_ratio": "Δ MF ratio"}
PLOT_FILES = {"scatter": "plots/mf_ratio_vs_controls.png", "bars": "plots/per_task.png"}
PLOT_ALTS = {"scatter": "MF ratio vs control accuracy", "bars": "Scores per task"}
MISSING = "–"


@dataclass(frozen=True)
class Column:
    """One table column: its key (as cell_text takes it), its header, and whether it holds numbers."""

    key: str
    header: str
    numeric: bool  # right-aligned, sorted as a number


COLUMN_SPECS = tuple(Column(c, HEADERS[c], c not in TEXT_COLUMNS) for c in COLUMNS)


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
    follow_items: tuple[tuple[str, str], ...] | None = None  # (doc-id hash, outcomes) per follow task, if kept
    delta_mf_ratio: float | None = None
    delta_paired: Paired | None = None  # the follow items of this run against its baseline's, when both kept them
    is_reference: bool = False  # the baseline the other rows' Δ is taken against
    controls: tuple[tuple[str, Metric], ...] = ()  # (control column key, its score): the entry's extra lm-eval tasks

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
        kept = [entry["tasks"][present[slot]].get("items") if slot in present else None for slot in FOLLOW_SLOTS]
        follow_items = (None if None in kept else
                        tuple((items["doc_ids_sha256"], items["outcomes"]) for items in kept))
        rows.append(Row(slug, entry["kind"], entry["model"], entry["intervention"]["name"],
                        entry["intervention"]["identity"], suite, entry["date"], scores, follow_items,
                        controls=_controls_of(entry)))
    return rows


CONTROL_PREFIX = "control:"


def _control_key(task: str, record: dict[str, Any]) -> str:
    """One column per task, metric and item count: numbers on different items never share a column."""
    return f"{CONTROL_PREFIX}{task}:{record['metric']}:{'up' if record['higher_is_better'] else 'down'}:{record['n']}"


def _controls_of(entry: dict[str, Any]) -> tuple[tuple[str, Metric], ...]:
    return tuple((_control_key(task, record), Metric(record["value"], record["stderr"], record["n"]))
                 for task, record in sorted(entry.get("controls", {}).items()))


def board_columns(rows: list[Row]) -> tuple[Column, ...]:
    """The fixed columns, then one per extra lm-eval control the rows have (task, metric and ↑/↓, n)."""
    keys = sorted({key for row in rows for key, _ in row.controls})
    extra = []
    for key in keys:
        task, metric, direction, n = key.removeprefix(CONTROL_PREFIX).rsplit(":", 3)
        extra.append(Column(key, f"{task} ({metric} {'↑' if direction == 'up' else '↓'}, n={n})", True))
    return (*COLUMN_SPECS, *extra)


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
        paired = _paired_follow(base, row) if delta is not None and base is not row else None
        out.append(replace(row, delta_mf_ratio=delta, delta_paired=paired, is_reference=base is row))
    return out


def _paired_follow(base: Row, row: Row) -> Paired | None:
    """Both follow tasks' items of `row` against the same docs of `base` (the pooled MF ratio's
    items), or None when either run kept no per-item outcomes or they scored different docs."""
    if base.follow_items is None or row.follow_items is None:
        return None
    if [doc_ids for doc_ids, _ in base.follow_items] != [doc_ids for doc_ids, _ in row.follow_items]:
        return None
    return pair([int(x) for _, outcomes in base.follow_items for x in outcomes],
                [int(x) for _, outcomes in row.follow_items for x in outcomes])


def format_metric(metric: Metric | None) -> str:
    if metric is None:
        return MISSING
    return f"{metric.value:.3f}" if metric.stderr is None else f"{metric.value:.3f} ± {metric.stderr:.3f}"


def _signed(value: float) -> str:
    return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"


def format_delta(row: Row) -> str:
    """Δ with its paired 95% interval, * when the interval excludes 0; "(unpaired)" when the run or
    its baseline kept no per-item outcomes (or they scored different docs); – without a baseline on
    the same items; the plain +0.000 on the baseline itself."""
    if row.delta_mf_ratio is None:
        return MISSING
    if row.is_reference:
        return _signed(row.delta_mf_ratio)
    if row.delta_paired is None:
        return f"{_signed(row.delta_mf_ratio)} (unpaired)"
    if row.delta_paired.b + row.delta_paired.c == 0:
        return f"{_signed(row.delta_mf_ratio)} (no answer changed)"
    low, high = row.delta_paired.interval()
    return f"{_signed(row.delta_mf_ratio)} [{_signed(low)}, {_signed(high)}]" + ("*" if low > 0 or high < 0 else "")


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
        return format_delta(row)
    if column.startswith(CONTROL_PREFIX):
        return format_metric(dict(row.controls).get(column))
    return format_metric(row.scores[column])


def _sort_value(row: Row, column: str) -> str:
    if column in TEXT_COLUMNS:
        return getattr(row, column)
    if column == "items":
        return repr(sum(n for n in row.items if n is not None))
    scores = dict(row.controls) if column.startswith(CONTROL_PREFIX) else row.scores
    value = row.delta_mf_ratio if column == "delta_mf_ratio" else getattr(scores.get(column), "value", None)
    return "" if value is None else repr(value)


def _markdown_escape(text: str) -> str:
    """A table cell's text, safe inside a Markdown table row."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


@functools.cache
def _templates():
    """The Jinja environment of leaderboard/templates; HTML templates are autoescaped."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["md"] = _markdown_escape
    environment.globals.update(cell_text=cell_text, sort_value=_sort_value)
    return environment


def _by_kind(rows: list[Row]) -> dict[str, Any]:
    """The result and smoke rows, and the columns (extra controls included) the board shows for them."""
    return {"results": [r for r in rows if r.kind == "result"], "smoke": [r for r in rows if r.kind == "smoke"],
            "columns": board_columns(rows)}


def render_markdown(rows: list[Row]) -> str:
    """README.md: the tables, and links to the plot files when there are result rows."""
    tables = _by_kind(rows)
    plots = [{"alt": PLOT_ALTS[name], "file": PLOT_FILES[name]} for name in PLOT_FILES] if tables["results"] else []
    return _templates().get_template("README.md.j2").render(**tables, plots=plots)


def render_html(rows: list[Row], plots: dict[str, bytes]) -> str:
    """index.html: self-contained (styles, sorting script and `plots` inline)."""
    images = [{"alt": PLOT_ALTS[name], "data": base64.b64encode(plots[name]).decode()}
              for name in PLOT_FILES if name in plots]
    return _templates().get_template("index.html.j2").render(**_by_kind(rows), plots=images)


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
    plots["scatter"] = png_bytes(figure, dpi=100, bbox_inches="tight")
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
    plots["bars"] = png_bytes(figure, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return plots


# What marks a board file as one `modarb leaderboard build` wrote (the templates' fixed lines).
_BOARD_MARKS = {"README.md": "Built by `modarb leaderboard build`", "index.html": "<title>modarb leaderboard</title>"}


def foreign_board_file(out_dir: Path) -> Path | None:
    """The first file at a board path in `out_dir` that modarb did not build (None: all are modarb's).
    The plots count as modarb's only beside a README.md that modarb built."""
    ours = True
    for name, mark in _BOARD_MARKS.items():
        path = out_dir / name
        if path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return path
            if mark not in text:
                return path
        elif name == "README.md":
            ours = False
    plots = [out_dir / name for name in PLOT_FILES.values() if (out_dir / name).exists()]
    return plots[0] if plots and not ours else None


def build_board(entries_dir: Path = ENTRIES_DIR, out_dir: Path = BOARD_DIR, *, allow_empty: bool = False) -> list[Path]:
    """Write README.md, index.html and the plot PNGs under `out_dir`, all or none; return the paths written.

    A board file in `out_dir` that modarb did not build is never overwritten; an entries folder without
    entries builds an empty board only with `allow_empty` (a mistyped folder must not empty the board)."""
    entries = load_entries(entries_dir)
    if not entries and not allow_empty:
        raise ModarbError(f"--entries {entries_dir} holds no leaderboard entry; add runs with `modarb leaderboard add`, "
                          "or pass --allow-empty to build an empty board")
    if out_dir.exists() and not out_dir.is_dir():
        raise ModarbError(f"--out {out_dir} is a file, not a folder; give a folder path (it is created if missing)")
    check_writable(out_dir, "--out")
    foreign = foreign_board_file(out_dir) if out_dir.is_dir() else None
    if foreign is not None:
        raise ModarbError(f"--out {out_dir} already holds {foreign.name}, which `modarb leaderboard build` did not write; "
                          "give a new folder (modarb never overwrites it)")
    rows = board_rows(entries)
    plots = render_plots(rows)
    outputs = {out_dir / "README.md": render_markdown(rows).encode("utf-8"),
               out_dir / "index.html": render_html(rows, plots).encode("utf-8")}
    outputs |= {out_dir / PLOT_FILES[name]: data for name, data in plots.items()}
    write_all_atomic(outputs)
    for name in PLOT_FILES.keys() - plots.keys():  # no stale plots from an earlier board
        (out_dir / PLOT_FILES[name]).unlink(missing_ok=True)
    return list(outputs)
