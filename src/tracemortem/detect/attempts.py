"""`run-resumed`: a rank recorded in more than one attempt, and what the later ones superseded
(docs/findings-health.md; the convention is in load/attempts.py)."""

from __future__ import annotations

from typing import Any

import polars as pl

from ..findings import Finding
from ..load.attempts import attempt_at
from ..load.run import RunData
from ..thresholds import Thresholds, threshold
from .health_series import HealthSeries

RANKS_NAMED = threshold(
    "run-resumed.ranks_named",
    4,
    "How many ranks the run-resumed message describes one by one (the evidence lists all).",
    "tracemortem (report size)",
)

_EVIDENCE_COLUMNS = (
    "rank",
    "attempt",
    "path",
    "status",
    "started",
    "ended",
    "first_step",
    "last_step",
    "kept_steps",
    "superseded_steps",
    "superseded_first",
    "superseded_last",
    "first_nonfinite_step",
    "snapshot_step",
)


def _restarted(run: RunData) -> pl.DataFrame:
    """Attempts of the ranks recorded more than once."""
    table = run.attempts
    if table.is_empty() or "cutoff" not in table.columns:
        return table.clear()
    return table.filter(pl.len().over("rank") > 1)


def blame(run: RunData, rank: int | None, step: int | None) -> dict[str, Any]:
    """Evidence naming the attempt that recorded `step` of `rank`, when that rank has several."""
    restarted = _restarted(run)
    if rank is None or restarted.filter(pl.col("rank") == rank).is_empty():
        return {}
    attempt = attempt_at(restarted, rank, step)
    if attempt is None:
        return {}
    path = restarted.filter((pl.col("rank") == rank) & (pl.col("attempt") == attempt))["path"][0]
    return {"attempt": attempt, "attempt_path": path}


def _status(row: dict[str, Any]) -> str:
    if row["status"] == "running" and row["ended"] is None:
        return "no end marker: killed, or still running"
    return str(row["status"] or "status unknown")


def _span(first: Any, last: Any) -> str:
    return f"step {first}" if first == last else f"steps {first}-{last}"


def _describe(rows: list[dict[str, Any]]) -> str:
    """One rank's attempts, in order, with what each later one replaced."""
    parts = []
    for row in rows:
        if row["first_step"] is None:
            parts.append(f"attempt {row['attempt']} recorded no step ({_status(row)})")
            continue
        text = f"attempt {row['attempt']} recorded {_span(row['first_step'], row['last_step'])} ({_status(row)})"
        if row["superseded_steps"]:
            text += f", of which {_span(row['superseded_first'], row['superseded_last'])} were superseded"
            bad = row["first_nonfinite_step"]
            if bad is not None and bad >= row["superseded_first"]:
                text += f" (including its NaN/Inf at step {bad}, no longer in this analysis)"
        parts.append(text)
    return "; ".join(parts)


def run_resumed(run: RunData, _series: HealthSeries, config: Thresholds) -> list[Finding]:
    restarted = _restarted(run)
    if restarted.is_empty():
        return []
    rows = restarted.select(_EVIDENCE_COLUMNS).to_dicts()
    ranks = sorted({r["rank"] for r in rows})
    named = ranks[: config[RANKS_NAMED]]
    described = ". ".join(f"Rank {rank}: " + _describe([r for r in rows if r["rank"] == rank]) for rank in named)
    if len(ranks) > len(named):
        described += f". {len(ranks) - len(named)} more rank(s) in the evidence"
    superseded = int(restarted["superseded_steps"].sum())
    first_cut = restarted["cutoff"].min()
    lost_nan = [
        r for r in rows if r["superseded_steps"] and (r["first_nonfinite_step"] or -1) >= (r["superseded_first"] or 0)
    ]
    return [
        Finding(
            "run-resumed",
            "info",
            "run resumed",
            f"{len(ranks)} rank(s) were recorded in more than one attempt (a restart, a re-run, or two processes "
            f"on one rank); a later attempt supersedes every earlier step from its own first step on, so "
            f"{superseded} recorded step(s) are left out of this analysis. {described}.",
            step=first_cut if isinstance(first_cut, int) else None,
            rank=ranks[0] if len(ranks) == 1 else None,
            evidence={"ranks": ranks, "superseded_steps": superseded, "attempts": rows},
            suggestion="The superseded data is still on disk, in each attempt's folder (evidence: attempts[].path). "
            + (
                "The NaN/Inf of a superseded attempt is not in the findings above: its snapshot, if taken, is in "
                "that attempt's folder. "
                if lost_nan
                else ""
            )
            + "If two jobs wrote one rank by mistake, give each job a run directory of its own.",
        )
    ]
