"""One finding per cause, not per rank: the step that runs after every rule.

Findings of the same rule, severity, subject and step on several ranks are one cause seen on many
ranks (32 identical data-parallel ranks are idle for the same reason). They become one finding
with `rank` null, `evidence.ranks`, and `evidence.spread`: for every number the findings' evidence
shares, its median, its largest value and the rank that has it (docs/findings-performance.md
"Many ranks"). The representative text is the worst rank's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import polars as pl

from ..findings import Finding

_KEYS = ["rule", "severity", "subject", "step"]


def _numbers(evidence: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in evidence.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _ranks_text(ranks: list[int]) -> str:
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}–{ranks[-1]}"
    shown = ", ".join(str(r) for r in ranks[:8])
    return f"ranks {shown}" + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")


def merge_across_ranks(findings: list[Finding]) -> list[Finding]:
    """`findings` with every group of same-cause findings on two or more ranks merged into one."""
    if not findings:
        return findings
    table = pl.DataFrame(
        {
            "i": range(len(findings)),
            "rule": [f.rule for f in findings],
            "severity": [f.severity for f in findings],
            "subject": [f.subject for f in findings],
            "step": [f.step for f in findings],
            "rank": [f.rank for f in findings],
        },
        schema={
            "i": pl.Int64,
            "rule": pl.String,
            "severity": pl.String,
            "subject": pl.String,
            "step": pl.Int64,
            "rank": pl.Int64,
        },
    )
    groups = (
        table.filter(pl.col("rank").is_not_null())
        .group_by(_KEYS, maintain_order=True)
        .agg(pl.col("i"), pl.col("rank"))
        .filter(pl.col("rank").list.n_unique() > 1)
    )
    if groups.is_empty():
        return findings
    long = pl.DataFrame(
        [
            {"i": i, "key": key, "value": value}
            for members in groups["i"].to_list()
            for i in members
            for key, value in _numbers(findings[i].evidence).items()
        ],
        schema={"i": pl.Int64, "key": pl.String, "value": pl.Float64},
    )
    members = groups.with_row_index("group").explode("i", "rank").select("group", "i", "rank")
    spread = (
        long.join(members, on="i")
        .group_by("group", "key", maintain_order=True)
        .agg(
            pl.len().alias("n"),
            pl.col("value").median().alias("median"),
            pl.col("value").max().alias("worst"),
            pl.col("rank").sort_by("value", descending=True).first().alias("worst_rank"),
            pl.col("i").sort_by("value", descending=True).first().alias("worst_i"),
        )
        .join(members.group_by("group").len().rename({"len": "size"}), on="group")
        .filter(pl.col("n") == pl.col("size"))  # numbers every member has
    )
    merged: dict[int, Finding] = {}
    dropped: set[int] = set()
    for group, (indices, ranks) in enumerate(zip(groups["i"].to_list(), groups["rank"].to_list())):
        mine = spread.filter(pl.col("group") == group)
        # The worst rank by the first shared number (the rule's headline figure) speaks for all.
        worst_i = mine["worst_i"][0] if mine.height else indices[0]
        lead = findings[worst_i]
        ranks = sorted(set(ranks))
        evidence = {
            **lead.evidence,
            "ranks": ranks,
            "spread": {
                row["key"]: {"median": row["median"], "worst": row["worst"], "worst_rank": row["worst_rank"]}
                for row in mine.iter_rows(named=True)
            },
        }
        merged[indices[0]] = replace(
            lead,
            rank=None,
            message=f"Seen on {_ranks_text(ranks)} ({len(ranks)} ranks); rank {lead.rank} is the worst: {lead.message}",
            evidence=evidence,
        )
        dropped.update(indices[1:])
    return [merged.get(i, f) for i, f in enumerate(findings) if i not in dropped]
