"""One finding per cause, not per rank: the merge that runs after every rule, on real two-rank GPU
traces and on the recorder steps of eight identical ranks."""

from __future__ import annotations

import polars as pl
import pytest

from perf_helpers import recorder_steps
from trace_helpers import REAL_TRACES
from tracemortem.analysis import analyze
from tracemortem.config import Config
from tracemortem.detect import perf
from tracemortem.detect.ranks import merge_across_ranks
from tracemortem.load.traces import load_traces
from tracemortem.timing import summarize


@pytest.mark.skipif(not (REAL_TRACES / "two_rank_sampled").is_dir(), reason="shared/real_traces not present")
def test_gpu_idle_on_both_ranks_is_one_finding_with_the_spread():
    folder = REAL_TRACES / "two_rank_sampled"
    timing = summarize(load_traces({p: None for p in folder.glob("*.json*")}))
    shares = {e["rank"]: round(e["gpu"]["idle_us"] / e["gpu"]["span_us"], 4) for e in timing.ranks}
    assert sorted(shares) == [0, 1] and min(shares.values()) >= 0.5  # both ranks idle: one cause
    [merged] = [f for f in perf.detect(timing, None, Config()) if f.rule == "gpu-idle"]
    assert merged.rank is None and merged.evidence["ranks"] == [0, 1]
    spread = merged.evidence["spread"]["idle_share"]
    worst = max(shares, key=shares.get)
    assert spread["worst"] == shares[worst] and spread["worst_rank"] == worst
    assert spread["median"] == pytest.approx(sum(shares.values()) / 2)
    assert merged.evidence["idle_us"] == timing.ranks[worst]["gpu"]["idle_us"]  # the worst rank speaks
    assert [f for f in analyze(folder).findings if f.rule == "gpu-idle"] == [merged]


def test_eight_leaking_ranks_are_one_memory_growth_finding():
    n, mib = 200, 2**20
    ranks = {r: [0.1] * n for r in range(8)}
    memory = {r: [2000 * mib + step * (2 + r % 2) * mib for step in range(n)] for r in range(8)}
    [merged] = perf.memory_growth(perf.PerfInputs(None, pl.DataFrame(), recorder_steps(ranks, memory)), Config())
    assert merged.rank is None and merged.evidence["ranks"] == list(range(8))
    per_step = merged.evidence["spread"]["bytes_per_step"]
    assert per_step["worst"] == pytest.approx(3 * mib, rel=0.05) and per_step["worst_rank"] % 2 == 1
    assert per_step["median"] == pytest.approx(2.5 * mib, rel=0.05)
    assert "ranks 0–7" in merged.message


def test_findings_of_different_causes_are_kept_apart():
    steps = recorder_steps({0: [0.10] * 40, 1: [0.101] * 40, 2: [0.13] * 40, 3: [0.099] * 40})
    durations = steps.select("rank", "step", pl.col("duration_s").alias("seconds"))
    stragglers = perf.straggler_ranks(perf.PerfInputs(None, durations, pl.DataFrame()), Config())
    assert merge_across_ranks(stragglers) == stragglers  # one rank: nothing to merge
