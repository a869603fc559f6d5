"""Parity with Holistic Trace Analysis 0.5 on real GPU traces (shared/real_traces/hta_reference.json)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import polars as pl
import pytest

from trace_helpers import REAL_TRACES
from tracemortem.load.traces import load_traces
from tracemortem.timing import summarize
from tracemortem.timing.gpu import hta_gpu_events, hta_view

REFERENCE = REAL_TRACES / "hta_reference.json"
# HTA 0.5.0's launch statistics and temporal breakdown on more folders (scripts/hta_reference.py).
MORE_REFERENCE = json.loads((Path(__file__).parent / "data" / "hta_launch_reference.json").read_text())["folders"]
pytestmark = pytest.mark.skipif(not REFERENCE.is_file(), reason="shared/real_traces not present")


def reference() -> dict:
    return json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}


@pytest.fixture(scope="module")
def timings():
    cache = {}

    def get(folder: str):
        if folder not in cache:
            path = REAL_TRACES / folder if (REAL_TRACES / folder).is_dir() else REAL_TRACES / "more" / folder
            files = {p: None for p in sorted(path.glob("*.json*"))}
            traces = load_traces(files)
            cache[folder] = (traces, summarize(traces))
        return cache[folder]

    return get


@pytest.mark.parametrize("folder", sorted(reference()))
def test_temporal_breakdown_matches_hta_within_one_percent(folder, timings):
    _, timing = timings(folder)
    ours = {e["rank"]: e["gpu"] for e in timing.ranks if "gpu" in e}
    for row in reference()[folder]["temporal"]:
        gpu = ours[row["rank"]]
        for key, ref_key in (
            ("idle_us", "idle_time(us)"),
            ("compute_us", "compute_time(us)"),
            ("non_compute_us", "non_compute_time(us)"),
            ("span_us", "kernel_time(us)"),
        ):
            assert gpu[key] == pytest.approx(row[ref_key], rel=0.01, abs=2), (folder, row["rank"], key)


@pytest.mark.parametrize("folder", sorted(reference()))
def test_kernel_totals_match_hta_kernel_breakdown(folder, timings):
    traces, timing = timings(folder)
    per_rank = (
        hta_view(hta_gpu_events(traces.events, traces.profiler_steps), traces.sessions)
        .group_by(pl.col("name").cast(pl.String), "rank")
        .agg(pl.col("dur").sum())
    )
    table = {r["name"]: r for r in timing.kernels.iter_rows(named=True)}
    for name, ref_sum in reference()[folder]["top_kernels_sum_us"].items():
        if name == "others":
            continue
        # HTA sums a kernel over the ranks where it made that rank's top list; the rest went to
        # "others". So the reference is our total on some subset of ranks.
        sums = dict(per_rank.filter(pl.col("name") == name).select("rank", "dur").iter_rows())
        subsets = [sum(c) for n in range(1, len(sums) + 1) for c in itertools.combinations(sums.values(), n)]
        assert any(s == pytest.approx(ref_sum, rel=0.01) for s in subsets), (folder, name, ref_sum, sums)
        assert table[name]["hta_sum_us"] == sum(sums.values())
        # The exact-ns total covers every call, the last profiler step included.
        assert table[name]["total_ns"] / 1000 >= sum(sums.values()) - table[name]["calls"]


def test_step_breakdown_partitions_real_gpu_steps(timings):
    traces, timing = timings("nccl_a100")
    steps = timing.steps
    parts = ["compute_ns", "comm_ns", "memcpy_ns", "memset_ns", "data_loading_ns", "host_sync_ns", "other_ns"]
    assert (steps.select(pl.sum_horizontal(parts)).to_series() == steps["duration_ns"]).all()
    assert (steps["comm_ns"] > 0).all() and (steps["compute_ns"] > 0).all()
    entry = timing.ranks[0]
    assert 0 < entry["gpu"]["comm_overlap"] < 1
    # HTA pairs only kernel/memcpy/memset launch calls, and leaves the last step out
    assert 0 < entry["launch"]["launches"] < traces.gpu.filter(pl.col("launch_ts").is_not_null()).height


@pytest.mark.parametrize("folder", sorted(MORE_REFERENCE))
def test_launch_statistics_are_htas(folder, timings):
    _, timing = timings(folder)
    ours = {e["rank"]: e.get("launch") for e in timing.ranks}
    for rank, ref in MORE_REFERENCE[folder]["launch"].items():
        if ref["launches"] == 0:  # HTA pairs no HIP launch call: neither does tracemortem
            assert ours[int(rank)] is None
            continue
        assert {k: ours[int(rank)][k] for k in ref} == pytest.approx(ref), (folder, rank)


@pytest.mark.parametrize("folder", sorted(MORE_REFERENCE))
def test_temporal_breakdown_of_more_folders_matches_hta(folder, timings):
    """Includes CUDA event-sync traces, whose stream -1 sync records are not GPU time."""
    _, timing = timings(folder)
    ours = {e["rank"]: e["gpu"] for e in timing.ranks if "gpu" in e}
    for row in MORE_REFERENCE[folder]["temporal"]:
        gpu = ours[row["rank"]]
        assert min(gpu["idle_us"], gpu["compute_us"], gpu["non_compute_us"]) >= 0
        for key, ref_key in (("idle_us", "idle_time(us)"), ("compute_us", "compute_time(us)")):
            assert gpu[key] == pytest.approx(row[ref_key], rel=0.01, abs=2), (folder, key)
