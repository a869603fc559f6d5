"""Figure data for the HTML report: small JSON specs (`kind` line, bars, heatmap, timeline,
panels) that templates/report.js draws, built from the analysis frames with polars and sized
for the browser (lines thinned to their extremes, the gradient heatmap
binned to at most `MAX_STEP_COLUMNS` step columns and quantised to one byte per cell).

Every chart explains itself in one sentence; a chart without data is kept as a one-line note
(`figure` None) so the reader learns what was not recorded."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from ..detect.ranks import ranks_text
from ..findings import Finding
from .common import column_label, key_time_column, round_sig, time_unit
from .facts import has_gpu
from .names import short_names
from .trace_links import TraceRange, step_range

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..timing.step_events import StepTimeline

MAX_STEP_COLUMNS = 1000  # heatmap columns (docs/report.md)
MAX_HEATMAP_ROWS = 2000  # parameters drawn; beyond this the most telling ones are kept
MAX_LINE_POINTS = 4000  # per line; longer series keep each bucket's min and max
MAX_MARKS = 2000  # marked steps / cells per chart
MAX_RANK_LINES = 8
TOP_BARS = 15

# Heatmap byte levels: 0 no data, 1 exactly zero, 2..254 log10(norm) from lo to hi, 255 non-finite.
LEVEL_NONE, LEVEL_ZERO, LEVEL_LO, LEVEL_HI, LEVEL_BAD = 0, 1, 2, 254, 255

BAD = "#c62828"
SPIKE = "#ef6c00"


@dataclass
class Chart:
    id: str  # the HTML anchor findings link to
    title: str
    explain: str  # how to read it, for someone new to the tool
    figure: dict[str, Any] | None = None
    missing: str = ""  # why there is no figure
    trace: TraceRange | None = None  # the trace range the chart shows, for Perfetto


# Which chart shows the evidence of each rule.
RULE_CHART = {
    "nonfinite-gradient": "chart-grad-norm",
    "nonfinite-origin": "chart-grad-heatmap",
    "exploding-gradient": "chart-grad-norm",
    "amp-overflow": "chart-grad-norm",
    "zero-gradient": "chart-grad-norm",
    "vanishing-gradient": "chart-grad-heatmap",
    "dead-parameter": "chart-grad-heatmap",
    "unused-parameter": "chart-grad-heatmap",
    "update-ratio": "chart-update-ratio",
    "nonfinite-loss": "chart-loss",
    "loss-spike": "chart-loss",
    "slow-step": "chart-step-time",
    "dataloader-bound": "chart-breakdown",
    "host-sync": "chart-breakdown",
    "gpu-idle": "chart-breakdown",
    "launch-bound": "chart-breakdown",
    "slow-op": "chart-ops",
    "straggler-rank": "chart-ranks",
    "memory-growth": "chart-memory",
}


def build(analysis: Analysis) -> list[Chart]:
    steps = analysis.steps
    findings = analysis.findings
    buckets = _StepBuckets.of(analysis.grads)
    return [
        loss_chart(steps, findings),
        grad_norm_chart(steps, findings),
        grad_heatmap(analysis.grads, analysis.params, findings, buckets),
        update_ratio_chart(analysis.grads, buckets),
        step_time_chart(steps, analysis.step_times, findings),
        breakdown_chart(analysis.step_times),
        top_chart("chart-ops", "Slowest ops", analysis.ops, "op"),
        top_chart("chart-kernels", "Slowest GPU kernels", analysis.kernels, "kernel"),
        memory_chart(steps, has_gpu(analysis.run)),
        rank_chart([r.to_dict() for r in analysis.run.ranks], findings),
        *rank_step_heatmaps(steps, analysis.step_times, findings),
        *[timeline_chart(analysis, t) for t in analysis.timelines],
    ]


# --- helpers ---------------------------------------------------------------------------


def _has(frame: pl.DataFrame, *columns: str) -> bool:
    return all(c in frame.columns for c in columns) and frame.height > 0


def _ranks(frame: pl.DataFrame) -> list[int | None]:
    if "rank" not in frame.columns:
        return [None]
    return sorted(frame["rank"].drop_nulls().unique().to_list())[:MAX_RANK_LINES]


def _of_rank(frame: pl.DataFrame, rank: int | None) -> pl.DataFrame:
    return frame if rank is None else frame.filter(pl.col("rank") == rank)


def _rank_name(rank: int | None, many: bool) -> str:
    return f"rank {rank}" if many and rank is not None else ""


def thin(frame: pl.DataFrame, x: str, y: str) -> tuple[list[int], list[float | None]]:
    """Finite points of a series, at most MAX_LINE_POINTS: a long series keeps the lowest and
    highest point of each bucket, so spikes survive thinning."""
    frame = frame.select(x, pl.col(y).cast(pl.Float64)).filter(pl.col(y).is_finite()).sort(x)
    if frame.height > MAX_LINE_POINTS:
        buckets = MAX_LINE_POINTS // 2
        frame = frame.with_row_index("i")
        keep = frame.group_by((pl.col("i") * buckets // frame.height).alias("b")).agg(
            pl.col("i").get(pl.col(y).arg_min()).alias("lo"), pl.col("i").get(pl.col(y).arg_max()).alias("hi")
        )
        rows = pl.concat([keep["lo"], keep["hi"]]).unique()
        frame = frame.filter(pl.col("i").is_in(rows.implode())).drop("i")
    return frame[x].to_list(), [round_sig(v) for v in frame[y].to_list()]


def _line(x: list[int], y: list[float | None], name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "x": x, "y": y, **extra}


def _marks(
    x: list[int], y: list[float | None] | None, name: str, color: str, symbol: str, text: list[str]
) -> dict[str, Any]:
    """Marked points with a hover text each; `y` None draws them along the top of the plot."""
    return {
        "name": name,
        "color": color,
        "symbol": symbol,
        "x": x[:MAX_MARKS],
        "y": y[:MAX_MARKS] if y is not None else None,
        "text": text[:MAX_MARKS],
    }


def _finding_steps(findings: list[Finding], rules: set[str]) -> dict[int, str]:
    """step → title of the first finding of these rules at that step."""
    marked: dict[int, str] = {}
    for f in findings:
        if f.rule in rules and f.step is not None:
            marked.setdefault(f.step, f.title)
    return marked


def line_figure(
    series: list[dict[str, Any]], marks: list[dict[str, Any]], x_title: str, y_title: str, log: bool, log_toggle: bool
) -> dict[str, Any]:
    """A line chart for report.js: steps along x (integer ticks), optional log y with a toggle."""
    return {
        "kind": "line",
        "series": series,
        "marks": marks,
        "x_title": x_title,
        "y_title": y_title,
        "log": log,
        "log_toggle": log_toggle,
        "integer_x": True,
    }


def _series_chart(
    steps: pl.DataFrame,
    column: str,
    log_y: bool,
    color_marks: dict[int, str],
    bad_steps: set[int],
    y_title: str,
    log_toggle: bool = True,
) -> dict[str, Any]:
    """One line per rank, plus markers at flagged steps and at steps whose value is non-finite
    (drawn along the top of the plot, where a NaN would be off the chart)."""
    many = len(_ranks(steps)) > 1
    series = [
        _line(*thin(_of_rank(steps, rank), "step", column), _rank_name(rank, many) or y_title) for rank in _ranks(steps)
    ]
    first = dict(zip(series[0]["x"], series[0]["y"]))
    marks = []
    if color_marks:
        xs = sorted(s for s in color_marks if s in first)
        marks.append(
            _marks(
                xs, [first[s] for s in xs], "flagged step", SPIKE, "circle", [f"step {s}: {color_marks[s]}" for s in xs]
            )
        )
    if bad_steps:
        xs = sorted(bad_steps)
        marks.append(_marks(xs, None, "non-finite", BAD, "x", [f"step {s}: non-finite {y_title}" for s in xs]))
    return line_figure(series, marks, "step", y_title, log_y, log_toggle)


def _nonfinite_steps(steps: pl.DataFrame, column: str, extra: pl.Expr | None = None) -> set[int]:
    value = pl.col(column).cast(pl.Float64)
    condition = value.is_not_null() & ~value.is_finite()
    if extra is not None:
        condition = condition | extra
    return set(steps.filter(condition)["step"].to_list())


# --- the charts -----------------------------------------------------------------------------


def loss_chart(steps: pl.DataFrame, findings: list[Finding]) -> Chart:
    chart = Chart(
        "chart-loss",
        "Loss",
        "Training loss per step. Circles mark loss spikes; red crosses mark steps where the loss was NaN or infinite.",
    )
    if not _has(steps, "step", "loss") or steps["loss"].null_count() == steps.height:
        chart.missing = "no loss was recorded (pass loss= to Recorder.step)."
        return chart
    marks = _finding_steps(findings, {"loss-spike"})
    chart.figure = _series_chart(steps, "loss", False, marks, _nonfinite_steps(steps, "loss"), "loss")
    return chart


def grad_norm_chart(steps: pl.DataFrame, findings: list[Finding]) -> Chart:
    chart = Chart(
        "chart-grad-norm",
        "Global gradient norm",
        "L2 norm of all gradients per step, log scale. A healthy run stays within an order of magnitude or two; "
        "circles mark gradient explosions, red crosses mark steps with NaN or infinite gradients.",
    )
    if not _has(steps, "step", "grad_norm") or steps["grad_norm"].null_count() == steps.height:
        chart.missing = "no gradient norms were recorded."
        return chart
    marks = _finding_steps(findings, {"exploding-gradient", "amp-overflow"})
    extra = pl.col("nonfinite") > 0 if "nonfinite" in steps.columns else None
    bad = _nonfinite_steps(steps, "grad_norm", extra)
    chart.figure = _series_chart(steps, "grad_norm", True, marks, bad, "gradient norm")
    return chart


@dataclass
class _StepBuckets:
    """Maps recorded gradient steps to at most MAX_STEP_COLUMNS heatmap columns."""

    expr: pl.Expr  # step → column index
    labels: list[int]  # first step of each column
    width: int  # steps per column (1 when unbinned)

    @classmethod
    def of(cls, grads: pl.LazyFrame) -> _StepBuckets | None:
        if "step" not in grads.collect_schema().names():
            return None
        span = grads.select(
            pl.col("step").min().alias("lo"),
            pl.col("step").max().alias("hi"),
            pl.col("step").approx_n_unique().alias("n"),
        ).collect(engine="streaming")
        lo, hi, n = span.row(0)
        if lo is None:
            return None
        if n <= MAX_STEP_COLUMNS:
            recorded = grads.select(pl.col("step").unique()).collect(engine="streaming")["step"].sort().to_list()
            if len(recorded) <= MAX_STEP_COLUMNS:
                expr = pl.col("step").replace_strict(recorded, list(range(len(recorded))), return_dtype=pl.Int64)
                return cls(expr, recorded, 1)
        length = hi - lo + 1
        width = -(-length // MAX_STEP_COLUMNS)
        columns = -(-length // width)
        return cls(((pl.col("step") - lo) // width).cast(pl.Int64), [lo + c * width for c in range(columns)], width)


def grad_heatmap(
    grads: pl.LazyFrame, params: pl.DataFrame, findings: list[Finding], buckets: _StepBuckets | None
) -> Chart:
    chart = Chart(
        "chart-grad-heatmap",
        "Gradient norm per parameter",
        "One row per parameter (in model order), one column per step; colour is the gradient norm on a log scale. "
        "Dark bands are parameters whose gradients vanish or are zero; bright columns are explosions; "
        "red cells are NaN/Inf gradients, and a red flag left of a row marks every parameter that had one.",
    )
    if buckets is None or "norm" not in grads.collect_schema().names():
        chart.missing = "no per-parameter gradient statistics were recorded."
        return chart
    schema = grads.collect_schema().names()
    finite = pl.col("norm").is_finite()
    bad = ~finite & pl.col("norm").is_not_null()
    if "nonfinite" in schema:
        bad = bad | (pl.col("nonfinite") > 0)
    n_cols = len(buckets.labels)
    # One integer key per cell hashes far faster than a (param_id, column) pair: this group-by
    # is the whole cost of the report for a large run (2,000 params × 50,000 steps = 1e8 rows).
    cell = (pl.col("param_id").cast(pl.Int64) * n_cols + buckets.expr).alias("cell")
    cells = (
        grads.select(cell, pl.when(finite).then(pl.col("norm")).alias("norm"), bad.alias("bad"))
        .group_by("cell")
        .agg(pl.col("norm").max(), pl.col("bad").max())
        .with_columns(
            (pl.col("cell") // n_cols).cast(pl.Int32).alias("param_id"), (pl.col("cell") % n_cols).alias("col")
        )
        .collect(engine="streaming")
        .with_columns(pl.col("norm").cast(pl.Float64))
    )
    rows, row_note = _heatmap_rows(cells, params, findings)
    row_of = {pid: i for i, (pid, _) in enumerate(rows)}
    cells = cells.filter(pl.col("param_id").is_in(list(row_of))).with_columns(
        pl.col("param_id").replace_strict(row_of, return_dtype=pl.Int64).alias("row")
    )
    positive = cells.filter(pl.col("norm") > 0).select(
        pl.col("norm").log10().min().alias("lo"), pl.col("norm").log10().max().alias("hi")
    )
    low, high = positive.row(0)
    lo = math.floor(low * 100) / 100 if low is not None else 0.0
    hi = math.ceil(high * 100) / 100 if high is not None else 1.0
    hi = max(hi, lo + 0.01)
    # A non-finite gradient anywhere in a cell marks the whole cell: it must never hide behind a
    # finite maximum of the other steps binned with it.
    level = (
        pl.when(pl.col("bad"))
        .then(LEVEL_BAD)
        .when(pl.col("norm") == 0)
        .then(LEVEL_ZERO)
        .when(pl.col("norm") > 0)
        .then(
            (LEVEL_LO + (pl.col("norm").log10() - lo) / (hi - lo) * (LEVEL_HI - LEVEL_LO))
            .round()
            .clip(LEVEL_LO, LEVEL_HI)
        )
        .otherwise(LEVEL_NONE)
        .cast(pl.UInt8)
    )
    cells = cells.with_columns(level.alias("level"), (pl.col("row") * n_cols + pl.col("col")).alias("at"))
    grid = pl.zeros(len(rows) * n_cols, dtype=pl.UInt8, eager=True).scatter(cells["at"], cells["level"])
    bad_rows = cells.filter(pl.col("bad"))["row"].unique().sort().to_list()
    chart.figure = {
        "kind": "heatmap",
        "x": buckets.labels,
        "y": [name for _, name in rows],
        "width": buckets.width,
        "bytes": base64.b64encode(grid.to_numpy().tobytes()).decode("ascii"),
        "levels": [LEVEL_NONE, LEVEL_ZERO, LEVEL_LO, LEVEL_HI, LEVEL_BAD],
        "zmin": lo,
        "zmax": hi,
        "bad_rows": bad_rows,
    }
    notes = [row_note] if row_note else []
    if bad_rows:
        notes.append(f"{len(bad_rows):,} of {len(rows):,} parameters had NaN/Inf gradients (red cells, flagged rows)")
    if buckets.width > 1:
        notes.append(f"each column is {buckets.width} steps (largest norm shown)")
    if notes:
        chart.explain += " Note: " + "; ".join(notes) + "."
    return chart


def _heatmap_rows(
    cells: pl.DataFrame, params: pl.DataFrame, findings: list[Finding]
) -> tuple[list[tuple[int, str]], str]:
    """(param_id, display name) in model order; names made unique so every row can be told apart."""
    present = cells.group_by("param_id").agg(pl.col("norm").max().alias("peak"), pl.col("bad").any())
    if _has(params, "param_id", "name"):
        present = present.join(params.select("param_id", "name"), on="param_id", how="left")
    else:
        present = present.with_columns(pl.lit(None, pl.String).alias("name"))
    present = present.with_columns(pl.coalesce(pl.col("name"), pl.format("param {}", "param_id")).alias("name")).sort(
        "param_id"
    )
    note = ""
    if present.height > MAX_HEATMAP_ROWS:
        named = {f.subject for f in findings if f.subject}
        keep = present.sort(
            pl.col("name").is_in(list(named)), pl.col("bad"), pl.col("peak"), descending=True, nulls_last=True
        ).head(MAX_HEATMAP_ROWS)["param_id"]
        note = f"showing {MAX_HEATMAP_ROWS:,} of {present.height:,} parameters (those in findings, then the largest gradients)"
        present = present.filter(pl.col("param_id").is_in(keep.implode()))
    seen: dict[str, int] = {}
    rows = []
    for pid, name in present.select("param_id", "name").iter_rows():
        seen[name] = seen.get(name, 0) + 1
        rows.append((pid, name if seen[name] == 1 else f"{name} #{pid}"))
    return rows, note


def update_ratio_chart(grads: pl.LazyFrame, buckets: _StepBuckets | None) -> Chart:
    chart = Chart(
        "chart-update-ratio",
        "Update-to-weight ratio",
        "How much each optimizer step changes the weights (update norm / weight norm), across parameters, log scale. "
        "Around 1e-3 is typical; far above means the learning rate is too high for some parameters, far below means they barely learn.",
    )
    names = grads.collect_schema().names()
    if buckets is None or not {"update_norm", "weight_norm"} <= set(names):
        chart.missing = "no optimizer updates were recorded."
        return chart
    ratio = (pl.col("update_norm").cast(pl.Float64) / pl.col("weight_norm").cast(pl.Float64)).alias("ratio")
    per_col = (
        grads.select(buckets.expr.alias("col"), ratio)
        .filter(pl.col("ratio").is_finite() & (pl.col("ratio") > 0))
        .group_by("col")
        .agg(
            pl.col("ratio").min().alias("min"),
            pl.col("ratio").median().alias("median"),
            pl.col("ratio").max().alias("max"),
        )
        .sort("col")
        .collect(engine="streaming")
    )
    if per_col.height == 0:
        chart.missing = "no optimizer updates were recorded."
        return chart
    x = [buckets.labels[c] for c in per_col["col"]]
    series = [
        _line(x, [round_sig(v) for v in per_col[name]], label, color=color, dash=dash)
        for name, label, color, dash in (
            ("max", "largest parameter", SPIKE, False),
            ("median", "median parameter", "#1565c0", False),
            ("min", "smallest parameter", "#78909c", True),
        )
    ]
    chart.figure = line_figure(series, [], "step", "update / weight", log=True, log_toggle=True)
    return chart


def _duration_column(frame: pl.DataFrame) -> str | None:
    for column in frame.columns:
        if column.startswith("duration") and frame.schema[column].is_numeric() and time_unit(column):
            return column
    return None


def step_time_chart(steps: pl.DataFrame, step_times: pl.DataFrame, findings: list[Finding]) -> Chart:
    chart = Chart(
        "chart-step-time",
        "Step time",
        "Wall-clock time of each training step. Circles mark steps much slower than the typical (median) step.",
    )
    source = steps if _has(steps, "step", "duration_s") else step_times
    column = _duration_column(source) if _has(source, "step") else None
    if column is None:
        chart.missing = "no step timings were recorded or profiled."
        return chart
    scale = time_unit(column) or 1.0
    source = source.with_columns((pl.col(column).cast(pl.Float64) * scale * 1e3).alias("ms"))
    marks = _finding_steps(findings, {"slow-step"})
    chart.figure = _series_chart(source, "ms", False, marks, set(), "step time (ms)", log_toggle=False)
    return chart


# Step-breakdown columns that are keys or totals rather than parts of a step.
_NOT_PARTS = ("rank", "step", "ts", "start", "end", "duration", "total")


def breakdown_chart(step_times: pl.DataFrame) -> Chart:
    chart = Chart(
        "chart-breakdown",
        "Where each step's time went",
        "Each bar is one profiled step, split into what the time was spent on (GPU compute, communication, copies, "
        "data loading, host synchronisation, idle). A large data-loading, sync or idle share is the bottleneck.",
    )
    parts = [
        c
        for c in step_times.columns
        if step_times.schema[c].is_numeric() and time_unit(c) and not any(c.startswith(p) for p in _NOT_PARTS)
    ]
    if not _has(step_times, "step") or not parts:
        chart.missing = "no profiler trace with step markers (ProfilerStep#N) was found."
        return chart
    ranks = _ranks(step_times)
    frame = _of_rank(step_times, ranks[0]).sort("step")
    series = []
    for column in parts:
        values = frame[column].cast(pl.Float64) * ((time_unit(column) or 1.0) * 1e3)
        if values.fill_null(0).abs().sum() > 0:
            series.append({"name": column_label(column), "values": [round_sig(v, 4) for v in values.to_list()]})
    if not series:
        chart.missing = "the profiled steps have no time breakdown."
        return chart
    title = "step" + (f" (rank {ranks[0]})" if ranks[0] is not None and len(ranks) > 1 else "")
    chart.figure = bars_figure([str(s) for s in frame["step"].to_list()], series, "time (ms)", title, unit="ms")
    return chart


def bars_figure(
    categories: list[str],
    series: list[dict[str, Any]],
    value_title: str,
    category_title: str = "",
    horizontal: bool = False,
    full: list[str] | None = None,
    unit: str = "",
) -> dict[str, Any]:
    """Stacked bars for report.js, one bar per category (its index, never its label, identifies
    it, so two categories with the same short label stay two bars); `full` names show on hover."""
    return {
        "kind": "bars",
        "categories": categories,
        "full": full or categories,
        "series": series,
        "value_title": value_title,
        "category_title": category_title,
        "horizontal": horizontal,
        "unit": unit,
    }


def top_chart(chart_id: str, title: str, frame: pl.DataFrame, what: str) -> Chart:
    chart = Chart(chart_id, title, f"The {what}s that took the most time in the profiled steps, longest first.")
    column = key_time_column(frame)
    if not _has(frame, "name") or column is None:
        chart.missing = f"no profiler trace with {what} timings was found."
        return chart
    # One bar per full name: the frame may hold a name several times (one row per input shape).
    top = (
        frame.group_by(pl.col("name").cast(pl.String))
        .agg(pl.col(column).sum())
        .sort(column, "name", descending=[True, False], nulls_last=True)
        .head(TOP_BARS)
    )
    scale = (time_unit(column) or 1.0) * 1e3
    full = top["name"].to_list()
    series = [{"name": "", "values": [round_sig(v * scale, 4) if v is not None else None for v in top[column]]}]
    chart.figure = bars_figure(
        short_names(full), series, f"{column_label(column)} (ms)", horizontal=True, full=full, unit="ms"
    )
    return chart


def memory_chart(steps: pl.DataFrame, gpu_run: bool) -> Chart:
    chart = Chart(
        "chart-memory",
        "GPU memory",
        "Memory allocated by tensors at the end of each step. A steady climb is a leak (e.g. keeping losses or graphs alive).",
    )
    columns = [
        c for c in ("mem_allocated", "max_mem_allocated") if c in steps.columns and steps[c].null_count() < steps.height
    ]
    if not _has(steps, "step") or not columns:
        chart.missing = (
            "no GPU memory was recorded (the recorder logs torch.cuda memory per step; profiler traces alone do not)."
            if gpu_run
            else "no GPU memory was recorded (CPU run)."
        )
        return chart
    many = len(_ranks(steps)) > 1
    series = []
    for rank in _ranks(steps):
        frame = _of_rank(steps, rank).with_columns([(pl.col(c) / 2**20).alias(c) for c in columns])
        for column in columns:
            x, y = thin(frame, "step", column)
            label = "allocated" if column == "mem_allocated" else "peak allocated"
            series.append(_line(x, y, f"{_rank_name(rank, many)} {label}".strip(), dash=column.startswith("max")))
    chart.figure = line_figure(series, [], "step", "MiB", log=False, log_toggle=False)
    return chart


def _stragglers(findings: list[Finding]) -> list[int]:
    """The ranks the straggler-rank findings name."""
    ranks: set[int] = set()
    for f in findings:
        if f.rule == "straggler-rank":
            ranks.update([f.rank] if f.rank is not None else f.evidence.get("ranks", []))
    return sorted(ranks)


def rank_chart(ranks: list[dict[str, Any]], findings: list[Finding]) -> Chart:
    chart = Chart(
        "chart-ranks",
        "Ranks compared",
        "Median step time of each rank (and, with GPU traces, how its GPU time splits). One rank far above the rest is a straggler that the others wait for.",
    )
    if stragglers := _stragglers(findings):
        chart.explain += f" Stragglers: {ranks_text(stragglers)}."
    if len(ranks) < 2:
        chart.missing = "only one rank was recorded."
        return chart
    labels = [f"rank {r['rank']}" for r in ranks]
    panels = []
    if any(r.get("step_time_s") is not None for r in ranks):
        values = [round_sig((r.get("step_time_s") or 0) * 1e3, 4) for r in ranks]
        panels.append(bars_figure(labels, [{"name": "median step", "values": values}], "median step (ms)", unit="ms"))
    gpu = []
    for key, color in (("compute_us", "#2e7d32"), ("non_compute_us", "#f9a825"), ("idle_us", "#9e9e9e")):
        values = [(r.get("gpu") or {}).get(key) for r in ranks]
        if any(v is not None for v in values):
            name = f"GPU {key[:-3].replace('_', '-')}"
            gpu.append(
                {
                    "name": name,
                    "color": color,
                    "values": [round_sig(v / 1e3, 4) if v is not None else None for v in values],
                }
            )
    if gpu:
        panels.append(bars_figure(labels, gpu, "GPU time (ms)", unit="ms"))
    if not panels:
        chart.missing = "the ranks have no timings."
        return chart
    chart.figure = panels[0] if len(panels) == 1 else {"kind": "panels", "panels": panels}
    return chart


def rank_step_heatmaps(steps: pl.DataFrame, step_times: pl.DataFrame, findings: list[Finding]) -> list[Chart]:
    """Rank × step heatmaps of step time and, with GPU traces, of GPU idle share: at 1,000 ranks the
    line charts show a few ranks only, these show every rank (binned, docs/report.md)."""
    chart = Chart(
        "chart-rank-steps",
        "Step time per rank",
        "One row per rank, one column per step; colour is the step's wall-clock time (colours span the 1st to "
        "99th percentile). A row brighter than the rest is a straggler; a bright column is a step slow on every rank.",
    )
    if _has(step_times, "rank", "step", "duration_ns"):
        times = step_times.select("rank", "step", (pl.col("duration_ns") / 1e6).alias("value"))
    elif _has(steps, "rank", "step", "duration_s"):
        times = steps.select("rank", "step", (pl.col("duration_s") * 1e3).alias("value"))
    else:
        return []
    times = times.filter(pl.col("value").is_finite())
    if times["rank"].n_unique() <= MAX_RANK_LINES:  # the line charts show every rank
        return []
    stragglers = _stragglers(findings)
    if stragglers:
        chart.explain += f" Stragglers (flagged left of their rows): {ranks_text(stragglers)}."
    lo, hi = times.select(pl.col("value").quantile(0.01).alias("lo"), pl.col("value").quantile(0.99).alias("hi")).row(0)
    chart.figure, note = _rank_step_figure(times, lo, hi, "step time", " ms", stragglers)
    chart.explain += note
    charts = [chart]
    if _has(step_times, "total_gpu_idle_ns") and step_times["total_gpu_idle_ns"].null_count() < step_times.height:
        idle = Chart(
            "chart-rank-idle",
            "GPU idle share per rank",
            "One row per rank, one column per profiled step; colour is the share of the step the GPU ran nothing "
            "(0–100 %). Ranks idle more than the rest wait on something the others do not.",
        )
        shares = (
            step_times.filter(pl.col("duration_ns") > 0)
            .select("rank", "step", (pl.col("total_gpu_idle_ns") / pl.col("duration_ns") * 100).alias("value"))
            .drop_nulls()
        )
        if not shares.is_empty():
            idle.figure, note = _rank_step_figure(shares, 0.0, 100.0, "GPU idle", " %", stragglers)
            idle.explain += note
            charts.append(idle)
    return charts


def _rank_step_figure(
    cells: pl.DataFrame, lo: float, hi: float, name: str, unit: str, flagged: list[int]
) -> tuple[dict[str, Any] | None, str]:
    """A linear-scale heatmap of `rank, step, value`: at most MAX_HEATMAP_ROWS rows (neighbouring
    ranks share a row beyond) and MAX_STEP_COLUMNS columns, each cell the largest value in it."""
    ranks = cells["rank"].unique().sort()
    per_row = -(-ranks.len() // MAX_HEATMAP_ROWS)
    buckets = _StepBuckets.of(cells.lazy())
    if buckets is None:  # no cells (the callers pass some)
        return None, ""
    labels, column = buckets.labels, buckets.expr
    row_of = pl.DataFrame({"rank": ranks, "row": pl.int_range(ranks.len(), eager=True) // per_row})
    hi = max(hi, lo + 1e-9)
    level = (LEVEL_LO + (pl.col("value").clip(lo, hi) - lo) / (hi - lo) * (LEVEL_HI - LEVEL_LO)).round().cast(pl.UInt8)
    grid_cells = (
        cells.join(row_of, on="rank")
        .group_by("row", column.alias("col"))
        .agg(pl.col("value").max())
        .select((pl.col("row") * len(labels) + pl.col("col")).alias("at"), level.alias("level"))
    )
    rows = row_of.height // per_row + (row_of.height % per_row > 0)
    grid = pl.zeros(rows * len(labels), dtype=pl.UInt8, eager=True).scatter(grid_cells["at"], grid_cells["level"])
    names = row_of.group_by("row", maintain_order=True).agg(
        pl.col("rank").first().alias("a"), pl.col("rank").last().alias("b")
    )
    figure = {
        "kind": "heatmap",
        "scale": "linear",
        "value_name": name,
        "unit": unit,
        "x": labels,
        "y": [f"rank {a}" if a == b else f"ranks {a}–{b}" for a, b in names.select("a", "b").iter_rows()],
        "width": buckets.width,
        "bytes": base64.b64encode(grid.to_numpy().tobytes()).decode("ascii"),
        "levels": [LEVEL_NONE, LEVEL_ZERO, LEVEL_LO, LEVEL_HI, LEVEL_BAD],
        "zmin": round_sig(lo),
        "zmax": round_sig(hi),
        "bad_rows": row_of.filter(pl.col("rank").is_in(flagged))["row"].unique().sort().to_list(),
        "flag_text": "straggler",
    }
    notes = []
    if per_row > 1:
        notes.append(f"each row is {per_row} neighbouring ranks")
    if buckets.width > 1:
        notes.append(f"each column is {buckets.width} steps")
    return figure, (" Note: " + "; ".join(notes) + " (largest value shown)." if notes else "")


MAX_EVENT_NAME = 200


def timeline_chart(analysis: Analysis, timeline: StepTimeline) -> Chart:
    """CPU threads and GPU streams of one step as lanes of bars (report.js stacks nested ops)."""
    slug = "slowest" if timeline.why.startswith("slowest") else "anomalous"
    many = len(analysis.trace_origins) > 1
    where = f"step {timeline.step}" + (f" of rank {timeline.rank}" if many else "")
    chart = Chart(
        f"chart-timeline-{slug}",
        f"Timeline of the {timeline.why} ({where})",
        "Each lane is a CPU thread or a GPU stream; each bar an op, runtime call or kernel, nested calls below "
        "their caller. Hover a bar for its name; drag across the chart to zoom, double-click or Reset zoom to go back.",
    )
    events = timeline.events
    names = events["name"].unique(maintain_order=True).to_list()
    index = {name: i for i, name in enumerate(names)}
    chart.figure = {
        "kind": "timeline",
        "step": timeline.step,
        "span_ms": round((timeline.end_ns - timeline.start_ns) / 1e6, 4),
        "lanes": timeline.lanes,
        "names": [n[:MAX_EVENT_NAME] for n in names],
        "events": [[lane, start, dur, index[name]] for lane, start, dur, name in events.iter_rows()],
    }
    if timeline.total_events > events.height:
        chart.explain += (
            f" Note: showing the {events.height:,} longest of {timeline.total_events:,} events of this step."
        )
    chart.trace = step_range(analysis, timeline.rank, timeline.step)
    return chart
