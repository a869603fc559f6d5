"""Gradient and loss magnitude: exploding and vanishing gradients, dead and unused parameters,
update ratios and loss spikes. Series rules are polars rolling expressions over the per-step
table; per-parameter rules read the one streaming aggregate or a few filtered steps of grads."""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from ..findings import Finding
from ..load.run import RunData
from ..scalars import as_float, as_int, optional_float, optional_int
from ..thresholds import Thresholds, threshold
from .health_growth import GrowthLimits, divergence, positive_ratio
from .health_series import STREAMING, HealthSeries, finite, ratio_expr

# --- thresholds -----------------------------------------------------------------------------

SPIKE_WINDOW = threshold(
    "exploding-gradient.window",
    128,
    "Previous finite steps whose mean and std the grad norm is compared with.",
    "OLMo-core SkipStepOptimizer (rolling_interval_length=128)",
    low=1,
)
SPIKE_SIGMA = threshold(
    "exploding-gradient.sigma",
    6.0,
    "Spike when grad norm > mean + sigma x std of the window.",
    "OLMo-core SkipStepOptimizer (sigma_factor=6)",
)
SPIKE_MIN_HISTORY = threshold(
    "exploding-gradient.min_history",
    64,
    "Finite steps of history needed before the sigma test applies.",
    "OLMo-core SkipStepOptimizer (64 prior finite values)",
)
SPIKE_MIN_JUMP = threshold(
    "exploding-gradient.min_jump",
    2.0,
    "A sigma spike must also be this many times the window mean (keeps smooth, "
    "low-noise runs quiet where std is tiny).",
    "tracemortem",
)
EARLY_STEPS = threshold(
    "exploding-gradient.early_steps",
    100,
    "Steps whose maximum grad norm is the baseline of the early-max test.",
    "Megatron-LM is_unexpectedly_large (first 100 steps)",
    low=1,
)
EARLY_FACTOR = threshold(
    "exploding-gradient.early_factor",
    10.0,
    "Error when the grad norm reaches this many times the early maximum.",
    "Megatron-LM is_unexpectedly_large (10x)",
)
BASELINE_STEPS = threshold(
    "exploding-gradient.baseline_steps",
    3,
    "First healthy steps whose median grad norm is the baseline of the surge and growth tests.",
    "tracemortem",
    low=1,
)
SURGE_FACTOR = threshold(
    "exploding-gradient.surge_factor",
    100.0,
    "Surge when the grad norm reaches this many times the baseline (no history needed).",
    "tracemortem (Megatron-LM's 10x early maximum, with a larger factor against fewer steps)",
)
GROWTH_WINDOW = threshold(
    "exploding-gradient.growth_window",
    5,
    "Steps over which sustained geometric growth is measured.",
    "tracemortem",
    low=1,
)
GROWTH_FACTOR = threshold(
    "exploding-gradient.growth_factor",
    4.0,
    "Growth when the grad norm rose this many times over growth_window steps ...",
    "tracemortem",
)
GROWTH_FLOOR = threshold(
    "exploding-gradient.growth_floor",
    10.0,
    "... staying at least this many times the baseline on every one of them.",
    "tracemortem",
)
HORIZON = threshold(
    "exploding-gradient.horizon",
    50,
    "A spike followed by non-finite values within this many steps is an error.",
    "tracemortem",
)
LEADERS = threshold(
    "exploding-gradient.leaders",
    5,
    "Parameters named as leading a spike, by spike score norm_t / mean(norm before t).",
    "SPAM gradient spike score (per parameter instead of per coordinate)",
)

VANISH_FLOOR = threshold(
    "vanishing-gradient.floor",
    1e-7,
    "Absolute floor for a parameter's gradient RMS (norm / sqrt(numel)).",
    "smdebug VanishingGradient (mean |g| < 1e-7; RMS >= mean|g|)",
)
VANISH_RATIO = threshold(
    "vanishing-gradient.ratio",
    1e-3,
    "...and below this fraction of the median parameter's RMS.",
    "smdebug VanishingGradient, relative form",
)
VANISH_WINDOW = threshold(
    "vanishing-gradient.window",
    50,
    "Consecutive recorded steps (the last healthy ones) on all of which both must hold.",
    "smdebug VanishingGradient, relative form (50 consecutive steps)",
    low=1,
)

DEAD_MIN_STEPS = threshold(
    "dead-parameter.min_steps",
    3,
    "Recorded steps, all with an exactly zero gradient, before a parameter is dead.",
    "smdebug AllZero (patience 3)",
)

RATIO_MAX = threshold(
    "update-ratio.max",
    10.0,
    "Warning when |update|/|weight| of a weight matrix exceeds this on any step.",
    "smdebug WeightUpdateRatio (large_threshold=10)",
)
RATIO_MIN = threshold(
    "update-ratio.min",
    1e-8,
    "Warning when the typical ratio of a weight matrix is below this.",
    "smdebug WeightUpdateRatio (small_threshold=1e-8)",
)
BAND_LOW = threshold(
    "update-ratio.band_low",
    1e-4,
    "Info when the typical ratio of a weight matrix is below this.",
    "the common 1e-3 update/weight heuristic (informational band)",
)
BAND_HIGH = threshold(
    "update-ratio.band_high",
    1e-1,
    "Info when the typical ratio of a weight matrix is above this.",
    "the common 1e-3 update/weight heuristic (informational band)",
)
RATIO_MIN_STEPS = threshold(
    "update-ratio.min_steps",
    100,
    "Steps with an update needed for the band test.",
    "the common 1e-3 update/weight heuristic (over 100 steps)",
)

LOSS_WINDOW = threshold(
    "loss-spike.window",
    128,
    "Previous finite steps the log loss is compared with.",
    "robust z of the log loss over 128 steps (OLMo-style), z > 6",
    low=1,
)
LOSS_Z = threshold(
    "loss-spike.z",
    6.0,
    "Spike when the robust z of log loss exceeds this.",
    "robust z of the log loss over 128 steps (OLMo-style), z > 6",
)
LOSS_MIN_HISTORY = threshold(
    "loss-spike.min_history", 32, "Finite steps of history before the test applies.", "tracemortem"
)
LOSS_MIN_RATIO = threshold(
    "loss-spike.min_ratio", 1.5, "A spike must also be this many times the window median loss.", "tracemortem"
)
LOSS_EARLY_FACTOR = threshold(
    "loss-spike.early_factor",
    10.0,
    "Error when the loss reaches this many times the max over the first early_steps.",
    "Megatron-LM (10x the early maximum)",
)
LOSS_BASELINE_STEPS = threshold(
    "loss-spike.baseline_steps",
    3,
    "First healthy steps whose median loss is the baseline of the surge and growth tests.",
    "tracemortem",
    low=1,
)
LOSS_SURGE = threshold(
    "loss-spike.surge_factor",
    10.0,
    "Surge when the loss reaches this many times the baseline (no history needed).",
    "Megatron-LM (10x the early maximum)",
)
LOSS_GROWTH_WINDOW = threshold(
    "loss-spike.growth_window",
    5,
    "Steps over which sustained geometric growth of the loss is measured.",
    "tracemortem",
    low=1,
)
LOSS_GROWTH = threshold(
    "loss-spike.growth_factor",
    4.0,
    "Growth when the loss rose this many times over growth_window steps ...",
    "tracemortem",
)
LOSS_GROWTH_FLOOR = threshold(
    "loss-spike.growth_floor",
    3.0,
    "... staying at least this many times the baseline on every one of them.",
    "tracemortem",
)
LOSS_CO_SPIKE = threshold(
    "loss-spike.co_spike_steps",
    2,
    "A gradient spike within this many steps of a loss spike is reported with it.",
    "robust z of the log loss over 128 steps (OLMo-style), z > 6",
)


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _grouped(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Parameters grouped by their module, in the order given."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(_module(row["name"] or f"param{row['param_id']}"), []).append(row)
    return out


def _num(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


# --- exploding gradients --------------------------------------------------------------------


def grad_spikes(series: HealthSeries, config: Thresholds) -> pl.DataFrame:
    """Healthy steps with their spike tests: `sigma` (OLMo), `early` (Megatron), and the early
    divergence tests `surge` and `growth` against the run's first steps. Where clip_grad_norm_
    ran, its pre-clip norm is the one tested: a clipped explosion is a flat line at the cap."""
    window, history = int(config[SPIKE_WINDOW]), int(config[SPIKE_MIN_HISTORY])
    history = min(history, window)  # more history than one window holds: the whole window
    early_n = int(config[EARLY_STEPS])
    g = pl.col("grad_norm")
    frame = (
        series.healthy.select(
            "step",
            pl.coalesce("preclip_norm", "grad_norm").cast(pl.Float64).alias("grad_norm"),
            pl.col("preclip_norm").is_not_null().alias("preclip"),
        )
        .filter(g.is_not_null())  # other tools' logs may hold the loss without a grad norm
        .with_row_index("i")
    )
    tests = ("sigma", "early", "surge", "growth", "spike")
    if frame.height == 0:
        return frame.with_columns(pl.lit(False).alias(c) for c in tests)
    early_max = as_float(frame.head(early_n)["grad_norm"].max())
    limits = GrowthLimits(
        baseline_steps=int(config[BASELINE_STEPS]),
        surge=config[SURGE_FACTOR],
        window=int(config[GROWTH_WINDOW]),
        floor=config[GROWTH_FLOOR],
        growth=config[GROWTH_FACTOR],
    )
    return (
        divergence(frame, "grad_norm", limits)
        .with_columns(
            g.rolling_mean(window, min_samples=history).shift(1).alias("mean"),
            g.rolling_std(window, min_samples=history).shift(1).alias("std"),
            pl.lit(early_max).alias("early_max"),
        )
        .with_columns(
            ((g > pl.col("mean") + config[SPIKE_SIGMA] * pl.col("std")) & (g > config[SPIKE_MIN_JUMP] * pl.col("mean")))
            .fill_null(False)
            .alias("sigma"),
            ((pl.col("i") >= early_n) & (positive_ratio(g, pl.col("early_max")) >= config[EARLY_FACTOR]))
            .fill_null(False)
            .alias("early"),
        )
        .with_columns(pl.any_horizontal("sigma", "early", "surge", "growth").alias("spike"))
    )


def onset_before(series: HealthSeries, config: Thresholds, before: int) -> int | None:
    """Where the divergence that ran into the non-finite step `before` began: the earliest flagged
    gradient or loss step within `horizon` steps before it (a growth window from its first step).
    Conservative on purpose: a run that blew up and seemed to recover inside the horizon was not
    healthy in between."""
    near = (pl.col("step") < before) & (pl.col("step") >= before - int(config[HORIZON]))
    starts = [
        divergence_onset(frame.filter(near)) for frame in (grad_spikes(series, config), loss_spikes(series, config))
    ]
    found = [s for s in starts if s is not None]
    return min(found) if found else None


def divergence_onset(spikes: pl.DataFrame) -> int | None:
    """First step of the first flagged episode (rows of `grad_spikes` or `loss_spikes`): a growth
    window's first step, else the spike's."""
    flagged = spikes.filter("spike")
    if flagged.is_empty():
        return None
    row = flagged.row(0, named=True)
    start = row["growth_from"] if row["growth"] and row["growth_from"] is not None else row["step"]
    return int(start)


def _leaders(run: RunData, step: int, n: int) -> list[dict[str, Any]]:
    """Spike score per parameter at `step`: its norm there over its mean norm before it."""
    norm = pl.col("norm").cast(pl.Float64)
    scores = (
        run.grads.filter(pl.col("step") <= step)
        .group_by("param_id")
        .agg(
            norm.filter(pl.col("step") == step).first().alias("norm"),
            norm.filter((pl.col("step") < step) & finite(norm)).mean().alias("before"),
        )
        .filter(finite("norm") & (pl.col("before") > 0))
        .with_columns((pl.col("norm") / pl.col("before")).alias("score"))
        .sort("score", descending=True)
        .head(n)
        .collect(engine=STREAMING)
        .join(run.params.select("param_id", "name"), on="param_id", how="left")
    )
    return [
        {"name": r["name"] or f"param{r['param_id']}", "score": _num(r["score"]), "norm": _num(r["norm"])}
        for r in scores.iter_rows(named=True)
    ]


def _spike_reason(row: dict[str, Any], config: Thresholds) -> str:
    """Say which test flagged the first spike, with the numbers that test used."""
    if row["sigma"]:
        return (
            f"more than {_num(config[SPIKE_SIGMA])} std above the mean {_num(row['mean'])} "
            f"of the previous {int(config[SPIKE_WINDOW])} steps"
        )
    if row["early"]:
        return f"{_num(row['grad_norm'] / row['early_max'])}x the maximum {_num(row['early_max'])} of the first {int(config[EARLY_STEPS])} steps"
    if row["surge"]:
        return (
            f"{_num(row['to_baseline'])}x the median {_num(row['baseline'])} of the first "
            f"{int(config[BASELINE_STEPS])} steps"
        )
    return (
        f"{_num(row['growth_ratio'])}x in {int(config[GROWTH_WINDOW])} steps since step {row['growth_from']}, "
        f"each at least {_num(config[GROWTH_FLOOR])}x the median of the first {int(config[BASELINE_STEPS])} steps"
    )


def exploding_gradient(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    spikes = grad_spikes(series, config).filter("spike")
    if spikes.is_empty():
        return []
    first = spikes.row(0, named=True)
    step = first["step"]
    episodes = spikes.select((pl.col("i").diff().fill_null(2) > 1).sum()).item()
    bad = series.per_step.filter(~pl.col("skipped") & (pl.col("grad_bad") | ~pl.col("loss_finite")))
    nonfinite_after = optional_int(bad.filter(pl.col("step") >= step)["step"].min()) if bad.height else None
    leads_to_nan = nonfinite_after is not None and nonfinite_after - step <= config[HORIZON]
    severe = bool(spikes["early"].any() or spikes["surge"].any() or spikes["growth"].any() or leads_to_nan)
    peak = spikes.sort("grad_norm", descending=True).row(0, named=True)
    kinds = [k for k in ("sigma", "early", "surge", "growth") if spikes[k].any()]
    leaders = _leaders(run, step, int(config[LEADERS]))
    evidence = {
        "first_spike_step": step,
        "onset_step": divergence_onset(spikes),
        "grad_norm": _num(first["grad_norm"]),
        "baseline": _num(first["baseline"]),
        "window_mean": _num(first["mean"]),
        "window_std": _num(first["std"]),
        "early_max": _num(first["early_max"]),
        "spike_steps": spikes.height,
        "episodes": episodes,
        "peak_step": peak["step"],
        "peak_grad_norm": _num(peak["grad_norm"]),
        "tests": kinds,
        "before_clipping": bool(spikes["preclip"].any()),
        "first_nonfinite_step": nonfinite_after,
        "leaders": leaders,
    }
    led = f"; led by {leaders[0]['name']} ({leaders[0]['score']}x its own mean)" if leaders else ""
    tail = f", and values went non-finite at step {nonfinite_after}" if leads_to_nan else ""
    return [
        Finding(
            "exploding-gradient",
            "error" if severe else "warning",
            "exploding gradient norm",
            f"the global gradient norm{' (before clipping)' if first['preclip'] else ''} spiked at step {step} "
            f"to {_num(first['grad_norm'])} "
            f"({_spike_reason(first, config)}){led}; "
            f"{spikes.height} spike step(s) in {episodes} episode(s), peak {_num(peak['grad_norm'])} at step "
            f"{peak['step']}{tail}.",
            step=step,
            subject=leaders[0]["name"] if leaders else None,
            evidence=evidence,
            suggestion="Lower the learning rate (or lengthen warmup), clip gradients (clip_grad_norm_ to about 1.0), "
            "and check the leading parameters: normalization gains and the output layer are the usual offenders.",
        )
    ]


# --- vanishing gradients --------------------------------------------------------------------


def _grad_every(run: RunData) -> int:
    for meta in run.metas.values():
        for holder in (meta, meta.get("recorder") or {}, meta.get("settings") or {}):
            every = holder.get("grad_every") if isinstance(holder, dict) else None
            if isinstance(every, int) and every > 0:
                return every
    return 1


def vanishing_gradient(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    window = int(config[VANISH_WINDOW])
    healthy = series.healthy["step"]
    if healthy.len() < window:
        return []
    lo = optional_int(healthy.tail(window * _grad_every(run)).min())
    hi = optional_int(healthy.max())
    params = run.params.filter(pl.col("numel") > 0).select("param_id", "name", "order", "numel")
    rms = pl.col("norm").cast(pl.Float64) / pl.col("numel").cast(pl.Float64).sqrt()
    per = (
        run.grads.filter(pl.col("step").is_between(lo, hi) & pl.col("step").is_in(healthy.implode()))
        .join(params.lazy(), on="param_id")
        .group_by("param_id")
        .agg(pl.len().alias("n"), rms.max().alias("max_rms"), rms.median().alias("rms"))
        .collect()
        .join(params, on="param_id")
        .filter(pl.col("max_rms") > 0)  # exactly zero is dead-parameter's case
        .sort("order", descending=True)  # input side first
    )
    if per.height < 2:
        return []
    need = min(window, as_int(per["n"].max()))
    median = optional_float(per["rms"].median())
    low = per.filter(
        (pl.col("n") >= need)
        & (pl.col("max_rms") < config[VANISH_FLOOR])
        & (pl.col("rms") < config[VANISH_RATIO] * median)
    )
    if low.is_empty():
        return []
    third = max(1, per.height // 3)
    depth = {
        "rms_input_side": _num(optional_float(per.head(third)["rms"].median())),
        "rms_output_side": _num(optional_float(per.tail(third)["rms"].median())),
        "rms_by_depth": [
            [r["name"], _num(r["rms"], 3)] for r in per.gather_every(max(1, per.height // 12)).iter_rows(named=True)
        ],
    }
    names = low["name"].to_list()
    input_side = set(per.head(third)["name"].to_list())
    where = "the layers nearest the input" if all(n in input_side for n in names) else "some layers"
    return [
        Finding(
            "vanishing-gradient",
            "warning",
            "vanishing gradients",
            f"{len(names)} parameter(s) in {where} had gradient RMS below {config[VANISH_FLOOR]:g} and under "
            f"{config[VANISH_RATIO]:g}x the median parameter ({_num(median)}) on each of the last {need} recorded "
            f"steps (steps {lo}..{hi}), e.g. {names[0]} at {_num(low['rms'][0])}.",
            step=lo,
            subject=names[0],
            evidence={
                "params": names[:20],
                "params_count": len(names),
                "median_rms": _num(median),
                "worst_rms": _num(optional_float(low["rms"].min())),
                "steps": [lo, hi],
                **depth,
            },
            suggestion="These layers barely learn. Use ReLU/GELU instead of saturating sigmoid/tanh, add "
            "normalization or residual connections, or use a depth-aware initialization (Kaiming/Xavier).",
        )
    ]


# --- dead and unused parameters -------------------------------------------------------------


def _param_findings(
    rule: str, rows: list[dict[str, Any]], title: str, what: str, suggestion: str, extra: dict[str, Any]
) -> list[Finding]:
    out = []
    for module, members in _grouped(rows).items():
        names = [m["name"] for m in members]
        out.append(
            Finding(
                rule,
                "warning",
                title,
                f"{', '.join(names)}: {what}.",
                subject=module,
                evidence={"params": names, "numel": sum(m["numel"] or 0 for m in members), **extra},
                suggestion=suggestion,
            )
        )
    return out


def dead_and_unused(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    per = series.per_param
    if "grad_steps" not in per.columns or not (per["max_norm"].fill_null(0) > 0).any():
        return []  # no gradient recorded at all: nothing to compare with
    recorded = as_int(per["grad_steps"].max())
    # Non-finite steps (a later divergence) say nothing about whether the path is connected.
    dead = per.filter(
        (pl.col("finite_steps") >= config[DEAD_MIN_STEPS]) & (pl.col("zero_steps") == pl.col("finite_steps"))
    )
    unused = per.filter(
        pl.col("requires_grad").fill_null(True)
        & (pl.col("grad_steps").fill_null(0) == 0)
        & pl.col("name").is_not_null()
    )
    return _param_findings(
        "dead-parameter",
        dead.to_dicts(),
        "gradient always exactly zero",
        f"gradient exactly zero on every recorded step ({recorded}) while other parameters learn",
        "Something multiplies this path by zero or blocks it: a zeroed or masked branch, a dead ReLU, "
        "a .detach() or torch.no_grad() on the way, or a gate stuck at 0.",
        {"recorded_steps": recorded},
    ) + _param_findings(
        "unused-parameter",
        unused.to_dicts(),
        "parameter never received a gradient",
        f"requires grad but never got one in {recorded} recorded steps",
        "It is not on the path from the loss: an unused head or layer, or a branch never taken. Remove it, "
        "set requires_grad=False, or (with DDP) expect find_unused_parameters overhead.",
        {"recorded_steps": recorded},
    )


# --- update ratio ---------------------------------------------------------------------------


def update_ratio(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    per = series.per_param
    if "update_steps" not in per.columns:
        return []
    # Weight matrices only: biases and gains start at 0/1, where the ratio says little.
    mats = per.filter(pl.col("shape").str.contains(",") & (pl.col("update_steps") > 0))
    out = []
    high = mats.filter(pl.col("max_update_ratio") > config[RATIO_MAX])
    if high.height:
        worst = high.sort("max_update_ratio", descending=True).row(0, named=True)
        worst["max_update_step"] = (  # few rows pass the filter, so this pass stays small
            run.grads.filter(
                (pl.col("param_id") == worst["param_id"]) & finite(ratio_expr()) & (ratio_expr() > config[RATIO_MAX])
            )
            .select(pl.col("step").sort_by(ratio_expr()).last())
            .collect(engine=STREAMING)
            .item()
        )
        out.append(
            Finding(
                "update-ratio",
                "warning",
                "update larger than the weights",
                f"{high.height} weight matrix(es) had an update |dθ|/|θ| above {config[RATIO_MAX]:g}, up to "
                f"{_num(worst['max_update_ratio'])} in {worst['name']} at step {worst['max_update_step']}.",
                step=worst["max_update_step"],
                subject=worst["name"],
                evidence={"params": high["name"].to_list()[:20], "max_ratio": _num(worst["max_update_ratio"])},
                suggestion="One step rewrote the weights: lower the learning rate, clip gradients, or check for a "
                "bad batch at that step.",
            )
        )
    typical = mats.filter(pl.col("update_steps") >= config[RATIO_MIN_STEPS])
    stuck = typical.filter(pl.col("update_ratio") < config[RATIO_MIN])
    if stuck.height:
        out.append(
            Finding(
                "update-ratio",
                "warning",
                "weights barely change",
                f"{stuck.height} weight matrix(es) have a typical |dθ|/|θ| below {config[RATIO_MIN]:g}: "
                f"{', '.join(stuck['name'].to_list()[:5])}.",
                subject=stuck["name"][0],
                evidence={
                    "params": stuck["name"].to_list()[:20],
                    "ratios": [_num(v) for v in stuck["update_ratio"].to_list()[:20]],
                },
                suggestion="Check that these parameters are in the optimizer's param groups with a non-zero learning rate.",
            )
        )
    band = typical.filter(
        (pl.col("update_ratio") >= config[RATIO_MIN])
        & ((pl.col("update_ratio") < config[BAND_LOW]) | (pl.col("update_ratio") > config[BAND_HIGH]))
    )
    if band.height:
        out.append(
            Finding(
                "update-ratio",
                "info",
                "update ratio outside the usual band",
                f"{band.height} weight matrix(es) have a typical |dθ|/|θ| outside [{config[BAND_LOW]:g}, "
                f"{config[BAND_HIGH]:g}] (about 1e-3 is common): "
                + ", ".join(
                    f"{n} {_num(v, 2)}" for n, v in zip(band["name"].to_list()[:5], band["update_ratio"].to_list()[:5])
                )
                + ".",
                subject=band["name"][0],
                evidence={
                    "params": band["name"].to_list()[:20],
                    "ratios": [_num(v) for v in band["update_ratio"].to_list()[:20]],
                },
                suggestion="A heuristic, not a fault: well above the band the learning rate may be too high for these "
                "layers, well below it they learn slowly.",
            )
        )
    return out


# --- loss spikes ----------------------------------------------------------------------------


def loss_spikes(series: HealthSeries, config: Thresholds) -> pl.DataFrame:
    """Healthy steps with a loss, and their tests: `robust` (z of log loss over the window),
    `early` (the early maximum), `surge` and `growth` (against the first steps); `spike` = any."""
    rows = series.healthy.filter(pl.col("loss").is_not_null()).select("step", "loss")
    positive = bool((rows["loss"] > 0).all())  # log needs positive losses; else raw values
    x = pl.col("loss").log() if positive else pl.col("loss")
    window, history = int(config[LOSS_WINDOW]), int(config[LOSS_MIN_HISTORY])
    history = min(history, window)  # more history than one window holds: the whole window
    early_n = int(config[EARLY_STEPS])
    early_max = optional_float(rows.head(early_n)["loss"].max()) if rows.height else None
    limits = GrowthLimits(
        baseline_steps=int(config[LOSS_BASELINE_STEPS]),
        surge=config[LOSS_SURGE],
        window=int(config[LOSS_GROWTH_WINDOW]),
        floor=config[LOSS_GROWTH_FLOOR],
        growth=config[LOSS_GROWTH],
    )
    # Robust sigma from the window's interquartile range (IQR / 1.349 = sigma for a normal).
    q = {p: x.rolling_quantile(p, "linear", window, min_samples=history).shift(1) for p in (0.25, 0.5, 0.75)}
    median_loss = pl.col("median").exp() if positive else pl.col("median")
    early = (pl.col("i") >= early_n) & (positive_ratio(pl.col("loss"), pl.lit(early_max)) >= config[LOSS_EARLY_FACTOR])
    return (
        divergence(rows.with_row_index("i"), "loss", limits)
        .with_columns(q[0.5].alias("median"), ((q[0.75] - q[0.25]) / 1.349).alias("sigma"))
        .with_columns(
            positive_ratio(x - pl.col("median"), pl.col("sigma")).alias("z"),
            positive_ratio(pl.col("loss"), median_loss).alias("ratio"),
            pl.lit(early_max, pl.Float64).alias("early_max"),
        )
        .with_columns(
            ((pl.col("z") > config[LOSS_Z]) & (pl.col("ratio") >= config[LOSS_MIN_RATIO]))
            .fill_null(False)
            .alias("robust"),
            early.fill_null(False).alias("early"),
        )
        .with_columns(pl.any_horizontal("robust", "early", "surge", "growth").alias("spike"))
    )


def _loss_reason(row: dict[str, Any], config: Thresholds) -> str:
    if row["robust"]:
        return f"{_num(row['ratio'], 3)}x the window median, robust z {_num(row['z'], 3)}"
    if row["early"]:
        return f"{_num(row['loss'] / row['early_max'], 3)}x the maximum of the first {int(config[EARLY_STEPS])} steps"
    if row["surge"]:
        return f"{_num(row['to_baseline'], 3)}x the median {_num(row['baseline'])} of the first steps"
    return (
        f"{_num(row['growth_ratio'], 3)}x in {int(config[LOSS_GROWTH_WINDOW])} steps since step {row['growth_from']}, "
        f"each at least {_num(config[LOSS_GROWTH_FLOOR])}x the median of the first steps"
    )


def loss_spike(run: RunData, series: HealthSeries, config: Thresholds) -> list[Finding]:
    spikes = loss_spikes(series, config).filter("spike")
    if spikes.is_empty():
        return []
    grad = grad_spikes(series, config).filter("spike")["step"]
    near = int(config[LOSS_CO_SPIKE])
    co = [s for s in spikes["step"].to_list() if ((grad - s).abs() <= near).any()]
    first = spikes.row(0, named=True)
    severe = bool(spikes["early"].any() or spikes["surge"].any() or spikes["growth"].any())
    with_grad = f"; {len(co)} coincide with a gradient-norm spike (within {near} steps)" if co else ""
    tests = [k for k in ("robust", "early", "surge", "growth") if spikes[k].any()]
    return [
        Finding(
            "loss-spike",
            "error" if severe else "warning",
            "loss spike",
            f"the loss jumped to {_num(first['loss'])} at step {first['step']} ({_loss_reason(first, config)}); "
            f"{spikes.height} spike step(s){with_grad}.",
            step=first["step"],
            evidence={
                "loss": _num(first["loss"]),
                "z": _num(first["z"]),
                "ratio_to_median": _num(first["ratio"]),
                "baseline": _num(first["baseline"]),
                "tests": tests,
                "onset_step": divergence_onset(spikes),
                "spike_steps": spikes["step"].to_list()[:50],
                "spike_count": spikes.height,
                "with_grad_spike": co[:50],
                "early_max": _num(first["early_max"]),
            },
            suggestion="Inspect the batches at those steps (bad or duplicated data); if gradient spikes come with "
            "them, lower the learning rate or clip gradients.",
        )
    ]
