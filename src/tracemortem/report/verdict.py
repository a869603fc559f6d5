"""The verdict every document opens with: one or two sentences built from the findings — what
went wrong, when, where — and the first thing to try (docs/report.md, "Verdict")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..findings import Finding

if TYPE_CHECKING:
    from ..analysis import Analysis

# What each rule means, as the subject of a sentence; other rules use the finding's title.
_WHAT = {
    "exploding-gradient": "gradients exploded",
    "nonfinite-gradient": "gradients became NaN/Inf",
    "nonfinite-loss": "the loss became NaN/Inf",
    "vanishing-gradient": "gradients vanished",
    "zero-gradient": "every gradient was zero",
    "dead-parameter": "parameters stopped learning",
    "unused-parameter": "parameters never received a gradient",
    "update-ratio": "updates were out of scale with the weights",
    "loss-spike": "the loss spiked",
    "amp-overflow": "mixed-precision overflow skipped steps",
    "slow-step": "steps ran slow",
    "slow-op": "one op dominated the step time",
    "dataloader-bound": "training waited on the data loader",
    "host-sync": "the host waited on the GPU",
    "gpu-idle": "the GPU sat idle",
    "launch-bound": "kernel launches limited throughput",
    "straggler-rank": "one rank lagged behind the others",
    "memory-growth": "memory grew steadily",
    "trace-truncated": "a trace file was cut short",
    "input-error": "part of the input could not be read",
}
# Findings that follow from an earlier one rather than explain it.
_CONSEQUENCES = {"nonfinite-loss", "nonfinite-gradient", "loss-spike"}


@dataclass(frozen=True)
class Verdict:
    headline: str  # what went wrong, when and where
    first_try: str  # the lead finding's first suggestion, or ""
    anchor: str  # the lead finding's anchor in the HTML report (`finding-N`), or ""
    severity: str  # the lead finding's severity, or "ok"


def _clause(f: Finding, many_ranks: bool) -> str:
    title = f.title.rstrip(".")
    # A title with a number in it ("The GPU is idle 78% of the time") says more than the rule.
    specific = re.search(r"\d", title.replace(f.subject, "") if f.subject else title)
    what = title[:1].lower() + title[1:] if specific or f.rule not in _WHAT else _WHAT[f.rule]
    where = f" at step {f.step}" if f.step is not None else ""
    if f.subject:
        where += f" in {f.subject}"
    if f.rank is not None and many_ranks:
        where += f" on rank {f.rank}"
    return what + where


def _first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=[.;])\s", text.strip(), maxsplit=1)[0].rstrip(".;")
    return sentence[:1].upper() + sentence[1:] if sentence else ""


def lead_finding(findings: list[Finding]) -> int | None:
    """Index of the finding the verdict is about: the most severe, and among those the one that
    explains the others (a cause before its consequences), then the earliest."""
    if not findings:
        return None
    worst = findings[0].severity  # findings arrive sorted by severity, then step
    candidates = [i for i, f in enumerate(findings) if f.severity == worst]
    return min(
        candidates,
        key=lambda i: (
            findings[i].rule in _CONSEQUENCES,
            findings[i].step if findings[i].step is not None else 1 << 62,
            i,
        ),
    )


def verdict(findings: list[Finding], steps: int | None = None, many_ranks: bool = False) -> Verdict:
    lead = lead_finding(findings)
    if lead is None:
        counted = f" in {steps} step{'s' if steps != 1 else ''}" if steps else ""
        return Verdict(f"No problems found{counted}.", "", "", "ok")
    first = findings[lead]
    sentence = _clause(first, many_ranks)
    follow = next(
        (
            f
            for f in findings
            if f is not first and f.rule != first.rule and f.severity == first.severity and f.step is not None
        ),
        None,
    )
    if follow is not None:
        sentence += f"; then {_clause(follow, many_ranks)}"
    headline = sentence[:1].upper() + sentence[1:] + "."
    return Verdict(headline, _first_sentence(first.suggestion), f"finding-{lead + 1}", first.severity)


def report_verdict(analysis: Analysis) -> Verdict:
    return verdict(analysis.findings, analysis.run.steps.count or None, analysis.run.world_size > 1)
