"""The aggregates every health rule works from, computed once per analysis.

`per_step` is the run-wide series (one row per step, ranks folded) and comes from the small
steps table. `per_param` is one streaming pass over the grads table, which can hold 100 M rows,
so it is the only thing computed over all of it; the rules that need grads at particular steps
filter the lazy frame down to those steps first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from ..load.run import RunData

STREAMING: Final = "streaming"


def finite(col: str | pl.Expr) -> pl.Expr:
    expr = pl.col(col) if isinstance(col, str) else col
    return expr.is_not_null() & expr.is_finite()


@dataclass
class HealthSeries:
    # step, loss, loss_finite, grad_norm, nonfinite, grad_bad, skipped, scale, preclip_norm, clip_max,
    # first_bad_rank, first_bad_loss_rank
    per_step: pl.DataFrame
    per_param: pl.DataFrame  # params joined with their whole-run gradient and update aggregates

    @property
    def healthy(self) -> pl.DataFrame:
        """Steps usable as history for the magnitude rules: applied, everything finite (a grad
        norm that was not logged, as in a loss-only TensorBoard log, is no sign of trouble)."""
        grad_ok = finite("grad_norm") | pl.col("grad_norm").is_null()
        return self.per_step.filter(~pl.col("skipped") & pl.col("loss_finite") & grad_ok & ~pl.col("grad_bad"))


def _per_step_from_steps(steps: pl.DataFrame, sharded: bool) -> pl.DataFrame:
    bad_grad = (pl.col("nonfinite").fill_null(0) > 0) | (
        pl.col("grad_norm").is_not_null() & ~pl.col("grad_norm").is_finite()
    )
    # Replicated data-parallel ranks hold the same gradients, so the global norm is any rank's;
    # shards combine by L2.
    grad_norm = (
        pl.col("grad_norm").cast(pl.Float64).pow(2).sum().sqrt()
        if sharded
        else pl.col("grad_norm").cast(pl.Float64).sort_by("rank").first()
    )
    return (
        steps.group_by("step")
        .agg(
            pl.col("loss").cast(pl.Float64).mean().alias("loss"),
            finite("loss").all().alias("loss_finite"),
            pl.col("loss").is_not_null().any().alias("has_loss"),
            grad_norm.alias("grad_norm"),
            pl.col("nonfinite").fill_null(0).max().alias("nonfinite"),
            pl.col("skipped").fill_null(False).any().alias("skipped"),
            pl.col("scale").cast(pl.Float64).min().alias("scale"),
            # clip_grad_norm_ returns the norm over all ranks' shards already: any rank's will do
            pl.col("preclip_norm").cast(pl.Float64).sort_by("rank").drop_nulls().first().alias("preclip_norm"),
            pl.col("clip_max").cast(pl.Float64).sort_by("rank").drop_nulls().first().alias("clip_max"),
            pl.col("rank").filter(bad_grad).sort_by(pl.col("time").filter(bad_grad)).first().alias("first_bad_rank"),
            pl.col("rank").filter(~finite("loss") & pl.col("loss").is_not_null()).min().alias("first_bad_loss_rank"),
        )
        .with_columns(pl.when(pl.col("has_loss")).then(pl.col("loss_finite")).otherwise(True).alias("loss_finite"))
        .drop("has_loss")
        .sort("step")
    )


def _per_step_from_grads(grads: pl.LazyFrame) -> pl.DataFrame:
    """Without a steps table, the global series is rebuilt from the per-parameter rows."""
    return (
        grads.group_by("step")
        .agg(
            pl.col("norm").cast(pl.Float64).pow(2).sum().sqrt().alias("grad_norm"),
            bad_element().sum().cast(pl.Int64).alias("nonfinite"),
        )
        .collect(engine=STREAMING)
        .with_columns(
            pl.lit(None, pl.Float64).alias("loss"),
            pl.lit(True).alias("loss_finite"),
            pl.lit(False).alias("skipped"),
            pl.lit(None, pl.Float64).alias("scale"),
            pl.lit(None, pl.Float64).alias("preclip_norm"),
            pl.lit(None, pl.Float64).alias("clip_max"),
            pl.lit(None, pl.Int32).alias("first_bad_rank"),
            pl.lit(None, pl.Int32).alias("first_bad_loss_rank"),
        )
        .sort("step")
    )


def ratio_expr() -> pl.Expr:
    """|update| / |weight| per row (null where there was no update)."""
    return pl.col("update_norm").cast(pl.Float64) / pl.col("weight_norm").cast(pl.Float64)


def _per_param(run: RunData) -> pl.DataFrame:
    # Plain masked reductions only: they stream in bounded memory, unlike sort_by/filter chains.
    norm = pl.col("norm").cast(pl.Float64)
    ratio = ratio_expr()
    has_ratio = finite(ratio) & (ratio > 0)
    aggs = (
        run.grads.group_by("param_id")
        .agg(
            pl.len().alias("rows"),
            norm.is_not_null().sum().alias("grad_steps"),
            (norm == 0).sum().alias("zero_steps"),
            finite(norm).sum().alias("finite_steps"),
            bad_element().sum().alias("nonfinite_steps"),
            pl.when(finite(norm)).then(norm).max().alias("max_norm"),
            has_ratio.sum().alias("update_steps"),
            pl.when(has_ratio).then(ratio.log()).mean().exp().alias("update_ratio"),  # geometric mean
            pl.when(has_ratio).then(ratio).max().alias("max_update_ratio"),
        )
        .collect(engine=STREAMING)
    )
    # Ids that meta.json does not name (it is missing, damaged or truncated) are `param<id>`.
    return (
        run.params.join(aggs, on="param_id", how="full", coalesce=True)
        .with_columns(pl.coalesce("name", pl.format("param{}", "param_id")).alias("name"))
        .sort("order", nulls_last=True)
    )


def bad_element() -> pl.Expr:
    """A grads row whose gradient holds a NaN/Inf element. A finite gradient whose L2 norm
    overflows float32 has an infinite `norm` but a finite `absmax`: that is an exploding
    gradient, not a non-finite one."""
    return (pl.col("nonfinite").fill_null(0) > 0) | (pl.col("absmax").is_not_null() & ~finite("absmax"))


def _confirm_nonfinite(per_step: pl.DataFrame, grads: pl.LazyFrame) -> pl.DataFrame:
    """`grad_bad` per step. The steps table flags any parameter whose norm is not finite; the
    grads rows of just those flagged steps say whether an element really was NaN/Inf."""
    flagged = (pl.col("nonfinite") > 0) | (pl.col("grad_norm").is_not_null() & ~finite("grad_norm"))
    candidates = per_step.filter(flagged)["step"]
    if candidates.is_empty():
        return per_step.with_columns(pl.lit(False).alias("grad_bad"))
    confirmed = (
        grads.filter(pl.col("step").is_in(candidates.implode()))
        .group_by("step")
        .agg(bad_element().any().alias("confirmed"))
        .collect(engine=STREAMING)
    )
    return (
        per_step.join(confirmed, on="step", how="left")
        # steps without grads rows (grad_every > 1) keep the steps table's flag
        .with_columns((flagged & pl.col("confirmed").fill_null(True)).alias("grad_bad"))
        .drop("confirmed")
    )


def compute(run: RunData) -> HealthSeries:
    sharded = any(bool(m.get("grads_sharded")) for m in run.metas.values())
    # inputs other than a run directory (and older runs) may lack the clipping columns
    steps = run.steps.with_columns(
        pl.lit(None, pl.Float32).alias(c) for c in ("preclip_norm", "clip_max") if c not in run.steps.columns
    )
    per_step = _per_step_from_grads(run.grads) if steps.is_empty() else _per_step_from_steps(steps, sharded)
    return HealthSeries(_confirm_nonfinite(per_step, run.grads), _per_param(run))
