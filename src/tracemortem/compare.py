"""`tracemortem diff BASELINE CANDIDATE`: what got slower and what got less healthy.

Times are compared per profiled step (a trace of 6 steps against one of 3 stays fair); ops and
kernels are matched by name across all input shapes and ranks.
"""

from __future__ import annotations

import statistics
from typing import Any

import polars as pl

from .analysis import Analysis
from .findings import SEVERITY_RANK


def _step_count(analysis: Analysis) -> int:
    if not analysis.step_times.is_empty():
        return max(analysis.step_times.select(pl.struct("rank", "step").n_unique()).item(), 1)
    return max(analysis.run.steps.count, 1)


def _median_step_s(analysis: Analysis) -> float | None:
    values = [r.step_time_s for r in analysis.run.ranks if r.step_time_s]
    return statistics.median(values) if values else None


def _per_step(frame: pl.DataFrame, column: str, steps: int) -> pl.DataFrame:
    if frame.is_empty() or column not in frame.columns:
        return pl.DataFrame(schema={"name": pl.String, "per_step_ns": pl.Float64})
    return frame.group_by(pl.col("name").cast(pl.String)).agg((pl.col(column).sum() / steps).alias("per_step_ns"))


def _changes(base: pl.DataFrame, cand: pl.DataFrame, top: int) -> list[dict[str, Any]]:
    """Names whose time per step changed most (growth first), with both values in µs."""
    joined = (
        base.join(cand, on="name", how="full", coalesce=True, suffix="_cand")
        .with_columns(pl.col("per_step_ns", "per_step_ns_cand").fill_null(0.0))
        .with_columns((pl.col("per_step_ns_cand") - pl.col("per_step_ns")).alias("delta_ns"))
        .filter(pl.col("delta_ns") != 0)
        .sort(["delta_ns", "name"], descending=[True, False])
        .head(top)
    )
    return [
        {
            "name": row["name"],
            "baseline_us": round(row["per_step_ns"] / 1e3, 3),
            "candidate_us": round(row["per_step_ns_cand"] / 1e3, 3),
            "delta_us": round(row["delta_ns"] / 1e3, 3),
            "ratio": round(row["per_step_ns_cand"] / row["per_step_ns"], 3) if row["per_step_ns"] else None,
        }
        for row in joined.iter_rows(named=True)
    ]


def _finding_keys(analysis: Analysis) -> dict[tuple, Any]:
    # Not keyed by rank: two runs of one job need not put the same work on the same rank number.
    return {(f.rule, f.subject): f for f in analysis.findings}


def compare(baseline: Analysis, candidate: Analysis, top: int = 10) -> dict[str, Any]:
    base_steps, cand_steps = _step_count(baseline), _step_count(candidate)
    base_time, cand_time = _median_step_s(baseline), _median_step_s(candidate)
    old, new = _finding_keys(baseline), _finding_keys(candidate)
    added = sorted((new[k] for k in new.keys() - old.keys()), key=lambda f: (SEVERITY_RANK[f.severity], f.rule))
    gone = sorted((old[k] for k in old.keys() - new.keys()), key=lambda f: (SEVERITY_RANK[f.severity], f.rule))
    return {
        "baseline": str(baseline.path),
        "candidate": str(candidate.path),
        "step_time_s": {
            "baseline": base_time,
            "candidate": cand_time,
            "ratio": round(cand_time / base_time, 3) if base_time and cand_time else None,
        },
        "ops": _changes(
            _per_step(baseline.ops, "self_ns", base_steps), _per_step(candidate.ops, "self_ns", cand_steps), top
        ),
        "kernels": _changes(
            _per_step(baseline.kernels, "total_ns", base_steps),
            _per_step(candidate.kernels, "total_ns", cand_steps),
            top,
        ),
        "new_findings": [f.to_dict() for f in added],
        "resolved_findings": [f.to_dict() for f in gone],
    }
