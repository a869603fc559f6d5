"""One finding per cause, not per rank (docs/findings-performance.md "Many ranks").

Findings of the same rule, severity, subject and step on several ranks are one cause seen on many
ranks (32 identical data-parallel ranks are idle for the same reason). They become one finding
with `rank` null, `evidence.ranks`, and `evidence.spread`: for every number the findings' evidence
shares, its median, its largest value and the rank that has it. The representative text is the
worst rank's.

`per_cause` does this for a rule's frame of per-rank rows (the performance rules: one polars pass
over all ranks, one `Finding` built per cause); `merge_across_ranks` does it for findings that
were built one per rank (the step that runs after every rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from ..findings import Finding

CAUSE = ("severity", "subject", "step")  # what makes two ranks' findings the same cause
MAX_RANK_RUNS = 8  # runs of consecutive ranks named in a message; the rest are counted


def rank_runs(ranks: Sequence[int]) -> str:
    """`0–511, 513–1023`: runs of consecutive ranks, at most MAX_RANK_RUNS of them named."""
    runs: list[tuple[int, int]] = []
    for rank in sorted(set(ranks)):
        if runs and rank == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], rank)
        else:
            runs.append((rank, rank))
    shown = ", ".join(f"{a}–{b}" if b > a else str(a) for a, b in runs[:MAX_RANK_RUNS])
    rest = sum(b - a + 1 for a, b in runs[MAX_RANK_RUNS:])
    return shown + (f" and {rest} more" if rest else "")


def ranks_text(ranks: Sequence[int]) -> str:
    """`ranks 0–511, 513–1023`, or `rank 3`."""
    return ("rank " if len(set(ranks)) == 1 else "ranks ") + rank_runs(ranks)


@dataclass(frozen=True)
class _Cause:
    members: list[int]  # its rows, the first first
    lead: int  # row of its worst rank
    ranks: list[int]
    spread: dict[str, dict[str, Any]]


def _causes(rows: pl.DataFrame, numbers: Sequence[str]) -> list[_Cause]:
    """The causes in `rows` (grouped by CAUSE, in order of first appearance) with their ranks and,
    for each number every member has, its median, largest value and the rank that has it."""
    indexed = rows.with_row_index("_row")
    aggregates: list[pl.Expr] = [pl.col("_row").alias("_members"), pl.col("rank").unique().sort().alias("_ranks")]
    for name in numbers:
        value = pl.col(name).cast(pl.Float64)
        aggregates += [
            (value.null_count() == 0).alias(f"{name}\0complete"),
            value.median().alias(f"{name}\0median"),
            value.max().alias(f"{name}\0worst"),
            pl.col("rank", "_row")
            .sort_by(value, descending=True, maintain_order=True)
            .first()
            .name.suffix(f"\0{name}"),
        ]
    causes = []
    for group in indexed.group_by(list(CAUSE), maintain_order=True).agg(aggregates).iter_rows(named=True):
        shared = [n for n in numbers if group[f"{n}\0complete"]]
        spread = {
            n: {"median": group[f"{n}\0median"], "worst": group[f"{n}\0worst"], "worst_rank": group[f"rank\0{n}"]}
            for n in shared
        }
        lead = group[f"_row\0{shared[0]}"] if shared else group["_members"][0]
        causes.append(_Cause(group["_members"], lead, group["_ranks"], spread))
    return causes


def per_cause(rows: pl.DataFrame, numbers: Sequence[str], build: Callable[[dict[str, Any]], Finding]) -> list[Finding]:
    """One finding per cause from `rows` (one per rank and cause, in the order the findings come
    out): columns `rank`, `severity`, `subject`, `step`, the evidence `numbers` in the rule's
    evidence order, and whatever `build` reads. `build(row)` makes a rank's finding; a cause seen
    on several ranks is its worst rank's finding (by the first number every member has), merged."""
    if rows.is_empty():
        return []
    findings = []
    for cause in _causes(rows, numbers):
        lead = build(rows.row(cause.lead, named=True))
        findings.append(lead if len(cause.ranks) < 2 else _merged(lead, cause))
    return findings


def _merged(lead: Finding, cause: _Cause) -> Finding:
    ranks = cause.ranks
    return replace(
        lead,
        rank=None,
        message=f"Seen on {ranks_text(ranks)} ({len(ranks)} ranks); rank {lead.rank} is the worst: {lead.message}",
        evidence={**lead.evidence, "ranks": ranks, "spread": cause.spread},
    )


def _numbers(evidence: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in evidence.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


_EVIDENCE = "evidence."


def merge_across_ranks(findings: list[Finding]) -> list[Finding]:
    """`findings` with every group of same-cause findings of one rule on two or more ranks merged
    into one, in the place of the group's first finding."""
    by_rule: dict[str, list[int]] = {}
    for i, finding in enumerate(findings):
        if finding.rank is not None:
            by_rule.setdefault(finding.rule, []).append(i)
    merged: dict[int, Finding] = {}
    dropped: set[int] = set()
    for members in by_rule.values():
        if len({findings[i].rank for i in members}) < 2:
            continue
        # Evidence columns are prefixed: evidence may hold a number named like a key (`step`).
        numbers = list(dict.fromkeys(_EVIDENCE + key for i in members for key in _numbers(findings[i].evidence)))
        rows = pl.DataFrame(
            [
                {
                    "i": i,
                    "rank": findings[i].rank,
                    **{key: getattr(findings[i], key) for key in CAUSE},
                    **{_EVIDENCE + key: value for key, value in _numbers(findings[i].evidence).items()},
                }
                for i in members
            ],
            schema={
                "i": pl.Int64,
                "rank": pl.Int64,
                "severity": pl.String,
                "subject": pl.String,
                "step": pl.Int64,
                **{name: pl.Float64 for name in numbers},
            },
        )
        index = rows["i"].to_list()
        for cause in _causes(rows, numbers):
            if len(cause.ranks) < 2:
                continue
            first, *rest = (index[row] for row in cause.members)
            spread = {key.removeprefix(_EVIDENCE): value for key, value in cause.spread.items()}
            merged[first] = _merged(findings[index[cause.lead]], replace(cause, spread=spread))
            dropped.update(rest)
    return [merged.get(i, f) for i, f in enumerate(findings) if i not in dropped]
