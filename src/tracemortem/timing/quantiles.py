"""Quantiles of many ranks' values, from mergeable value counts (docs/scale.md "Merging").

A rank's durations are kept as (group…, value, n): how often each value occurred. Counts of many
ranks add up, and the quantile of the whole is read from the cumulative counts, with polars' own
definitions (`median`, `quantile(q, "nearest" | "linear")`), so while the counts are exact the
numbers are the ones polars gives on all the values at once. Nanosecond durations rarely repeat,
so merged counts of many ranks are bounded by `sketch`: past `EXACT_ROWS` rows, values are
replaced by the representative of their logarithmic bucket (DDSketch's mapping, relative accuracy
`RELATIVE_ACCURACY`), which bounds the rows per group by the range of its values, not by the ranks.
"""

from __future__ import annotations

import math
from typing import Literal

import polars as pl

COUNT = "n"
EXACT_ROWS = 250_000  # merged (group, value) rows kept exact; beyond, the counts are sketched
RELATIVE_ACCURACY = 0.01  # a sketched quantile is within 1 % of a value of its rank
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_EXACT_BELOW = 128  # values this small are kept as they are (their buckets are narrower than 1)


def value_counts(frame: pl.DataFrame, keys: list[str], value: str) -> pl.DataFrame:
    """keys…, `value`, n: how often each value occurs per group (nulls left out, as quantiles skip them)."""
    return frame.drop_nulls(value).group_by(*keys, value).agg(pl.len().cast(pl.Int64).alias(COUNT))


def add_counts(counts: pl.DataFrame, keys: list[str], value: str, exact: bool = False) -> pl.DataFrame:
    """Several value-count frames concatenated → one count per (group, value), sketched when
    there are more than `EXACT_ROWS` (unless `exact`: groups that each belong to one rank, whose
    counts cannot grow with the ranks)."""
    added = counts.group_by(*keys, value).agg(pl.col(COUNT).sum())
    return sketch(added, keys, value) if added.height > EXACT_ROWS and not exact else added


def sketch(counts: pl.DataFrame, keys: list[str], value: str) -> pl.DataFrame:
    """Each value (an integer) replaced by the representative of its bucket (γ^(i-1), γ^i],
    2γ^i/(γ+1), rounded; applying it again changes nothing, so sketched and new counts merge."""
    v = pl.col(value)
    bucket = (v.cast(pl.Float64).log() / math.log(_GAMMA)).ceil()
    representative = (2 * pl.lit(_GAMMA).pow(bucket) / (_GAMMA + 1)).round().cast(counts.schema[value])
    return (
        counts.with_columns(pl.when(v >= _EXACT_BELOW).then(representative).otherwise(v).alias(value))
        .group_by(*keys, value)
        .agg(pl.col(COUNT).sum())
    )


def _value_at(cumulative: pl.DataFrame, wanted: pl.DataFrame, value: str, at: str) -> pl.DataFrame:
    """For each group (`_group`) of `wanted` and its 0-based position `at`: the value there in sorted order."""
    found = wanted.sort(at).join_asof(
        cumulative.select("_group", pl.col("_before").alias(at), value).sort(at),
        on=at,
        by="_group",
        strategy="backward",
        check_sortedness=False,
    )
    return found.select("_group", pl.col(value).alias(f"_{at}_value"))


def quantile(
    counts: pl.DataFrame,
    keys: list[str],
    value: str,
    q: float,
    method: Literal["nearest", "linear"],
    name: str,
) -> pl.DataFrame:
    """keys…, `name`: the q-quantile (float64) of each group's values, as polars computes it."""
    # A group number stands for the keys, which may be null (an op without input shapes).
    totals = counts.group_by(keys).agg(pl.col(COUNT).sum().alias("_total")).with_row_index("_group")
    ordered = (
        counts.join(totals.select(*keys, "_group"), on=keys, how="left", nulls_equal=True)
        .sort("_group", value)
        .with_columns((pl.col(COUNT).cum_sum().over("_group") - pl.col(COUNT)).alias("_before"))
    )
    position = (pl.col("_total") - 1).cast(pl.Float64) * q
    if method == "nearest":
        wanted = totals.with_columns(position.round().cast(pl.Int64).alias("_lo"), pl.lit(0.0).alias("_frac"))
        wanted = wanted.with_columns(pl.col("_lo").alias("_hi"))
    else:
        wanted = totals.with_columns(
            position.floor().cast(pl.Int64).alias("_lo"),
            position.ceil().cast(pl.Int64).alias("_hi"),
            (position - position.floor()).alias("_frac"),
        )
    lo = _value_at(ordered, wanted.select("_group", "_lo"), value, "_lo")
    hi = _value_at(ordered, wanted.select("_group", "_hi"), value, "_hi")
    low, high = pl.col("__lo_value").cast(pl.Float64), pl.col("__hi_value").cast(pl.Float64)
    exact = pl.when(pl.col("__lo_value") == pl.col("__hi_value")).then(low)
    return (
        wanted.select("_group", *keys, "_frac")
        .join(lo, on="_group", how="left")
        .join(hi, on="_group", how="left")
        .select(*keys, exact.otherwise(low + (high - low) * pl.col("_frac")).alias(name))
    )


def median(counts: pl.DataFrame, keys: list[str], value: str, name: str) -> pl.DataFrame:
    """polars' median: the mean of the two middle values for an even count."""
    return quantile(counts, keys, value, 0.5, "linear", name)
