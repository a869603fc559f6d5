"""Gradient clipping (`grad-clipping`): how often `clip_grad_norm_`'s cap was active, and by
how much the gradients were scaled down. A cap that bites on most steps is doing the learning
rate's job: every update has the length max_norm x lr, whatever the gradient says.
See docs/findings-health.md."""

from __future__ import annotations

import polars as pl

from ..findings import Finding
from ..load.run import RunData
from ..thresholds import Thresholds, threshold
from .health_series import HealthSeries, finite

MOST_STEPS = threshold(
    "grad-clipping.most_steps",
    0.5,
    "Warning when the cap was active on more than this share of the steps that clipped.",
    "tracemortem (the cap doing the learning rate's job)",
)
MIN_STEPS = threshold(
    "grad-clipping.min_steps",
    20,
    "Clipped steps needed before the share can raise a warning (fewer only give an info).",
    "tracemortem",
)


def _num(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def grad_clipping(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    clipped = series.per_step.filter(finite("preclip_norm") & finite("clip_max") & (pl.col("clip_max") > 0))
    if clipped.is_empty():
        return []
    factor = pl.col("preclip_norm") / pl.col("clip_max")
    bit = factor > 1.0
    facts = clipped.select(
        pl.len().alias("steps"),
        bit.sum().alias("active"),
        pl.col("step").filter(bit).first().alias("first_active"),
        pl.col("step").filter(bit).last().alias("last_active"),
        factor.filter(bit).median().alias("median_factor"),
        factor.filter(bit).max().alias("max_factor"),
        pl.col("step").filter(factor == factor.filter(bit).max()).first().alias("max_step"),
        pl.col("clip_max").median().alias("clip_max"),
        pl.col("preclip_norm").median().alias("median_norm"),
    ).row(0, named=True)
    active, steps = int(facts["active"]), int(facts["steps"])
    if active == 0:
        return []
    share = active / steps
    most = share > config[MOST_STEPS] and steps >= config[MIN_STEPS]
    evidence = {
        "steps_with_clipping": steps,
        "active_steps": active,
        "active_fraction": _num(share),
        "first_active_step": facts["first_active"],
        "last_active_step": facts["last_active"],
        "median_factor": _num(facts["median_factor"]),
        "max_factor": _num(facts["max_factor"]),
        "max_factor_step": facts["max_step"],
        "clip_max": _num(facts["clip_max"]),
        "median_preclip_norm": _num(facts["median_norm"]),
    }
    how_much = (
        f"the gradient norm before clipping was a median {_num(facts['median_factor'])}x the cap "
        f"{_num(facts['clip_max'])} on those steps (at most {_num(facts['max_factor'])}x, step {facts['max_step']})"
    )
    suggestion = (
        "Clipping on most steps means every update has the same length (max_norm x learning rate): the cap is "
        "doing the learning rate's job. Lower the learning rate (or lengthen warmup) until clipping is rare, or "
        "raise max_norm to about the typical pre-clip norm."
        if most
        else "Occasional clipping is the cap doing its job; if it clusters, look at what those steps' batches hold."
    )
    return [
        Finding(
            "grad-clipping",
            "warning" if most else "info",
            "gradient clipping active on most steps" if most else "gradient clipping was active",
            f"clip_grad_norm_ scaled the gradients down on {active} of {steps} steps ({share:.0%}), first at step "
            f"{facts['first_active']}; {how_much}.",
            step=facts["first_active"],
            evidence=evidence,
            suggestion=suggestion,
        )
    ]
