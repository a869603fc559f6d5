"""Numerical health: non-finite gradients and losses, and AMP loss-scale overflows."""

from __future__ import annotations

from typing import Any

import polars as pl

from ..findings import Finding
from ..load.run import RunData
from ..scalars import optional_int
from ..thresholds import Thresholds, threshold
from .attempts import blame
from .health_magnitude import onset_before
from .health_series import HealthSeries, bad_element

NAMES_SHOWN = threshold(
    "nonfinite-gradient.names_shown",
    10,
    "How many non-finite parameters the finding names (nearest the output first).",
    "tracemortem (report size)",
    low=1,
)
AMP_WINDOW = threshold(
    "amp-overflow.window",
    1000,
    "Steps per sliding window in which the share of skipped (overflow) steps is measured.",
    "Megatron-LM DynamicGradScaler (1,000-step window)",
    low=1,
)
AMP_MAX_FRACTION = threshold(
    "amp-overflow.max_fraction",
    0.01,
    "Warning when more than this share of the steps of any window were skipped; fewer skips are "
    "reported as info (a GradScaler calibrating its scale).",
    "Megatron-LM DynamicGradScaler (1% in a 1,000-step window)",
    high=1,
)
AMP_MIN_SCALE = threshold(
    "amp-overflow.min_scale",
    1.0,
    "Error when the loss scale falls to or below this value: the scaler has collapsed.",
    "Megatron-LM min_loss_scale",
)


def _last_healthy(series: HealthSeries, config: Thresholds, before: int) -> int | None:
    """The last step before `before` whose values were all finite and that came before the
    divergence leading to it (a finite step whose loss had already blown up was not healthy)."""
    onset = onset_before(series, config, before)
    limit = before if onset is None else min(before, onset)
    rows = series.per_step.filter(
        (pl.col("step") < limit) & ~pl.col("skipped") & pl.col("loss_finite") & ~pl.col("grad_bad")
    )
    return optional_int(rows["step"].max()) if rows.height else None


def _checkpoint_before(run: RunData, step: int | None) -> dict[str, Any] | None:
    """Newest checkpoint at or before `step` whose weights were finite when saved."""
    if step is None:
        return None
    bad_steps = set()
    if run.health.height:
        bad_steps = set(run.health.filter(pl.col("nonfinite") > 0)["step"].to_list())
    usable = [c for c in run.facts.get("checkpoints", []) if c["step"] <= step and c["step"] not in bad_steps]
    return max(usable, key=lambda c: c["step"]) if usable else None


def _recovery_hint(run: RunData, last_ok: int | None) -> tuple[dict[str, Any], str]:
    evidence: dict[str, Any] = {"last_healthy_step": last_ok}
    ckpt = _checkpoint_before(run, last_ok)
    snap = run.facts.get("snapshot")
    parts = []
    if ckpt:
        evidence["checkpoint"] = ckpt["path"]
        parts.append(f"resume from {ckpt['path']} (step {ckpt['step']})")
    if snap:
        evidence["snapshot"] = snap["path"]
        pre_update = (snap.get("info") or {}).get("pre_update") is True
        evidence["snapshot_pre_update"] = pre_update
        if pre_update:
            parts.append(
                f"replay the failing step from the snapshot in {snap['path']} "
                "(tracemortem replay RUN --model MODULE:FACTORY names the module where the NaN was born)"
            )
        else:  # written after the loop's own update: replaying it would start from the bad weights
            parts.append(
                f"the snapshot in {snap['path']} is not the state before the bad update, so do not replay from it"
            )
    return evidence, ("; ".join(parts) + ". ") if parts else ""


def nonfinite_gradient(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    # Skipped steps are the loss scaler doing its job (amp-overflow), not a divergence.
    bad = series.per_step.filter(~pl.col("skipped") & pl.col("grad_bad"))
    if bad.is_empty():
        return []
    first = bad.row(0, named=True)
    step = first["step"]
    offenders = (
        run.grads.filter(pl.col("step") == step)
        .filter(bad_element())
        .select("param_id", "nonfinite", "norm")
        .collect()
        .join(run.params.select("param_id", "name", "order"), on="param_id", how="left")
        .sort("order", "param_id", nulls_last=True)
    )
    names = [n if n is not None else f"param{p}" for n, p in zip(offenders["name"], offenders["param_id"])]
    shown = names[: config[NAMES_SHOWN]]
    last_ok = _last_healthy(series, config, step)
    evidence, hint = _recovery_hint(run, last_ok)
    evidence.update(
        first_step=step,
        grad_norm=first["grad_norm"],
        nonfinite_params=len(names) or first["nonfinite"],
        params_nearest_output=shown,
        nonfinite_steps=bad.height,
        **blame(run, first["first_bad_rank"], step),
    )
    where = f" in {shown[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "") if names else ""
    return [
        Finding(
            "nonfinite-gradient",
            "error",
            "non-finite gradients",
            f"gradients became NaN/Inf at step {step}{where}; the last healthy step was {last_ok}. "
            f"{bad.height} applied step(s) had non-finite gradients.",
            step=step,
            rank=first["first_bad_rank"],
            subject=shown[0] if shown else None,
            evidence=evidence,
            suggestion=hint + "The parameter nearest the output is where the NaN/Inf first appears in backward: "
            "check the loss and the layer feeding it (log/exp/div of unbounded values), lower the learning "
            "rate, add gradient clipping, or run with torch.autograd.detect_anomaly()"
            + (" from the snapshot." if evidence.get("snapshot_pre_update") else "."),
        )
    ]


def nonfinite_loss(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    bad = series.per_step.filter(~pl.col("loss_finite"))
    if bad.is_empty():
        return []
    first = bad.row(0, named=True)
    step = first["step"]
    grad_bad = series.per_step.filter(~pl.col("skipped") & pl.col("grad_bad"))
    grads_first = optional_int(grad_bad["step"].min()) if grad_bad.height else None
    last_ok = _last_healthy(series, config, step)
    evidence, hint = _recovery_hint(run, last_ok)
    evidence.update(
        first_step=step,
        loss=first["loss"],
        nonfinite_loss_steps=bad.height,
        first_nonfinite_grad_step=grads_first,
        grads_went_first=grads_first is not None and grads_first < step,
        **blame(run, first["first_bad_loss_rank"], step),
    )
    cause = (
        f"gradients went non-finite first, at step {grads_first}, so the weights were already corrupt"
        if evidence["grads_went_first"]
        else "the loss itself is the first non-finite value"
    )
    return [
        Finding(
            "nonfinite-loss",
            "error",
            "non-finite loss",
            f"the loss became NaN/Inf at step {step} ({cause}); the last healthy step was {last_ok}.",
            step=step,
            rank=first["first_bad_loss_rank"],
            evidence=evidence,
            suggestion=hint + "Look for log(0), division by zero or overflowing exp in the loss; compute the "
            "loss in float32 under autocast; lower the learning rate if the weights diverged first.",
        )
    ]


def amp_overflow(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    steps = series.per_step
    if steps.is_empty() or not steps["skipped"].any():
        return []
    window = max(1, min(int(config[AMP_WINDOW]), steps.height))
    skipped = pl.col("skipped").cast(pl.Int64)
    stats = steps.select(
        skipped.sum().alias("count"),
        pl.col("step").filter(pl.col("skipped")).first().alias("first"),
        (skipped.rolling_sum(window, min_samples=1).max() / window).alias("worst_fraction"),
        # longest run of consecutive skipped steps
        skipped.rle().struct.field("len").filter(skipped.rle().struct.field("value") == 1).max().alias("longest"),
        pl.col("scale").drop_nulls().first().alias("scale_first"),
        pl.col("scale").min().alias("scale_min"),
        pl.col("scale").drop_nulls().last().alias("scale_last"),
        pl.col("step").sort_by("scale").first().alias("scale_min_step"),
    ).row(0, named=True)
    collapsed = stats["scale_min"] is not None and stats["scale_min"] <= config[AMP_MIN_SCALE]
    if collapsed:
        severity = "error"
    elif stats["worst_fraction"] > config[AMP_MAX_FRACTION]:
        severity = "warning"
    else:
        severity = "info"
    evidence = {
        "skipped_steps": stats["count"],
        "steps": steps.height,
        "first_skipped_step": stats["first"],
        "longest_skipped_run": stats["longest"],
        "worst_window_fraction": round(stats["worst_fraction"], 4),
        "window": window,
        "scale_first": stats["scale_first"],
        "scale_min": stats["scale_min"],
        "scale_last": stats["scale_last"],
    }
    msg = (
        f"{stats['count']} of {steps.height} optimizer steps were skipped because the scaled gradients "
        f"overflowed (up to {stats['worst_fraction']:.1%} of a {window}-step window)"
    )
    if collapsed:
        msg += f"; the loss scale collapsed to {stats['scale_min']:g} at step {stats['scale_min_step']}"
    return [
        Finding(
            "amp-overflow",
            severity,
            "AMP loss-scale overflows",
            msg + ".",
            step=stats["scale_min_step"] if collapsed else stats["first"],
            evidence=evidence,
            suggestion="A few skips while GradScaler calibrates are normal. Many skips or a collapsing scale "
            "mean the unscaled gradients themselves overflow fp16: find the overflowing layer (a non-finite "
            "gradient in float32 would show it), keep softmax/norm/loss in float32, lower the learning rate, "
            "or switch to bfloat16.",
        )
    ]
