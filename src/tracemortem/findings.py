"""What the analyzer reports: `Finding` records with stable rule ids (docs/findings-health.md, docs/findings-performance.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITIES)}

HEALTH_RULES = (
    "nonfinite-gradient",
    "nonfinite-loss",
    "exploding-gradient",
    "vanishing-gradient",
    "dead-parameter",
    "unused-parameter",
    "update-ratio",
    "loss-spike",
    "amp-overflow",
    "run-resumed",
    "zero-gradient",
    "grad-clipping",
    "nonfinite-origin",
    "dead-activation",
    "saturated-activation",
    "activation-growth",
)
PERF_RULES = (
    "slow-op",
    "slow-step",
    "dataloader-bound",
    "host-sync",
    "gpu-idle",
    "launch-bound",
    "straggler-rank",
    "memory-growth",
)
INPUT_RULES = ("trace-truncated", "input-error", "trace-sessions", "trace-unsupported")
RULES = HEALTH_RULES + PERF_RULES + INPUT_RULES


def _plain(value: Any) -> Any:
    """Evidence values as plain Python (NaN and infinities stay floats: the JSON writer turns
    them into `null` and names them, see report/strict_json.py)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return value


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    title: str
    message: str
    step: int | None = None
    rank: int | None = None
    subject: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    suggestion: str = ""

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown rule id {self.rule!r}")
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "step": self.step,
            "rank": self.rank,
            "subject": self.subject,
            "evidence": _plain(self.evidence),
            "suggestion": self.suggestion,
        }


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Severity first (error → info), then step (findings without a step last), then rule."""
    return sorted(
        findings,
        key=lambda f: (
            SEVERITY_RANK[f.severity],
            f.step is None,
            f.step if f.step is not None else 0,
            f.rule,
            f.rank if f.rank is not None else -1,
            f.subject or "",
        ),
    )


def at_or_above(findings: list[Finding], severity: str) -> list[Finding]:
    limit = SEVERITY_RANK[severity]
    return [f for f in findings if SEVERITY_RANK[f.severity] <= limit]


def cap_per_rule(findings: list[Finding], most: int) -> list[Finding]:
    """At most `most` findings of each rule, keeping the order (the first are the most severe and
    earliest when `findings` is sorted); the rest of a rule become one finding that counts them."""
    kept: list[Finding] = []
    left_out: dict[str, list[Finding]] = {}
    seen: dict[str, int] = {}
    for finding in findings:
        seen[finding.rule] = seen.get(finding.rule, 0) + 1
        if seen[finding.rule] <= most:
            kept.append(finding)
        else:
            left_out.setdefault(finding.rule, []).append(finding)
    for rule, rest in left_out.items():
        kept.append(
            Finding(
                rule,
                min((f.severity for f in rest), key=SEVERITY_RANK.__getitem__),
                f"{len(rest)} more {rule} findings not listed",
                f"{len(rest)} further {rule} findings, after the {most} listed, are counted here and not listed "
                f"one by one (TRACEMORTEM_MAX_FINDINGS_PER_RULE).",
                evidence={
                    "not_listed": len(rest),
                    "by_severity": {s: sum(f.severity == s for f in rest) for s in SEVERITIES},
                },
                suggestion="Fix the listed ones first: many findings of one rule usually share one cause.",
            )
        )
    return kept
