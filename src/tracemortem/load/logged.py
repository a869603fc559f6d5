"""Turn what a training stack logged (TensorBoard tags, Trainer log keys, CSV columns) into the
`RunData` the health rules read, and say what the log did not hold (docs/inputs.md).

Every reader hands over a `Logged`: scalars and per-parameter histogram summaries in long form,
one row per logged value, in the order they were written. Here the tag map picks the steps
columns, later writes of a step supersede earlier ones (TensorBoard's rule for restarts), and
per-parameter series become the grads table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..findings import Finding
from .run import GRADS_COLUMNS, HEALTH_COLUMNS, PARAM_COLUMNS, STEPS_COLUMNS, RunData
from .tags import Chosen, TagMap

SCALAR_COLUMNS: dict[str, pl.DataType] = {
    "tag": pl.String(),
    "step": pl.Int64(),
    "value": pl.Float64(),
    "time": pl.Float64(),
}
HISTOGRAM_COLUMNS: dict[str, pl.DataType] = {
    "tag": pl.String(),
    "step": pl.Int64(),
    "norm": pl.Float64(),
    "absmax": pl.Float64(),
    "numel": pl.Int64(),
    "approximate": pl.Boolean(),
}
CALLBACK_HINT = (
    "add the tracemortem callback (tracemortem.integrations.lightning or .transformers) or a "
    "tracemortem.Recorder to the training loop to record them"
)


@dataclass
class Logged:
    """What one logged run holds, before the tag map is applied."""

    root: Path
    kind: str  # tensorboard | hf-trainer | lightning-csv
    scalars: pl.DataFrame  # SCALAR_COLUMNS, in write order
    histograms: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=HISTOGRAM_COLUMNS))
    notes: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def note(severity: str, title: str, message: str, suggestion: str = "", **evidence: Any) -> Finding:
    return Finding("input-error", severity, title, message, evidence=evidence, suggestion=suggestion)


def latest_writes(frame: pl.DataFrame) -> pl.DataFrame:
    """Per tag, a value survives only if every later write of that tag is at a later step: a
    restarted job that logs step 20 again supersedes what the first attempt logged from step 20 on."""
    later_min = pl.col("step").reverse().cum_min().reverse().shift(-1).over("tag")
    return frame.filter(later_min.is_null() | (pl.col("step") < later_min))


def _per_parameter(scalars: pl.DataFrame, histograms: pl.DataFrame, tags: TagMap, chosen: Chosen) -> pl.DataFrame:
    """`name, kind (grad|weight), step, norm, absmax, numel, approximate` from per-parameter
    scalars (a norm) and histograms (norm from their sum of squares, absmax from min/max)."""
    taken = set(chosen.columns.values())
    rows: list[dict[str, Any]] = []
    scalar_tags = [t for t in scalars["tag"].unique().sort() if t not in taken]
    histogram_tags = histograms["tag"].unique().sort().to_list()
    mapping = {t: m for t in [*scalar_tags, *histogram_tags] if (m := tags.parameter(t)) is not None}
    grad_names = {name for kind, name in mapping.values() if kind == "grad"}
    for tag in histogram_tags:  # a bare histogram named like a parameter with a gradient series is its weights
        if tag not in mapping and tag in grad_names:
            mapping[tag] = ("weight", tag)
    for tag, (kind, name) in mapping.items():
        rows.append({"tag": tag, "kind": kind, "name": name})
    if not rows:
        return pl.DataFrame(schema={"name": pl.String, "kind": pl.String, **HISTOGRAM_COLUMNS})
    names = pl.DataFrame(rows, schema={"tag": pl.String, "kind": pl.String, "name": pl.String})
    from_scalars = scalars.join(names, on="tag").select(
        "tag",
        "kind",
        "name",
        "step",
        pl.col("value").alias("norm"),
        pl.lit(None, pl.Float64).alias("absmax"),
        pl.lit(None, pl.Int64).alias("numel"),
        pl.lit(False).alias("approximate"),
    )
    from_histograms = histograms.join(names, on="tag").select(from_scalars.columns)
    return pl.concat([from_scalars, from_histograms])


def _params(per_param: pl.DataFrame) -> pl.DataFrame:
    """Parameters with a gradient series, numbered in the order they were first logged (the
    order of `named_parameters()` in the usual loop); order 0 = nearest the output = last."""
    grads = per_param.filter(pl.col("kind") == "grad")
    table = (
        grads.with_row_index("first_seen")
        .group_by("name")
        .agg(pl.col("first_seen").min(), pl.col("numel").max())
        .sort("first_seen")
        .with_row_index("param_id")
    )
    return table.select(
        pl.col("param_id").cast(pl.Int32),
        "name",
        pl.lit("").alias("shape"),  # a log does not say; rules that need the shape skip these
        pl.col("numel").cast(pl.Int64),
        pl.lit(None, pl.String).alias("dtype"),
        pl.lit(True).alias("requires_grad"),
        (pl.len() - 1 - pl.col("param_id")).cast(pl.Int32).alias("order"),
    ).select(list(PARAM_COLUMNS))


def _grads(per_param: pl.DataFrame, params: pl.DataFrame) -> pl.LazyFrame:
    if params.is_empty():
        return pl.LazyFrame(schema=GRADS_COLUMNS)
    ids = params.select("name", "param_id")

    def series(kind: str) -> pl.DataFrame:
        return (
            per_param.filter(pl.col("kind") == kind)
            .group_by("name", "step", maintain_order=True)
            .agg(pl.col("norm").last(), pl.col("absmax").last())
        )

    grad, weight = series("grad"), series("weight")
    norm, absmax = pl.col("norm"), pl.col("absmax")
    bad = (norm.is_not_null() & ~norm.is_finite()) | (absmax.is_not_null() & ~absmax.is_finite())
    frame = (
        grad.join(weight.select("name", "step", pl.col("norm").alias("weight_norm")), on=["name", "step"], how="left")
        .join(ids, on="name")
        .select(
            "step",
            "param_id",
            norm.cast(pl.Float32),
            absmax.cast(pl.Float32),
            # A log holds no element counts; a non-finite norm or extreme means NaN/Inf elements.
            pl.when(bad).then(1).otherwise(0).cast(pl.Int64).alias("nonfinite"),
            pl.col("weight_norm").cast(pl.Float32),
            pl.lit(None, pl.Float32).alias("update_norm"),
        )
        .sort("step", "param_id")
    )
    return frame.lazy()


def _steps(scalars: pl.DataFrame, chosen: Chosen, user: list[str], grads: pl.LazyFrame) -> pl.DataFrame:
    columns = {tag: column for column, tag in chosen.columns.items()}
    reserved = set(STEPS_COLUMNS) | {"rank"}
    columns.update({tag: (tag if tag not in reserved else f"tag:{tag}") for tag in user})
    used = scalars.filter(pl.col("tag").is_in(list(columns)))
    if used.is_empty():
        wide = pl.DataFrame(schema={"step": pl.Int64})
    else:
        wide = (
            used.with_columns(pl.col("tag").replace_strict(columns, return_dtype=pl.String).alias("column"))
            .pivot(on="column", index="step", values="value", aggregate_function="last")
            .join(used.group_by("step").agg(pl.col("time").max()), on="step")
        )
    if "grad_norm" not in chosen.columns and not wide.is_empty():
        # No global norm logged: the L2 over the logged parameters stands in for it.
        total = grads.group_by("step").agg(pl.col("norm").cast(pl.Float64).pow(2).sum().sqrt().alias("grad_norm"))
        wide = wide.join(total.collect(), on="step", how="left")
    for name, dtype in STEPS_COLUMNS.items():
        if name not in wide.columns:
            wide = wide.with_columns(pl.lit(None).alias(name))
        wide = wide.with_columns(pl.col(name).cast(dtype))
    extra = [c for c in wide.columns if c not in STEPS_COLUMNS]
    return wide.select(*STEPS_COLUMNS, *extra).with_columns(pl.lit(0, pl.Int32).alias("rank")).sort("step")


def _lr_facts(steps: pl.DataFrame) -> dict[str, Any] | None:
    lr = steps.select("step", "lr").filter(pl.col("lr").is_finite())  # facts go to JSON, which holds no NaN
    if lr.is_empty():
        return None
    peak = lr.sort("lr", descending=True, maintain_order=True).row(0, named=True)
    first, last = lr.row(0, named=True), lr.row(-1, named=True)
    return {
        "first": first["lr"],
        "peak": peak["lr"],
        "peak_step": peak["step"],
        "last": last["lr"],
        "min": lr["lr"].min(),
    }


def _missing_notes(scalars: pl.DataFrame, chosen: Chosen, has_grads: bool, histograms_approx: int) -> list[Finding]:
    seen = scalars["tag"].unique().sort().to_list()
    shown = ", ".join(seen[:20]) + (f" and {len(seen) - 20} more" if len(seen) > 20 else "") if seen else "none"
    remap = "map your tag with [tool.tracemortem.tags] in pyproject.toml or tracemortem.toml (docs/inputs.md)"
    notes = []
    for column, tag in chosen.guessed.items():
        notes.append(
            note(
                "info",
                f"took {tag!r} as the {column}",
                f"no tag with a known name for the {column} was logged; {tag!r} was taken for it",
                suggestion=f"If that is wrong, {remap}.",
                column=column,
                tag=tag,
            )
        )
    if "loss" not in chosen.columns:
        notes.append(
            note(
                "info",
                "no training loss was logged",
                f"no tag was recognised as the training loss (tags seen: {shown}); the loss rules did not run",
                suggestion=f"If one of these is the loss, {remap}.",
                tags=seen[:50],
            )
        )
    if "grad_norm" not in chosen.columns and not has_grads:
        notes.append(
            note(
                "info",
                "no gradient norm was logged",
                "neither a global gradient norm nor per-parameter gradients were logged; the gradient rules did not run",
                suggestion=f"Log the norm clip_grad_norm_ returns (Hugging Face Trainer does), or {CALLBACK_HINT}.",
            )
        )
    if not has_grads:
        notes.append(
            note(
                "info",
                "no per-parameter gradients were logged",
                "the log holds no per-parameter gradient series (histograms such as grad/<name>), so no rule "
                "names the parameter where gradients exploded, vanished or went non-finite",
                suggestion=CALLBACK_HINT[0].upper() + CALLBACK_HINT[1:] + ".",
            )
        )
    if "lr" not in chosen.columns:
        notes.append(
            note("info", "no learning rate was logged", "no tag was recognised as the learning rate", suggestion=remap)
        )
    if histograms_approx:
        notes.append(
            note(
                "info",
                "per-parameter norms approximated from histogram bins",
                f"{histograms_approx} histogram(s) hold no sum of squares; their norms and absolute maxima are "
                "estimated from the bin centres and edges, so they are approximate",
                histograms=histograms_approx,
            )
        )
    return notes


def build_run(logged: Logged, tags: TagMap) -> RunData:
    scalars = latest_writes(logged.scalars)
    histograms = latest_writes(logged.histograms)
    superseded = logged.scalars.height - scalars.height + logged.histograms.height - histograms.height
    chosen = tags.choose(scalars["tag"].unique().to_list())
    per_param = _per_parameter(scalars, histograms, tags, chosen)
    params = _params(per_param)
    grads = _grads(per_param, params)
    per_param_tags = set(per_param["tag"].to_list())
    user = sorted(set(scalars["tag"].to_list()) - set(chosen.columns.values()) - per_param_tags)
    steps = _steps(scalars, chosen, user, grads)

    notes = list(logged.notes)
    if superseded:
        notes.append(
            note(
                "info",
                "restarted run: earlier values superseded",
                f"{superseded} logged value(s) were written again by a later attempt at the same or an earlier step "
                "(a resumed or re-run job); the later attempt's values are analysed, as TensorBoard shows them",
                superseded=superseded,
            )
        )
    approx = int(histograms.filter(pl.col("approximate"))["tag"].n_unique()) if histograms.height else 0
    notes += _missing_notes(scalars, chosen, not params.is_empty(), approx)

    span = (
        {"first": steps["step"].min(), "last": steps["step"].max(), "count": steps["step"].n_unique()}
        if steps.height
        else {"first": None, "last": None, "count": 0}
    )
    recorded = [name for name, present in (("steps", steps.height > 0), ("grads", not params.is_empty())) if present]
    facts: dict[str, Any] = {
        "world_size": 1,
        "steps": span,
        "status": None,
        "recorded": recorded,
        "parameters": params.height,
        "tags": dict(sorted(chosen.columns.items())),
        "lr": _lr_facts(steps),
        "snapshot": None,
        "checkpoints": [],
        **logged.facts,
    }
    health = pl.DataFrame(schema={**HEALTH_COLUMNS, "rank": pl.Int32})
    grad_ranks = [0] if not params.is_empty() else []
    run = RunData(logged.root, None, {0: {}}, steps, grads, params, health, notes, grad_ranks=grad_ranks)
    run.facts = facts
    return run
