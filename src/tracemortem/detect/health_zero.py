"""`zero-gradient`: every recorded gradient exactly zero over a span of steps — nothing learns.

Per step, the global gradient norm is exactly 0 only when every recorded gradient element is 0
(an L2 norm). Runs of such steps are found with run-length encoding over the recorded steps
(docs/findings-health.md).
"""

from __future__ import annotations

import polars as pl

from ..findings import Finding
from ..load.run import RunData
from ..thresholds import Thresholds, threshold
from .health_series import HealthSeries

ZERO_MIN_STEPS = threshold(
    "zero-gradient.min_steps",
    3,
    "Consecutive recorded steps whose every gradient is exactly zero before nothing is said to learn.",
    "smdebug AllZero (patience 3)",
)


def zero_spans(per_step: pl.DataFrame) -> pl.DataFrame:
    """Runs of consecutive recorded steps with a zero global gradient norm: first, last, steps,
    and the loss range over the run."""
    recorded = per_step.filter(pl.col("grad_norm").is_not_null() & ~pl.col("skipped")).sort("step")
    zero = pl.col("grad_norm") == 0
    return (
        recorded.with_columns(zero.alias("zero"), zero.rle_id().alias("run"))
        .filter("zero")
        .group_by("run", maintain_order=True)
        .agg(
            pl.col("step").first().alias("first"),
            pl.col("step").last().alias("last"),
            pl.len().alias("steps"),
            pl.col("loss").min().alias("loss_min"),
            pl.col("loss").max().alias("loss_max"),
        )
        .drop("run")
    )


def zero_gradient(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    spans = zero_spans(series.per_step).filter(pl.col("steps") >= config[ZERO_MIN_STEPS])
    if spans.is_empty():
        return []
    recorded = series.per_step.filter(pl.col("grad_norm").is_not_null() & ~pl.col("skipped")).height
    longest = spans.sort("steps", descending=True).row(0, named=True)
    zero_steps = int(spans["steps"].sum())
    whole_run = zero_steps == recorded
    constant_loss = longest["loss_min"] is not None and longest["loss_min"] == longest["loss_max"]
    loss_text = f"; the loss was {longest['loss_min']:g} on every one of them" if constant_loss else ""
    where = "on every recorded step" if whole_run else f"on steps {longest['first']}..{longest['last']}"
    return [
        Finding(
            "zero-gradient",
            "error" if whole_run else "warning",
            "every gradient is exactly zero",
            f"every recorded gradient was exactly 0 {where} ({longest['steps']} consecutive steps, "
            f"{zero_steps} of {recorded} in all){loss_text}: nothing learns.",
            step=longest["first"],
            evidence={
                "first_step": longest["first"],
                "last_step": longest["last"],
                "span_steps": longest["steps"],
                "zero_steps": zero_steps,
                "recorded_steps": recorded,
                "spans": [[r["first"], r["last"]] for r in spans.iter_rows(named=True)][:20],
                "constant_loss": longest["loss_min"] if constant_loss else None,
            },
            suggestion="Check the loss: a loss that cannot change (cross_entropy over a single class is always 0, "
            "a target equal to the output, a constant or detached prediction), a graph cut by .detach() or "
            "torch.no_grad(), or a learning-rate schedule/gradient scaling that multiplies by 0.",
        )
    ]
