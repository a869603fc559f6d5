"""Which recorded steps count when a rank was recorded more than once (docs/format.md, "Attempts").

TensorBoard's convention for restarts: a later attempt supersedes every step of the earlier ones
from its own first step on. A resume from step 20 keeps steps 0-19 of the attempt before it; a
re-run from step 0 replaces it all. Superseded data stays on disk and is only left out of the
analysis; the attempts table says what was left out, for the `run-resumed` finding.
"""

from __future__ import annotations

from typing import Any

import polars as pl

# One row per (rank, attempt) found on disk.
LISTING_COLUMNS: dict[str, Any] = {
    "rank": pl.Int32,
    "attempt": pl.Int32,
    "path": pl.String,
    "status": pl.String,
    "started": pl.String,
    "ended": pl.String,
    "pid": pl.Int64,
    "hostname": pl.String,
    "snapshot_step": pl.Int64,
}
_NO_LIMIT = 2**63 - 1


def _later_first_step() -> pl.Expr:
    """Per rank, the smallest first step among the attempts after this one (null: none)."""
    suffix_min = pl.col("first_step").fill_null(_NO_LIMIT).reverse().cum_min().reverse()
    cutoff = suffix_min.shift(-1).over("rank", order_by="attempt")
    return pl.when(cutoff == _NO_LIMIT).then(None).otherwise(cutoff).alias("cutoff")


def _bad_step() -> pl.Expr:
    """A step whose gradients or loss held NaN/Inf."""
    grads = pl.col("nonfinite").fill_null(0) > 0
    loss = pl.col("loss").is_not_null() & ~pl.col("loss").is_finite()
    return grads | loss


def attempt_table(listing: pl.DataFrame, steps: pl.DataFrame) -> pl.DataFrame:
    """`listing` (LISTING_COLUMNS) joined with what each attempt recorded (`steps`: the steps
    rows of every attempt, with `rank` and `attempt`): first/last step, rows, the first step with
    a NaN/Inf, the `cutoff` from which a later attempt supersedes it, and what was superseded."""
    cutoffs = (
        listing.join(
            steps.group_by("rank", "attempt").agg(pl.col("step").min().alias("first_step")),
            on=["rank", "attempt"],
            how="left",
        )
        .with_columns(_later_first_step())
        .select("rank", "attempt", "first_step", "cutoff")
    )
    marked = steps.join(cutoffs.select("rank", "attempt", "cutoff"), on=["rank", "attempt"], how="left").with_columns(
        (pl.col("cutoff").is_not_null() & (pl.col("step") >= pl.col("cutoff"))).alias("superseded")
    )
    gone = pl.col("step").filter(pl.col("superseded"))
    recorded = marked.group_by("rank", "attempt").agg(
        pl.col("step").max().alias("last_step"),
        pl.col("step").n_unique().alias("steps"),
        (~pl.col("superseded")).sum().cast(pl.Int64).alias("kept_steps"),
        gone.n_unique().cast(pl.Int64).alias("superseded_steps"),
        gone.min().alias("superseded_first"),
        gone.max().alias("superseded_last"),
        pl.col("step").filter(_bad_step()).min().alias("first_nonfinite_step"),
    )
    return (
        listing.join(cutoffs, on=["rank", "attempt"], how="left")
        .join(recorded, on=["rank", "attempt"], how="left")
        .with_columns(pl.col("steps", "kept_steps", "superseded_steps").fill_null(0))
        .sort("rank", "attempt")
    )


def keep(frame: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """The rows of `frame` (with `rank`, `attempt`, `step`) that no later attempt superseded."""
    return (
        frame.join(table.select("rank", "attempt", "cutoff"), on=["rank", "attempt"], how="left")
        .filter(pl.col("cutoff").is_null() | (pl.col("step") < pl.col("cutoff")))
        .drop("cutoff")
    )


def cutoff_of(table: pl.DataFrame, rank: int, attempt: int) -> int | None:
    row = table.filter((pl.col("rank") == rank) & (pl.col("attempt") == attempt))
    return row["cutoff"][0] if row.height else None


def attempt_at(table: pl.DataFrame, rank: int | None, step: int | None) -> int | None:
    """The attempt whose data the analysis holds for `step` of `rank`: the latest one that
    started at or before that step."""
    if rank is None or step is None or table.is_empty():
        return None
    rows = table.filter((pl.col("rank") == rank) & (pl.col("first_step") <= step))
    return rows["attempt"].max() if rows.height else None  # type: ignore[return-value]
