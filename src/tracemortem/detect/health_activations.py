"""Activation-statistics rules (`Recorder(activations=N)`, docs/findings-health.md): dead ReLU
outputs, saturated tanh/sigmoid outputs, and the module whose activations grew first before
the run diverged. Frames in (`run.acts`), findings out; one polars pass per rule."""

from __future__ import annotations

import polars as pl

from ..findings import Finding
from ..load.run import RunData
from ..thresholds import Thresholds, threshold
from .health_series import HealthSeries

DEAD_CLASSES = ("ReLU", "ReLU6")
DEAD_FRACTION = threshold(
    "dead-activation.zero_fraction",
    0.95,
    "Warning when the median share of exactly-zero outputs of a ReLU module over the last `window` recorded "
    "steps is at least this: most of its units are dead (no gradient flows through them).",
    "tracemortem (dying-ReLU rule of thumb)",
)
DEAD_WINDOW = threshold(
    "dead-activation.window",
    5,
    "Recorded activation steps (the last ones) the zero share is measured over.",
    "tracemortem",
)
SATURATED_FRACTION = threshold(
    "saturated-activation.fraction",
    0.9,
    "Warning when the median share of a tanh/sigmoid module's outputs within 1 % of its bounds over the last "
    "`window` recorded steps is at least this: its gradient is nearly zero there.",
    "tracemortem",
)
SATURATED_WINDOW = threshold(
    "saturated-activation.window",
    5,
    "Recorded activation steps (the last ones) saturation is measured over.",
    "tracemortem",
)
GROWTH_FACTOR = threshold(
    "activation-growth.factor",
    10.0,
    "A module's activations have grown when their RMS reaches this multiple of its baseline: the median over the "
    "first half of its recorded steps before the divergence (early learning transients do not count).",
    "tracemortem",
)
GROWTH_BASELINE = threshold(
    "activation-growth.baseline_steps",
    3,
    "Fewest recorded activation steps in a module's baseline half; with less history the rule stays silent.",
    "tracemortem",
)
SHOWN = 5


def _last_window(acts: pl.DataFrame, window: int) -> pl.DataFrame:
    """Rows of each (rank, module) in its last `window` recorded steps."""
    return acts.filter(pl.col("step").rank("dense", descending=True).over("rank", "module_id") <= window)


def _per_module_median(rows: pl.DataFrame, column: str) -> pl.DataFrame:
    return (
        rows.group_by("rank", "module_id", "module", "module_class")
        .agg(pl.col(column).median().alias("median"), pl.col("step").max().alias("last_step"), pl.len().alias("steps"))
        .sort("rank", "module_id")
    )


def dead_activation(run: RunData, _series: HealthSeries, config: Thresholds) -> list[Finding]:
    relu = run.acts.filter(pl.col("module_class").is_in(DEAD_CLASSES) & pl.col("zero_fraction").is_not_nan())
    dead = _per_module_median(_last_window(relu, config[DEAD_WINDOW]), "zero_fraction").filter(
        pl.col("median") >= config[DEAD_FRACTION]
    )
    return [
        Finding(
            "dead-activation",
            "warning",
            "dead ReLU units",
            f"{row['median']:.1%} of the outputs of {row['module']} ({row['module_class']}) were exactly zero over its "
            f"last {row['steps']} recorded step(s): those units pass no gradient.",
            step=row["last_step"],
            rank=row["rank"],
            subject=row["module"],
            evidence={"zero_fraction": row["median"], "recorded_steps": row["steps"]},
            suggestion="Lower the learning rate or its warm-up peak, initialise the layer before it with Kaiming "
            "(fan_in, relu) and a small positive bias, or use LeakyReLU/GELU; check for a large negative bias "
            "in the layer feeding it.",
        )
        for row in dead.iter_rows(named=True)
    ]


def saturated_activation(run: RunData, _series: HealthSeries, config: Thresholds) -> list[Finding]:
    bounded = run.acts.filter(pl.col("saturation").is_not_null() & pl.col("saturation").is_not_nan())
    saturated = _per_module_median(_last_window(bounded, config[SATURATED_WINDOW]), "saturation").filter(
        pl.col("median") >= config[SATURATED_FRACTION]
    )
    return [
        Finding(
            "saturated-activation",
            "warning",
            "saturated activation",
            f"{row['median']:.1%} of the outputs of {row['module']} ({row['module_class']}) sat within 1 % of its bounds "
            f"over its last {row['steps']} recorded step(s): its gradient there is nearly zero.",
            step=row["last_step"],
            rank=row["rank"],
            subject=row["module"],
            evidence={"saturation": row["median"], "recorded_steps": row["steps"]},
            suggestion="Normalise its input (LayerNorm/BatchNorm before it), lower the learning rate, or scale the "
            "initial weights of the layer feeding it (Xavier/Glorot for tanh and sigmoid).",
        )
        for row in saturated.iter_rows(named=True)
    ]


def _divergence_step(series: HealthSeries) -> int | None:
    bad = series.per_step.filter(~pl.col("skipped") & (~pl.col("loss_finite") | pl.col("grad_bad")))
    return bad["step"].min() if bad.height else None  # type: ignore[return-value]


def activation_growth(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    if run.acts.is_empty() or series.per_step.is_empty():
        return []
    diverged = _divergence_step(series)
    if diverged is None:
        return []
    before = run.acts.filter((pl.col("step") <= diverged) & pl.col("rms").is_finite())
    module = ("rank", "module_id")
    order = pl.col("step").rank("dense").over(module)
    half = pl.col("step").count().over(module) // 2
    grown = (
        before.with_columns(pl.col("rms").filter(order <= half).median().over(module).alias("baseline"))
        .filter((half >= config[GROWTH_BASELINE]) & (order > half) & (pl.col("baseline") > 0))
        .with_columns((pl.col("rms") / pl.col("baseline")).alias("ratio"))
        .filter(pl.col("ratio") >= config[GROWTH_FACTOR])
        .sort("step", "module_id")
        .group_by("rank", "module_id", maintain_order=True)
        .first()
        .sort("step", "module_id")  # same step: the earlier module (registration ≈ forward order)
    )
    if grown.is_empty():
        return []
    first = grown.row(0, named=True)
    later = [f"{r['module']} (step {r['step']})" for r in grown.slice(1, SHOWN).iter_rows(named=True)]
    return [
        Finding(
            "activation-growth",
            "warning",
            "activations grew before the divergence",
            f"{first['module']} ({first['module_class']}) was the first module whose activation RMS reached "
            f"{config[GROWTH_FACTOR]:g}× its baseline: {first['ratio']:.3g}× at step {first['step']}, before the run "
            f"went non-finite at step {diverged}." + (f" Later: {', '.join(later)}." if later else ""),
            step=first["step"],
            rank=first["rank"],
            subject=first["module"],
            evidence={
                "ratio": first["ratio"],
                "rms": first["rms"],
                "baseline_rms": first["baseline"],
                "divergence_step": diverged,
                "modules_grown": grown.height,
            },
            suggestion="Look at what feeds this module: its weights' update ratio, the learning rate at that step, "
            "and whether a normalisation layer (LayerNorm, QK-norm for attention) or gradient clipping would bound it.",
        )
    ]
