"""Early divergence: a series (gradient norm or loss) blowing up against the run's own first steps.

The sigma and early-max tests of `health_magnitude` need tens to a hundred steps of history; a
learning rate that is too high diverges within the first tens of steps, before that history
exists. Two tests compare each healthy step with a baseline from the run's first few steps: the
median of the first `baseline_steps` healthy steps, or of those before it for the steps among
them — so a blow-up on step 1 is measured against step 0, not against itself
(docs/findings-health.md "Early divergence"):
- surge: the value is at least `surge` times that baseline;
- growth: over the last `window` steps the value stayed at least `floor` times the baseline and
  rose at least `growth`-fold (sustained geometric growth, not one noisy step).
Both need a positive finite baseline, so an all-zero series (0/0) never counts as growth.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class GrowthLimits:
    baseline_steps: int  # first healthy steps whose median is the baseline
    surge: float  # value >= surge x baseline
    window: int  # steps of the sustained-growth test
    floor: float  # every value of the window >= floor x baseline ...
    growth: float  # ... and last / first of the window >= growth


def positive_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator where both are finite and the denominator positive, else null:
    0/0 and x/0 must never compare as a large value (polars orders NaN above every number)."""
    ok = numerator.is_finite() & denominator.is_finite() & (denominator > 0)
    return pl.when(ok).then(numerator / denominator)


def divergence(frame: pl.DataFrame, column: str, limits: GrowthLimits) -> pl.DataFrame:
    """`frame` (healthy steps in order, with `step` and `column`) plus `baseline`, `to_baseline`
    (value / baseline), `growth_ratio` (value / the value window-1 steps before), `surge` and
    `growth` (booleans) and `growth_from` (first step of the growth window)."""
    value = pl.col(column).cast(pl.Float64)
    first = frame.head(limits.baseline_steps)[column].cast(pl.Float64)
    # Median of the first k values, for k = 1 .. baseline_steps: step i is compared with the
    # median of the min(i, baseline_steps) steps before it.
    medians = [first.head(k).median() for k in range(1, first.len() + 1)]
    if not medians or not all(isinstance(m, float) and m > 0 for m in medians):
        return frame.with_columns(
            pl.lit(None, pl.Float64).alias("baseline"),
            pl.lit(None, pl.Float64).alias("to_baseline"),
            pl.lit(None, pl.Float64).alias("growth_ratio"),
            pl.lit(False).alias("surge"),
            pl.lit(False).alias("growth"),
            pl.lit(None, pl.Int64).alias("growth_from"),
        )
    index = pl.int_range(pl.len())
    base = pl.lit(pl.Series(medians, dtype=pl.Float64)).gather((pl.min_horizontal(index, len(medians)) - 1).clip(0))
    window = max(2, limits.window)
    has_baseline = index >= 1
    relative = positive_ratio(value, base)
    rise = positive_ratio(value, value.shift(window - 1))
    return frame.with_columns(
        base.alias("baseline"),
        relative.alias("to_baseline"),
        rise.alias("growth_ratio"),
        (has_baseline & (relative >= limits.surge)).fill_null(False).alias("surge"),
        (has_baseline & (relative.rolling_min(window) >= limits.floor) & (rise >= limits.growth))
        .fill_null(False)
        .alias("growth"),
        pl.col("step").shift(window - 1).alias("growth_from"),
    )
