"""Performance findings from `Timing` (profiler traces) and the recorder's steps (docs/findings-performance.md).

`detect(timing, run, config)`: either input may be None. Rules: slow-step, slow-op,
dataloader-bound, host-sync, gpu-idle, launch-bound, straggler-rank, memory-growth
(docs/findings-performance.md). Every rule is quiet unless its evidence clears a declared
threshold; uniform training loops produce nothing at warning level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from ..findings import Finding
from ..load.run import RunData
from ..thresholds import Thresholds, threshold
from ..timing import Timing
from ..timing.steps import SYNC_CALLS, SYNC_OPS
from .ranks import per_cause, ranks_text

MAD_SIGMA = 1.4826  # MAD → σ for normal data, so k reads as "k robust standard deviations"

SLOW_STEP_K = threshold(
    "slow-step.mad_k",
    6.0,
    "A step is slow when it exceeds median + k·1.4826·MAD of its rank's steps.",
    "smdebug StepOutlier, made robust (median + 6·MAD)",
)
SLOW_STEP_RATIO = threshold(
    "slow-step.min_ratio",
    1.5,
    "…and is at least this many times the median step.",
    "TraceLens anomaly-capture tutorial keeps steps > 1.5 × median",
)
SLOW_STEP_EXCESS = threshold(
    "slow-step.min_excess_ms",
    20.0,
    "…and is at least this many ms longer than the median step (shorter delays are scheduler noise on a shared host).",
    "tracemortem default",
)
SLOW_STEP_MIN = threshold(
    "slow-step.min_steps", 5, "Steps a rank needs before outliers are judged.", "tracemortem default"
)
SLOW_STEP_WARMUP = threshold(
    "slow-step.warmup_steps",
    1,
    "First recorder steps of each rank left out of step-time outliers "
    "(start-up work; profiled steps already follow the profiler's warm-up).",
    "tracemortem default",
)
SLOW_STEP_MAX = threshold(
    "slow-step.max_findings",
    10,
    "At most this many slow steps of a rank are considered, and this many slow-step warnings reported in all "
    "(largest first; a step slow on several ranks for one cause is one warning); the rest are counted in one "
    "info finding.",
    "tracemortem default",
)
SLOW_STEP_EXPLAINED = threshold(
    "slow-step.explained_share",
    0.5,
    "A slow step gets its own warning when one op or step category took at least this share of its extra "
    "time; the others are one info finding about step-time jitter.",
    "tracemortem default",
)
SLOW_OP_RATIO = threshold(
    "slow-op.step_ratio",
    3.0,
    "An op is intermittently slow when its p95 time per step is this many times its median time per step.",
    "tracemortem (an intermittent slowdown: p95 > 3× median)",
)
SLOW_OP_SHARE = threshold(
    "slow-op.min_share",
    0.05,
    "…and its time above that bound is at least this share of the rank's profiled step time.",
    "tracemortem default",
    high=1,
)
SLOW_OP_RECUR = threshold(
    "slow-op.min_slow_steps",
    2,
    "…on at least this many steps (one slow instance is more often a scheduler stall than a property of the op).",
    "tracemortem default",
)
SLOW_OP_EXCESS = threshold(
    "slow-op.min_excess_ms",
    50.0,
    "…with at least this much time above the bound in total "
    "(a busy host deschedules a process for tens of ms at a time).",
    "tracemortem default",
)
TOP_OP_SHARE = threshold(
    "slow-op.top_share",
    0.25,
    "The top op by self time (GPU self time on GPU traces) is reported (info) "
    "when it takes at least this share of all ops' self time (GPU: kernel time) and as much of "
    "profiled step time.",
    "tracemortem default",
    high=1,
)
LOADER_WARN = threshold(
    "dataloader-bound.min_share",
    0.2,
    "Warning when DataLoader time is at least this share of step time.",
    "tracemortem default, after smdebug DataloaderBottleneck (data loading > 20% of step time)",
    high=1,
)
LOADER_INFO = threshold(
    "dataloader-bound.info_share",
    0.05,
    "Info when DataLoader time is at least this share of step time.",
    "tb_plugin recommendation rule 1 (DataLoader > 5% of step time)",
    high=1,
)
SYNC_SHARE = threshold(
    "host-sync.min_share",
    0.05,
    "Warning when host-synchronising calls take at least this share of step time on a GPU rank.",
    "tracemortem default (host-sync ops > 5% of step time)",
    high=1,
)
IDLE_SHARE = threshold(
    "gpu-idle.min_share",
    0.5,
    "Warning when the GPU is idle for at least this share of its active span (HTA temporal breakdown).",
    "tb_plugin recommendation rule 5 (GPU utilization < 50%)",
    high=1,
)
LAUNCH_SHORT = threshold(
    "launch-bound.short_share",
    0.5,
    "Share of GPU ops that run shorter than their CPU launch call.",
    "HTA get_cuda_kernel_launch_stats 'short kernels' (gpu_duration < cpu_duration); share is ours",
    high=1,
)
LAUNCH_IDLE = threshold(
    "launch-bound.min_idle_share", 0.3, "…together with at least this GPU idle share.", "tracemortem default", high=1
)
STRAGGLER_SKEW = threshold(
    "straggler-rank.skew",
    0.1,
    "A rank is behind on a step when its step time exceeds the cross-rank median by this fraction.",
    "tracemortem default (cross-rank skew (max − median)/median > 10%)",
)
STRAGGLER_STEPS = threshold(
    "straggler-rank.min_step_share",
    0.2,
    "…on at least this share of the steps all ranks recorded.",
    "tracemortem default (skew on ≥ 20% of steps)",
)
MEM_GROWTH = threshold(
    "memory-growth.min_growth",
    0.1,
    "Allocated CUDA memory grows by at least this fraction from the first "
    "to the last fifth of the run (after warm-up).",
    "tracemortem default (smdebug GPUMemoryIncrease uses +5 points of total memory)",
)
MEM_BYTES = threshold("memory-growth.min_bytes", 64 * 2**20, "…and by at least this many bytes.", "tracemortem default")
MEM_STEPS = threshold(
    "memory-growth.min_steps",
    50,
    "Steps with memory readings a rank needs before growth is judged.",
    "tracemortem default",
)


@dataclass(frozen=True)
class PerfInputs:
    """What every performance rule reads: the profiler's timing (None without traces), the
    per-step durations (profiled steps, else the recorder's), and the recorder's steps table."""

    timing: Timing | None
    durations: pl.DataFrame  # rank, session, step, seconds, profiled
    recorder_steps: pl.DataFrame  # empty without a run directory

    @classmethod
    def of(cls, timing: Timing | None, run: RunData | None, config: Thresholds) -> PerfInputs:
        steps = run.steps if run is not None else pl.DataFrame()
        return cls(timing, _step_durations(timing, run, config), steps)


PerfRule = Callable[[PerfInputs, Thresholds], list[Finding]]


def detect(timing: Timing | None, run: RunData | None, config: Thresholds) -> list[Finding]:
    inputs = PerfInputs.of(timing, run, config)
    return [finding for rule in RULES for finding in rule(inputs, config)]


def _step_durations(timing: Timing | None, run: RunData | None, config: Thresholds) -> pl.DataFrame:
    """`rank, session, step, seconds, profiled` from profiled steps, else from the recorder's
    `duration_s` (session 0, not profiled)."""
    if timing is not None and not timing.steps.is_empty():
        return timing.steps.select(
            "rank", "session", "step", (pl.col("duration_ns") / 1e9).alias("seconds"), pl.lit(True).alias("profiled")
        )
    if run is not None and {"rank", "step", "duration_s"} <= set(run.steps.columns):
        # The first recorded steps of a rank include one-off start-up work (allocator warm-up,
        # lazy initialisation, the recorder's own set-up): expected, not an outlier.
        warmup = int(config[SLOW_STEP_WARMUP])
        return (
            run.steps.select(
                "rank",
                pl.lit(0, pl.Int32).alias("session"),
                "step",
                pl.col("duration_s").alias("seconds"),
                pl.lit(False).alias("profiled"),
            )
            .drop_nulls("seconds")
            .filter(pl.col("step").rank("ordinal").over("rank") > warmup)
        )
    return pl.DataFrame(
        schema={"rank": pl.Int32, "session": pl.Int32, "step": pl.Int64, "seconds": pl.Float64, "profiled": pl.Boolean}
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _times(row: dict[str, Any]) -> float:
    """How many times its rank's median step a step took (inf for a zero median)."""
    return row["seconds"] / row["median"] if row["median"] > 0 else float("inf")


# ---------------------------------------------------------------- slow-step


def _scored_steps(durations: pl.DataFrame, config: Thresholds) -> pl.DataFrame:
    """Every step of the ranks with enough steps, with its rank's median, MAD, bound and `slow`."""
    k, ratio = config[SLOW_STEP_K], config[SLOW_STEP_RATIO]
    if "session" not in durations.columns:
        durations = durations.with_columns(pl.lit(0, pl.Int32).alias("session"))
    if "profiled" not in durations.columns:
        durations = durations.with_columns(pl.lit(False).alias("profiled"))
    stats = (
        durations.group_by("rank")
        .agg(pl.len().alias("n"), pl.col("seconds").median().alias("median"))
        .filter(pl.col("n") >= config[SLOW_STEP_MIN])
    )
    return (
        durations.join(stats, on="rank")
        .with_columns((pl.col("seconds") - pl.col("median")).abs().median().over("rank").alias("mad"))
        .with_columns(
            pl.max_horizontal(
                pl.col("median") + k * MAD_SIGMA * pl.col("mad"),
                pl.col("median") * ratio,
                pl.col("median") + config[SLOW_STEP_EXCESS] / 1e3,
            ).alias("bound")
        )
        .with_columns((pl.col("seconds") > pl.col("bound")).alias("slow"))
    )


def slow_steps(inputs: PerfInputs, config: Thresholds) -> list[Finding]:
    """A warning per slow step whose extra time one op or step category explains (one for a step
    slow on several ranks for the same cause; at most `slow-step.max_findings`, the rest counted
    in one info finding that names the worst); the slow steps nothing recorded explains (host
    contention looks like this: every op a little slower) are one info finding about jitter."""
    scored = _scored_steps(inputs.durations, config)
    slow = scored.filter(pl.col("slow")).with_columns((pl.col("seconds") - pl.col("median")).alias("excess"))
    if slow.is_empty():
        return []
    keys = ["rank", "session", "step"]
    if inputs.timing is not None and slow["profiled"].any():
        slow = slow.join(_explain(inputs.timing, scored, slow, config), on=keys, how="left")
    else:
        slow = slow.with_columns(pl.lit(None, pl.String).alias("subject"))
    slow = slow.sort("rank", "seconds", descending=[False, True], maintain_order=True).with_columns(
        pl.col("subject").is_not_null().alias("explained")
    )
    # Per rank the largest explained steps; those past the per-rank bound are neither listed nor jitter.
    explained = slow.filter(
        pl.col("explained") & (pl.int_range(pl.len()).over("rank", "explained") < config[SLOW_STEP_MAX])
    )
    listed = (
        explained.group_by("subject", "step")
        .agg(pl.col("excess").max().alias("worst_excess"))
        .sort("worst_excess", "step", descending=[True, False])
        .head(int(config[SLOW_STEP_MAX]))
    )
    shown = explained.join(listed.select("subject", "step"), on=["subject", "step"], how="semi", nulls_equal=True)
    rest = explained.join(listed.select("subject", "step"), on=["subject", "step"], how="anti", nulls_equal=True)
    warnings = per_cause(
        shown.with_columns(
            pl.lit("warning").alias("severity"),
            *[(pl.col(c) * 1e3).round(3).alias(f"{name}_ms") for c, name in _EVIDENCE_MS],
        ),
        [f"{name}_ms" for _, name in _EVIDENCE_MS],
        _slow_step_finding,
    )
    return warnings + _more_explained(rest) + _jitter_finding(slow.filter(~pl.col("explained")))


def _explain(timing: Timing, scored: pl.DataFrame, slow: pl.DataFrame, config: Thresholds) -> pl.DataFrame:
    """Per profiled slow step (`rank, session, step`): the ops (by self time) whose time in the step
    most exceeds a median normal step of the rank (`op_causes`, at most 3, largest first), the
    extra data-loading and host-sync time when over a quarter of the step's excess, and `subject`,
    the lead cause, where one of them took at least `explained_share` of the excess (else null).
    A share of the excess is capped at 1: an op can gain more than the step did when others ran faster."""
    keys = ["rank", "session", "step"]
    slow = slow.filter(pl.col("profiled")).select(*keys, "excess")
    normal = scored.filter(~pl.col("slow")).select(keys)
    ops = timing.step_ops.select(*keys, "name", "self_ns")
    in_slow = ops.join(slow, on=keys)
    # A median normal step of the rank, where a step without the op counts as 0 ns of it.
    baseline = (
        normal.join(in_slow.select("rank", "name").unique(), on="rank")
        .join(ops, on=[*keys, "name"], how="left")
        .group_by("rank", "name")
        .agg(pl.col("self_ns").fill_null(0).median().alias("base_ns"))
    )
    share = (pl.col("extra_s") / pl.col("excess")).clip(upper_bound=1.0).round(3)
    op_causes = (
        in_slow.join(baseline, on=["rank", "name"], how="left")
        .with_columns(((pl.col("self_ns") - pl.col("base_ns").fill_null(0)) / 1e9).alias("extra_s"))
        .filter(pl.col("extra_s") > 0)
        .sort("extra_s", descending=True, maintain_order=True)
        .group_by(keys, maintain_order=True)
        .agg(pl.struct("name", "extra_s").head(3).alias("op_causes"), share.first().alias("op_share"))
    )
    steps = timing.steps.select(*keys, *(column for column, _ in _CATEGORIES))
    base = steps.join(normal, on=keys, how="semi").group_by("rank").agg(pl.col(c for c, _ in _CATEGORIES).median())
    categories = (
        slow.join(steps, on=keys, how="left")
        .join(base, on="rank", how="left", suffix="_base")
        .select(
            *keys,
            *[_category_extra(column) for column, _ in _CATEGORIES],
            "excess",
        )
    )
    explained = pl.any_horizontal(
        pl.col("op_share") >= config[SLOW_STEP_EXPLAINED],
        *[
            (pl.col(f"{c}_extra_s") / pl.col("excess")).clip(upper_bound=1.0).round(3) >= config[SLOW_STEP_EXPLAINED]
            for c, _ in _CATEGORIES
        ],
    ).fill_null(False)
    first_category = pl.coalesce(
        *[pl.when(pl.col(f"{column}_extra_s").is_not_null()).then(pl.lit(label)) for column, label in _CATEGORIES]
    )
    return (
        categories.join(op_causes, on=keys, how="left")
        .with_columns(
            pl.when(explained)
            .then(pl.coalesce(first_category, pl.col("op_causes").list.first().struct.field("name")))
            .alias("subject")
        )
        .drop("excess", "op_share")
    )


def _category_extra(column: str) -> pl.Expr:
    """A slow step's extra seconds in a step category over the rank's median normal step, where
    that is over a quarter of the step's excess (else null)."""
    extra = (pl.col(column).fill_null(0) - pl.col(f"{column}_base").fill_null(0)) / 1e9
    return pl.when(extra > 0.25 * pl.col("excess")).then(extra).alias(f"{column}_extra_s")


_EVIDENCE_MS = (("seconds", "step"), ("median", "median"), ("mad", "mad"), ("bound", "bound"), ("excess", "excess"))
_CATEGORIES = (("total_data_loading_ns", "data loading"), ("total_host_sync_ns", "host sync"))


def _causes(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A slow step's causes as its evidence lists them: ops, then step categories."""
    excess = row["excess"]
    ops = [
        {"op": c["name"], "extra_ms": _ms(c["extra_s"]), "share_of_excess": round(min(c["extra_s"] / excess, 1.0), 3)}
        for c in row.get("op_causes") or []
    ]
    categories = [
        {"category": label, "extra_ms": _ms(extra), "share_of_excess": round(min(extra / excess, 1.0), 3)}
        for column, label in _CATEGORIES
        if (extra := row.get(f"{column}_extra_s")) is not None
    ]
    return ops + categories


def _slow_step_finding(row: dict[str, Any]) -> Finding:
    step, rank, excess = row["step"], row["rank"], row["excess"]
    causes = _causes(row)
    lead = next((c for c in causes if "category" in c), None) or causes[0]
    if "category" in lead:
        why = f" {lead['category'].capitalize()} took {lead['extra_ms']} ms more than in a median step."
        subject = lead["category"]
    else:
        named = ", ".join(f"{c['op']} (+{c['extra_ms']} ms)" for c in causes if "op" in c)
        why = f" The extra time went mostly to {named}."
        subject = lead["op"]
    return Finding(
        "slow-step",
        "warning",
        f"Step {step} was {_times(row):.1f}× slower than the median step",
        f"Step {step} on rank {rank} took {_ms(row['seconds'])} ms against a median of {_ms(row['median'])} ms "
        f"(outlier bound {_ms(row['bound'])} ms).{why}",
        step=step,
        rank=rank,
        subject=subject,
        evidence={
            "step_ms": _ms(row["seconds"]),
            "median_ms": _ms(row["median"]),
            "mad_ms": _ms(row["mad"]),
            "bound_ms": _ms(row["bound"]),
            "excess_ms": _ms(excess),
            "causes": causes,
        },
        suggestion=f"Look at what {subject} does on step {step}: its input size, or work that runs only on "
        "some steps (a periodic checkpoint, logging or evaluation).",
    )


def _worst_steps(rows: pl.DataFrame) -> tuple[dict[str, Any], list[list[Any]]]:
    """The slowest of `rows` (by times its rank's median) and up to 50 `[rank, step, ms]`, by rank and step."""
    times = pl.when(pl.col("median") > 0).then(pl.col("seconds") / pl.col("median")).otherwise(float("inf"))
    worst = rows.sort(times, descending=True, maintain_order=True).row(0, named=True)
    listed = rows.sort("rank", "step").head(50).select("rank", "step", "seconds").rows()
    return worst, [[rank, step, _ms(seconds)] for rank, step, seconds in listed]


def _more_explained(rows: pl.DataFrame) -> list[Finding]:
    """One info finding that counts the explained slow steps past `slow-step.max_findings`."""
    if rows.is_empty():
        return []
    worst, listed = _worst_steps(rows)
    ranks = rows["rank"].unique().sort().to_list()
    return [
        Finding(
            "slow-step",
            "info",
            f"{rows.height} more slow steps with one op or category behind each",
            f"{rows.height} further slow steps on {ranks_text(ranks)}, each mostly explained by one op or step "
            f"category, are counted here (worst: step {worst['step']} on rank {worst['rank']}, "
            f"{_ms(worst['seconds'])} ms against a median of {_ms(worst['median'])} ms, {worst['subject']}).",
            rank=ranks[0] if len(ranks) == 1 else None,
            subject=None,
            evidence={
                "slow_steps": rows.height,
                "ranks": ranks,
                "worst_step": worst["step"],
                "worst_rank": worst["rank"],
                "worst_ms": _ms(worst["seconds"]),
                "by_subject": dict(
                    rows.group_by("subject").len().sort("len", "subject", descending=[True, False]).head(20).rows()
                ),
                "steps": listed,
            },
            suggestion="The listed slow-step warnings show the largest; the same op or category on many steps "
            "is one cause to fix.",
        )
    ]


def _jitter_finding(rows: pl.DataFrame) -> list[Finding]:
    """One info finding for every slow step that nothing recorded explains."""
    if rows.is_empty():
        return []
    worst, listed = _worst_steps(rows)
    ranks = rows["rank"].unique().sort().to_list()
    profiled = int(rows["profiled"].sum())
    count = rows.height
    if profiled == count:
        seen = (
            "The profiler covered them and no op or step category accounts for most of the extra time: "
            "everything ran a little slower, as when the host is busy with other work."
        )
        hint = (
            "Nothing to fix in the training code. If steady step times matter, give the job the host to "
            "itself (no other processes on its cores, fixed CPU frequency)."
        )
    else:
        seen = (
            f"{count - profiled} of them were not profiled, so nothing recorded says where the time went."
            if profiled
            else "They were not profiled, so nothing recorded says where the time went."
        )
        hint = (
            "If they matter, profile a window of steps that includes them (torch.profiler schedule, or the "
            "Recorder's profile=...); one-off outliers on a shared host need no fix."
        )
    single = count == 1
    return [
        Finding(
            "slow-step",
            "info",
            f"Step {worst['step']} was {_times(worst):.1f}× slower than the median step"
            if single
            else f"Step time jitter: {count} steps up to {_times(worst):.1f}× the median",
            f"{count} step(s) took longer than their rank's outlier bound (worst: step {worst['step']} on "
            f"rank {worst['rank']}, {_ms(worst['seconds'])} ms against a median of {_ms(worst['median'])} ms). " + seen,
            step=worst["step"] if single else None,
            rank=ranks[0] if len(ranks) == 1 else None,
            evidence={
                "slow_steps": count,
                "ranks": ranks,
                "profiled_steps": profiled,
                "worst_step": worst["step"],
                "worst_rank": worst["rank"],
                "worst_ms": _ms(worst["seconds"]),
                "median_ms": _ms(worst["median"]),
                "worst_ratio": round(_times(worst), 3) if worst["median"] > 0 else None,
                "steps": listed,
            },
            suggestion=hint,
        )
    ]


# ---------------------------------------------------------------- slow-op


def slow_ops(inputs: PerfInputs, config: Thresholds) -> list[Finding]:
    if inputs.timing is None:
        return []
    timing = inputs.timing
    findings = _top_op(timing, config)
    steps = timing.steps
    if steps.is_empty():
        return findings
    ratio = config[SLOW_OP_RATIO]
    keys = ["rank", "session", "step"]
    profiled = steps.group_by("rank").agg(pl.col("duration_ns").sum().alias("profiled_ns"), pl.len().alias("n_steps"))
    grid = steps.select(keys).join(timing.step_ops.select("rank", "name").unique(), on="rank")
    # An op's time in a step counts at most the step's wall time (ops on several threads overlap).
    share = (pl.col("total_ns") / pl.col("duration_ns").clip(lower_bound=1)).clip(0.0, 0.999)
    per_step = (
        grid.join(timing.step_ops.select(*keys, "name", "total_ns"), on=[*keys, "name"], how="left")
        .join(steps.select(*keys, "duration_ns"), on=keys)
        .with_columns(pl.min_horizontal(pl.col("total_ns").fill_null(0), "duration_ns").alias("total_ns"))
        .with_columns((share / (1 - share)).alias("odds"))
    )
    # A step that is slow as a whole (a busy host, a slower node) makes every op slow with it; an
    # op is intermittently slow only when its part of the step grows too. Compared as odds
    # (share / (1 − share)), so an op that already fills half of a normal step can still be found
    # (50 % → 75 % is 3× the odds), where a 3× share could never exceed 100 %.
    # The odds are compared with those of the steps where the op's time was normal, so the slow
    # steps themselves (and a host that slowed other steps down) do not raise the bar.
    # (Medians as window expressions first: one sorted pass per op, where the same medians inside
    # the aggregation below would be evaluated group by group.)
    op = ["rank", "name"]
    slow_time = pl.col("total_ns") > ratio * pl.col("median_ns")
    per_step = (
        per_step.with_columns(pl.col("total_ns").median().over(op).alias("median_ns"))
        .with_columns(slow_time.alias("slow_time"))
        .with_columns(pl.col("odds").filter(~pl.col("slow_time")).median().over(op).alias("normal_odds"))
        .with_columns((pl.col("slow_time") & (pl.col("odds") > ratio * pl.col("normal_odds"))).alias("slow"))
    )
    slow = pl.col("slow")
    # Only outermost time counts once: nested ops repeat their parent's delay, so report each
    # (rank, step-set) through the op with the most excess and list the rest as related.
    stats = (
        per_step.group_by(op)
        .agg(
            pl.col("median_ns").first(),
            pl.col("total_ns").quantile(0.95, "nearest").alias("p95_ns"),
            pl.col("step").filter(slow).alias("slow_steps"),
            (pl.col("total_ns") - ratio * pl.col("median_ns"))
            .clip(lower_bound=0)
            .filter(slow)
            .sum()
            .alias("excess_ns"),
        )
        .join(profiled, on="rank")
        .filter(
            (pl.col("median_ns") > 0)
            & (pl.col("p95_ns") >= ratio * pl.col("median_ns"))
            & (pl.col("excess_ns") >= config[SLOW_OP_SHARE] * pl.col("profiled_ns"))
            & (pl.col("excess_ns") >= config[SLOW_OP_EXCESS] * 1e6)
            & (pl.col("slow_steps").list.len() >= config[SLOW_OP_RECUR])
            & (pl.col("slow_steps").list.len() < pl.col("n_steps"))
        )
        .sort("rank", "excess_ns", descending=[False, True])
    )
    # Per rank, the op with the most excess; the next five are related.
    tops = stats.group_by("rank", maintain_order=True).agg(
        pl.all().first(), pl.col("name").slice(1, 5).alias("also_slow")
    )
    rows = tops.with_columns(
        pl.lit("warning").alias("severity"),
        pl.col("name").alias("subject"),
        # One op slow on several ranks is one cause, whichever steps it was slow on.
        pl.lit(None, pl.Int64).alias("step"),
        *[(pl.col(f"{c}_ns") / 1e6).round(3).alias(f"{c}_ms") for c in ("median", "p95", "excess")],
        (pl.col("excess_ns") / pl.col("profiled_ns")).round(4).alias("share_of_profiled_time"),
    )
    numbers = ["median_ms", "p95_ms", "excess_ms", "share_of_profiled_time"]
    return findings + per_cause(rows, numbers, lambda row: _slow_op_finding(row, ratio))


def _slow_op_finding(top: dict[str, Any], ratio: float) -> Finding:
    rank = top["rank"]
    return Finding(
        "slow-op",
        "warning",
        f"{top['name']} is intermittently slow",
        f"On rank {rank}, {top['name']} takes {_ms(top['median_ns'] / 1e9)} ms in a median step but "
        f"{_ms(top['p95_ns'] / 1e9)} ms at the 95th percentile; it is over {ratio:g}× its median on steps "
        f"{_steps_text(top['slow_steps'])}.",
        rank=rank,
        subject=top["name"],
        step=min(top["slow_steps"]) if top["slow_steps"] else None,
        evidence={
            "median_ms": _ms(top["median_ns"] / 1e9),
            "p95_ms": _ms(top["p95_ns"] / 1e9),
            "excess_ms": _ms(top["excess_ns"] / 1e9),
            "slow_steps": top["slow_steps"],
            "share_of_profiled_time": round(top["excess_ns"] / top["profiled_ns"], 4),
            "also_slow": top["also_slow"],
        },
        suggestion=f"Find what differs on those steps for {top['name']}: input shapes (padding, variable sequence "
        "length), a cache miss or recompilation, contention from another process.",
    )


def _steps_text(steps: list[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:8])
    return shown + (f" and {len(steps) - 8} more" if len(steps) > 8 else "")


def _top_op(timing: Timing, config: Thresholds) -> list[Finding]:
    ops = timing.ops.filter(pl.col("cat").cast(pl.String).is_in(["cpu_op", "Operator"]))
    if ops.is_empty() or timing.steps.is_empty():
        return []
    on_gpu = bool(timing.gpu_ranks()) and ops["gpu_ns"].sum() > 0
    column = "gpu_ns" if on_gpu else "self_ns"
    top = ops.sort(column, descending=True).row(0, named=True)
    # A share of all ops' time of that kind, which cannot pass 100 % (kernels on several streams
    # and ops on several threads overlap, so a share of wall-clock step time could).
    total = ops[column].sum()
    share = top[column] / total if total else 0.0
    # ... and it must matter for the steps: that much of profiled step time too (one tiny op in a
    # trace of idle steps is 100 % of all ops and nothing to optimise).
    profiled = timing.steps["duration_ns"].sum()
    if share < config[TOP_OP_SHARE] or top[column] < config[TOP_OP_SHARE] * profiled:
        return []
    where = "GPU kernel time" if on_gpu else "CPU self time"
    shapes = f" (inputs {top['input_dims']})" if top["input_dims"] else ""
    return [
        Finding(
            "slow-op",
            "info",
            f"{top['name']} dominates {where}",
            f"{top['name']}{shapes} accounts for {share:.0%} of all ops' {where} "
            f"({top['calls']} calls, {_ms(top[column] / 1e9)} ms).",
            subject=top["name"],
            evidence={
                "share": round(share, 4),
                "calls": top["calls"],
                f"{column[:-3]}_ms": _ms(top[column] / 1e9),
                "total_ms": _ms(top["total_ns"] / 1e9),
            },
            suggestion="This is where optimisation pays most: check its input sizes and dtype (mixed precision, "
            "channels_last), or whether a fused/compiled version (torch.compile) applies.",
        )
    ]


# ---------------------------------------------------------------- step shares


def _shares(timing: Timing, column: str) -> pl.DataFrame:
    return (
        timing.steps.filter(pl.col(column).is_not_null())
        .group_by("rank")
        .agg(pl.len().alias("steps"), pl.col(column).sum().alias("part"), pl.col("duration_ns").sum().alias("total"))
        .filter(pl.col("total") > 0)  # 0/0 is no share
        .with_columns((pl.col("part") / pl.col("total")).alias("share"))
        .sort("rank")
    )


def _per_step_ms(column: str) -> pl.Expr:
    return (pl.col(column) / 1e6 / pl.col("steps")).round(3)


def dataloader_bound(inputs: PerfInputs, config: Thresholds) -> list[Finding]:
    if inputs.timing is None or inputs.timing.steps.is_empty():
        return []
    rows = (
        _shares(inputs.timing, "total_data_loading_ns")
        .filter(pl.col("share") >= config[LOADER_INFO])
        .with_columns(
            pl.when(pl.col("share") >= config[LOADER_WARN])
            .then(pl.lit("warning"))
            .otherwise(pl.lit("info"))
            .alias("severity"),
            pl.lit("DataLoader").alias("subject"),
            pl.lit(None, pl.Int64).alias("step"),
            pl.col("share").alias("raw_share"),
            pl.col("share").round(4),
            _per_step_ms("part").alias("loading_ms_per_step"),
            _per_step_ms("total").alias("step_ms"),
        )
    )
    return per_cause(rows, ["share", "loading_ms_per_step", "step_ms", "steps"], _loader_finding)


def _loader_finding(row: dict[str, Any]) -> Finding:
    share, steps = row["raw_share"], row["steps"]
    return Finding(
        "dataloader-bound",
        row["severity"],
        f"Data loading takes {share:.0%} of step time",
        f"On rank {row['rank']}, the DataLoader's __next__ took {_ms(row['part'] / 1e9 / steps)} ms of a "
        f"{_ms(row['total'] / 1e9 / steps)} ms step on average over {steps} profiled steps.",
        rank=row["rank"],
        subject="DataLoader",
        evidence={
            "share": round(share, 4),
            "loading_ms_per_step": _ms(row["part"] / 1e9 / steps),
            "step_ms": _ms(row["total"] / 1e9 / steps),
            "steps": steps,
        },
        suggestion="Load batches in the background: DataLoader(num_workers=N, pin_memory=True, "
        "persistent_workers=True, prefetch_factor=2+); move decoding/augmentation out of __getitem__ "
        "or cache preprocessed samples.",
    )


def host_sync(inputs: PerfInputs, config: Thresholds) -> list[Finding]:
    if inputs.timing is None:
        return []
    timing = inputs.timing
    gpu_ranks = timing.gpu_ranks()
    if timing.steps.is_empty() or not gpu_ranks:
        return []
    by_call = (
        timing.step_ops.filter(pl.col("name").is_in([*SYNC_CALLS, *SYNC_OPS]))
        .group_by("rank", "name")
        .agg(pl.col("calls").sum(), pl.col("total_ns").sum())
        .sort("rank", "total_ns", descending=[False, True], maintain_order=True)
        .group_by("rank", maintain_order=True)
        .agg(pl.struct("name", "calls", "total_ns").head(5).alias("by_call"), pl.col("name").first().alias("subject"))
    )
    rows = (
        _shares(timing, "total_host_sync_ns")
        .filter(pl.col("rank").is_in(gpu_ranks) & (pl.col("share") >= config[SYNC_SHARE]))
        .join(by_call, on="rank", how="left")
        .with_columns(
            pl.lit("warning").alias("severity"),
            pl.lit(None, pl.Int64).alias("step"),
            pl.col("share").alias("raw_share"),
            pl.col("share").round(4),
            _per_step_ms("part").alias("sync_ms_per_step"),
        )
    )
    return per_cause(rows, ["share", "sync_ms_per_step"], _sync_finding)


def _sync_finding(row: dict[str, Any]) -> Finding:
    calls = row["by_call"] or []
    top = calls[0] if calls else None
    return Finding(
        "host-sync",
        "warning",
        f"The host waits on the GPU for {row['raw_share']:.0%} of step time",
        f"On rank {row['rank']}, synchronising calls (device-to-host copies, .item(), stream/device synchronize) "
        f"blocked the CPU for {_ms(row['part'] / 1e9 / row['steps'])} ms per step"
        + (f"; the largest is {top['name']} ({top['calls']} calls)." if top else "."),
        rank=row["rank"],
        subject=top["name"] if top else None,
        evidence={
            "share": round(row["raw_share"], 4),
            "sync_ms_per_step": _ms(row["part"] / 1e9 / row["steps"]),
            "by_call": {c["name"]: {"calls": c["calls"], "ms": _ms(c["total_ns"] / 1e9)} for c in calls},
        },
        suggestion="Keep values on the device inside the loop: log loss.item() every N steps, avoid Python "
        "conditionals on tensors, use non_blocking=True copies with pinned memory.",
    )


_GPU_TIMES = ("idle_us", "compute_us", "non_compute_us", "span_us")
_IDLE_CAUSES = {
    "data_loading_ns": (
        "waiting for data loading",
        "Speed up the input pipeline (DataLoader num_workers, pin_memory, prefetching).",
    ),
    "host_sync_ns": (
        "blocked in host synchronisation",
        "Remove per-step .item()/CPU copies and explicit synchronize calls.",
    ),
    "other_ns": (
        "CPU-side work with no GPU work queued (Python overhead, small ops, launch latency)",
        "Overlap CPU work with GPU work: larger batches, torch.compile or CUDA graphs, move CPU "
        "preprocessing off the training thread.",
    ),
}


def _gpu_ranks_frame(timing: Timing) -> tuple[pl.DataFrame, list[str]]:
    """One row per rank with GPU activity: `entry` (its index in `timing.ranks`), rank, the HTA
    times, `idle_share`, the launch numbers and `short_share`; and the names of the launch numbers."""
    entries = [(i, e) for i, e in enumerate(timing.ranks) if e.get("gpu") and e["gpu"]["span_us"] > 0]
    launch_keys = list(
        dict.fromkeys(k for _, e in entries for k, v in (e.get("launch") or {}).items() if _is_number(v))
    )
    frame = pl.DataFrame(
        [
            {
                "entry": i,
                "rank": e["rank"],
                **{k: e["gpu"][k] for k in _GPU_TIMES},
                **{k: (e.get("launch") or {}).get(k) for k in launch_keys},
            }
            for i, e in entries
        ],
        schema={"entry": pl.Int64, "rank": pl.Int64, **{k: pl.Float64 for k in (*_GPU_TIMES, *launch_keys)}},
    )
    launches = pl.col("launches") if "launches" in launch_keys else pl.lit(None, pl.Float64)
    shorter = pl.col("shorter_than_launch").fill_null(0) if "shorter_than_launch" in launch_keys else pl.lit(0.0)
    return frame.with_columns(
        (pl.col("idle_us") / pl.col("span_us")).alias("raw_idle_share"),
        pl.when(launches > 0).then(shorter / launches).otherwise(0.0).alias("raw_short_share"),
    ).with_columns(
        pl.col("raw_idle_share").round(4).alias("idle_share"), pl.col("raw_short_share").round(4).alias("short_share")
    ), launch_keys


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def gpu_idle(inputs: PerfInputs, config: Thresholds) -> list[Finding]:
    """launch-bound and gpu-idle, per rank from its HTA temporal breakdown, one finding per cause."""
    if inputs.timing is None:
        return []
    timing = inputs.timing
    ranks, launch_numbers = _gpu_ranks_frame(timing)
    if ranks.is_empty():
        return []
    launch_bound = ranks.filter(
        (pl.col("raw_idle_share") >= config[LAUNCH_IDLE]) & (pl.col("raw_short_share") >= config[LAUNCH_SHORT])
    ).with_columns(
        pl.lit("warning").alias("severity"),
        pl.lit(None, pl.String).alias("subject"),
        pl.lit(None, pl.Int64).alias("step"),
    )
    idle = (
        ranks.filter(pl.col("raw_idle_share") >= config[IDLE_SHARE])
        .join(_idle_causes(timing), on="rank", how="left")
        .with_columns(
            pl.lit("warning").alias("severity"),
            pl.lit(None, pl.String).alias("subject"),
            pl.lit(None, pl.Int64).alias("step"),
        )
    )
    return per_cause(
        launch_bound,
        ["short_share", "idle_share", *launch_numbers],
        lambda row: _launch_finding(timing.ranks[row["entry"]], row),
    ) + per_cause(idle, ["idle_share", *_GPU_TIMES], lambda row: _idle_finding(timing.ranks[row["entry"]], row))


def _launch_finding(entry: dict[str, Any], row: dict[str, Any]) -> Finding:
    launch, share, short_share = entry["launch"], row["raw_idle_share"], row["raw_short_share"]
    return Finding(
        "launch-bound",
        "warning",
        f"GPU work is shorter than its launches ({short_share:.0%} of GPU ops)",
        f"On rank {entry['rank']}, {launch['shorter_than_launch']} of {launch['launches']} GPU ops ran for less "
        f"time than the CPU call that launched them (median launch {launch['launch_p50_us']} µs, median GPU "
        f"op {launch['gpu_p50_us']} µs) and the GPU was idle {share:.0%} of its span: the CPU cannot issue "
        "work fast enough.",
        rank=entry["rank"],
        evidence={"short_share": round(short_share, 4), "idle_share": round(share, 4), **launch},
        suggestion="Give the GPU bigger pieces of work: larger batches, fused ops (torch.compile), CUDA graphs "
        "(torch.compile mode='reduce-overhead'), fewer tiny elementwise ops.",
    )


def _idle_finding(entry: dict[str, Any], row: dict[str, Any]) -> Finding:
    gpu, share = entry["gpu"], row["raw_idle_share"]
    if row.get("cause") is None:
        cause, hint = (
            "",
            (
                "Profile with ProfilerStep markers (torch.profiler schedule + prof.step()) to see what the idle time overlaps."
                if row.get("total") is None
                else "Profile steps that do some work to see what the idle time overlaps."
            ),
        )
    else:
        what, hint = _IDLE_CAUSES[row["cause"]]
        cause = f" In the profiled steps, most idle time ({row['cause_share']:.0%} of step time) was {what}."
    return Finding(
        "gpu-idle",
        "warning",
        f"The GPU is idle {share:.0%} of the time",
        f"On rank {entry['rank']}, the GPU ran nothing for {gpu['idle_us'] / 1e3:.1f} ms of its "
        f"{gpu['span_us'] / 1e3:.1f} ms active span (HTA temporal breakdown: compute {gpu['compute_us'] / 1e3:.1f} ms, "
        f"non-compute {gpu['non_compute_us'] / 1e3:.1f} ms).{cause}",
        rank=entry["rank"],
        evidence={"idle_share": round(share, 4), **{k: gpu[k] for k in _GPU_TIMES}},
        suggestion=hint,
    )


def _idle_causes(timing: Timing) -> pl.DataFrame:
    """Per rank with profiled steps: `total` step time, and (where it is not 0) `cause`, the step
    part that took the most time, with `cause_share` of step time."""
    parts = list(_IDLE_CAUSES)
    if timing.steps.is_empty():
        return pl.DataFrame(
            schema={"rank": pl.Int64, "total": pl.Float64, "cause": pl.String, "cause_share": pl.Float64}
        )
    sums = timing.steps.group_by("rank").agg(
        pl.col(*parts).sum().cast(pl.Float64), pl.col("duration_ns").sum().cast(pl.Float64).alias("total")
    )
    largest = pl.max_horizontal(parts)
    first_largest = pl.coalesce(*[pl.when(pl.col(p) == largest).then(pl.lit(p)) for p in parts])
    return sums.select(
        pl.col("rank").cast(pl.Int64),
        "total",
        pl.when(pl.col("total") > 0).then(first_largest).alias("cause"),
        (largest / pl.col("total")).alias("cause_share"),
    )


# ---------------------------------------------------------------- straggler-rank


def straggler_ranks(inputs: PerfInputs, config: Thresholds) -> list[Finding]:
    durations = inputs.durations
    ranks = durations["rank"].n_unique()
    if ranks < 2:
        return []
    common = durations.group_by("step").agg(pl.len().alias("n")).filter(pl.col("n") == ranks).select("step")
    shared = durations.join(common, on="step")
    if shared.is_empty():
        return []
    skew = config[STRAGGLER_SKEW]
    # Null where the median is 0: 0/0 must not count as behind (polars orders NaN above every number).
    scored = shared.with_columns(pl.col("seconds").median().over("step").alias("median")).with_columns(
        pl.when(pl.col("median") > 0).then((pl.col("seconds") - pl.col("median")) / pl.col("median")).alias("skew")
    )
    rows = (
        scored.group_by("rank")
        .agg(
            (pl.col("skew") > skew).mean().alias("behind_share"),
            pl.col("seconds").median().alias("rank_median"),
            pl.col("median").median().alias("all_median"),
            pl.col("skew").median().alias("median_skew"),
            pl.len().alias("steps"),
        )
        .filter(pl.col("behind_share") >= config[STRAGGLER_STEPS])
        .sort("median_skew", descending=True, maintain_order=True)
    )
    # Several stragglers are one finding that names them (each is still a rank the others wait for).
    several = rows.height > 1
    rows = rows.with_columns(
        pl.lit("warning").alias("severity"),
        (pl.lit(None, pl.String) if several else pl.format("rank {}", "rank")).alias("subject"),
        pl.lit(None, pl.Int64).alias("step"),
        pl.col("behind_share", "median_skew").name.prefix("raw_"),
        pl.col("behind_share", "median_skew").round(4),
        (pl.col("rank_median") * 1e3).round(3).alias("rank_median_ms"),
        (pl.col("all_median") * 1e3).round(3).alias("all_median_ms"),
    )
    numbers = ["behind_share", "median_skew", "rank_median_ms", "all_median_ms", "steps"]
    findings = per_cause(rows, numbers, lambda row: _straggler_finding(row, skew))
    return [_stragglers_named(f) if f.rank is None else f for f in findings]


def _straggler_finding(row: dict[str, Any], skew: float) -> Finding:
    return Finding(
        "straggler-rank",
        "warning",
        f"Rank {row['rank']} is slower than the other ranks",
        f"Rank {row['rank']} took more than {skew:.0%} longer than the cross-rank median on "
        f"{row['raw_behind_share']:.0%} of {row['steps']} shared steps (its median step {_ms(row['rank_median'])} ms, "
        f"all ranks {_ms(row['all_median'])} ms).",
        rank=row["rank"],
        subject=f"rank {row['rank']}",
        evidence={
            "behind_share": round(row["raw_behind_share"], 4),
            "median_skew": round(row["raw_median_skew"], 4),
            "rank_median_ms": _ms(row["rank_median"]),
            "all_median_ms": _ms(row["all_median"]),
            "steps": row["steps"],
        },
        suggestion="Compare this rank's host and device (thermal throttling, a slower GPU/NIC, other jobs on the "
        "node) and its data shard (longer sequences, slower storage).",
    )


def _stragglers_named(merged: Finding) -> Finding:
    """The finding for several stragglers, titled by their number."""
    return replace(merged, title=f"{len(merged.evidence['ranks'])} ranks are slower than the other ranks")


# ---------------------------------------------------------------- memory-growth


def memory_growth(inputs: PerfInputs, config: Thresholds) -> list[Finding]:
    steps = inputs.recorder_steps
    if not {"rank", "step", "mem_allocated"} <= set(steps.columns):
        return []
    has_peak = "max_mem_allocated" in steps.columns
    readings = (
        steps.filter(pl.col("mem_allocated").is_not_null())
        .sort("rank", "step")
        .filter(pl.len().over("rank") >= config[MEM_STEPS])
    )
    # Skip warm-up (optimizer state and caches are allocated in the first steps), then compare fifths.
    body = readings.filter(pl.int_range(pl.len()).over("rank") >= pl.len().over("rank") // 10).with_columns(
        (pl.int_range(pl.len()) * 5 // pl.len()).over("rank").alias("part")
    )
    fifths = (
        body.group_by("rank", "part")
        .agg(
            pl.col("mem_allocated").median().alias("mem"),
            *([pl.col("max_mem_allocated").max().alias("peak")] if has_peak else []),
        )
        .sort("rank", "part")
        .group_by("rank", maintain_order=True)
        .agg(
            pl.col("mem").alias("fifths"),
            (pl.col("mem").diff().min().fill_null(0) >= 0).alias("steady"),
            *([pl.col("peak").max().alias("peak_bytes")] if has_peak else []),
        )
    )
    span = body.group_by("rank").agg(pl.col("step").first().alias("first_step"), pl.col("step").last().alias("step"))
    first, last = pl.col("fifths").list.first(), pl.col("fifths").list.last()
    rows = (
        fifths.join(span, on="rank")
        .with_columns(
            (last - first).alias("growth"),
            ((pl.col("step") - pl.col("first_step")) * 0.8).clip(lower_bound=1).alias("per_step_span"),
        )
        .filter(
            pl.col("steady")
            & (pl.col("growth") >= config[MEM_BYTES])
            & (pl.col("growth") >= config[MEM_GROWTH] * pl.max_horizontal(first, pl.lit(1.0)))
        )
        .sort("rank")
        .with_columns(
            pl.lit("warning").alias("severity"),
            pl.lit(None, pl.String).alias("subject"),
            first.cast(pl.Int64).alias("first_fifth_bytes"),
            last.cast(pl.Int64).alias("last_fifth_bytes"),
            pl.col("growth").cast(pl.Int64).alias("growth_bytes"),
            (pl.col("growth") / pl.col("per_step_span")).round(0).alias("bytes_per_step"),
        )
    )
    numbers = [
        "first_fifth_bytes",
        "last_fifth_bytes",
        "growth_bytes",
        "bytes_per_step",
        *(["peak_bytes"] if has_peak else []),
    ]
    return per_cause(rows, numbers, _memory_finding)


def _memory_finding(row: dict[str, Any]) -> Finding:
    mem = row["fifths"]
    growth = mem[-1] - mem[0]
    per_step = growth / row["per_step_span"]
    evidence: dict[str, Any] = {
        "first_fifth_bytes": int(mem[0]),
        "last_fifth_bytes": int(mem[-1]),
        "growth_bytes": int(growth),
        "bytes_per_step": round(per_step),
        "fifths_bytes": [int(m) for m in mem],
    }
    if row.get("peak_bytes") is not None:
        evidence["peak_bytes"] = int(row["peak_bytes"])
    return Finding(
        "memory-growth",
        "warning",
        "CUDA memory keeps growing",
        f"On rank {row['rank']}, allocated CUDA memory rose from {mem[0] / 2**20:.0f} MiB to {mem[-1] / 2**20:.0f} MiB "
        f"(median of the first and last fifth of steps after warm-up), about {per_step / 2**20:.2f} MiB per step, "
        "and never fell back.",
        rank=row["rank"],
        step=int(row["step"]),
        evidence=evidence,
        suggestion="Look for tensors kept across steps: accumulating the loss without .item()/.detach() "
        "(keeps each step's graph), appending outputs to a list, caches keyed by step; "
        "torch.cuda.memory._record_memory_history() shows what holds the memory.",
    )


# Every performance rule, in the order its findings are listed (docs/findings-performance.md).
RULES: tuple[PerfRule, ...] = (
    slow_steps,
    straggler_ranks,
    slow_ops,
    dataloader_bound,
    host_sync,
    gpu_idle,
    memory_growth,
)
