"""The performance rules over many ranks at once: one finding per cause with its ranks, bounded
slow-step output, stragglers named together. Inputs are the rules' true input, per-rank frames
(the report stage and the rules only ever see these), built for 128 identical ranks."""

from __future__ import annotations

import pytest

from rank_helpers import timing_of
from tracemortem.config import Config
from tracemortem.detect import perf
from tracemortem.detect.ranks import merge_across_ranks, ranks_text
from tracemortem.findings import Finding


def findings_of(timing, rule) -> list:
    return rule(perf.PerfInputs.of(timing, None, Config()), Config())


def test_identical_ranks_give_one_finding_per_cause_with_every_rank():
    timing = timing_of(128, slow_every_rank=False)
    for rule, rule_id in ((perf.gpu_idle, "gpu-idle"), (perf.dataloader_bound, "dataloader-bound")):
        [finding] = findings_of(timing, rule)
        assert finding.rule == rule_id and finding.rank is None
        assert finding.evidence["ranks"] == list(range(128))
        assert finding.message.startswith("Seen on ranks 0–127 (128 ranks)")
        first = next(iter(finding.evidence["spread"].values()))
        assert first["median"] == first["worst"]  # identical ranks: no spread
    # Nothing left for the merge that runs after every rule.
    findings = findings_of(timing, perf.gpu_idle)
    assert merge_across_ranks(findings) == findings


def test_one_rank_keeps_its_own_finding():
    [finding] = findings_of(timing_of(1, slow_every_rank=False), perf.gpu_idle)
    assert finding.rank == 0 and "ranks" not in finding.evidence
    assert finding.evidence["idle_share"] == 0.6


def test_slow_steps_on_many_ranks_are_bounded_and_counted():
    ranks, most = 128, int(Config()[perf.SLOW_STEP_MAX])
    findings = findings_of(timing_of(ranks), perf.slow_steps)
    warnings = [f for f in findings if f.severity == "warning"]
    [counted] = [f for f in findings if f.severity == "info"]
    # Every rank's slow step is explained by aten::op2; a step slow on several ranks is one warning.
    assert 0 < len(warnings) <= most
    assert {f.subject for f in warnings} == {"aten::op2"}
    listed = {r for f in warnings for r in (f.evidence.get("ranks") or [f.rank])}
    assert len(listed) + counted.evidence["slow_steps"] == ranks  # none lost, none twice
    assert set(counted.evidence["ranks"]) == set(range(ranks)) - listed
    assert counted.evidence["by_subject"] == {"aten::op2": counted.evidence["slow_steps"]}
    assert len(counted.evidence["steps"]) == 50


def test_several_stragglers_are_one_finding_that_names_them():
    timing = timing_of(64, slow_every_rank=False, stragglers=(5, 40))
    [finding] = findings_of(timing, perf.straggler_ranks)
    assert finding.rank is None and finding.evidence["ranks"] == [5, 40]
    assert finding.title == "2 ranks are slower than the other ranks"
    assert finding.evidence["spread"]["median_skew"]["worst"] == pytest.approx(0.3, abs=0.01)
    [alone] = findings_of(timing_of(64, slow_every_rank=False, stragglers=(9,)), perf.straggler_ranks)
    assert alone.rank == 9 and alone.subject == "rank 9"


@pytest.mark.parametrize(
    ("ranks", "text"),
    [
        ([3], "rank 3"),
        (list(range(8)), "ranks 0–7"),
        ([*range(512), *range(513, 1024)], "ranks 0–511, 513–1023"),
        (list(range(0, 40, 2)), "ranks 0, 2, 4, 6, 8, 10, 12, 14 and 12 more"),
    ],
)
def test_rank_lists_are_compact(ranks, text):
    assert ranks_text(ranks) == text


def test_findings_built_per_rank_merge_with_evidence_named_like_a_key():
    def finding(rank: int, norm: float) -> Finding:
        return Finding(
            "exploding-gradient",
            "error",
            "t",
            f"m{rank}",
            step=7,
            rank=rank,
            subject="w",
            evidence={"step": 7, "norm": norm},
        )

    [merged] = merge_across_ranks([finding(0, 3.0), finding(1, 4.0), finding(2, 1.0)])
    assert merged.rank is None and merged.step == 7 and merged.evidence["ranks"] == [0, 1, 2]
    assert merged.evidence["spread"]["norm"] == {"median": 3.0, "worst": 4.0, "worst_rank": 1}
    assert merged.message == "Seen on ranks 0–2 (3 ranks); rank 0 is the worst: m0"  # by the first number, step
