"""Timing on hand-made TraceSet frames (exact expected numbers) and on a real profiled CPU loop."""

from __future__ import annotations

import polars as pl
import pytest

from perf_helpers import ACTIVE, profiled_loop, timing_of
from tracemortem.load.traces import EVENTS_SCHEMA, GPU_SCHEMA, STEPS_SCHEMA, TraceSet
from tracemortem.timing import summarize


def cpu_event(name, ts, dur, tid="1", cat="cpu_op", step=None, **extra):
    row = {c: None for c in EVENTS_SCHEMA}
    row.update(rank=0, session=0, name=name, cat=cat, ts=ts, dur=dur, pid="1", tid=tid, step=step, **extra)
    return row


def gpu_event(name, ts, dur, kind="kernel", step=1, launch_ts=None, launch_dur=None, correlation=None):
    return {
        "rank": 0,
        "session": 0,
        "name": name,
        "kind": kind,
        "ts": ts,
        "dur": dur,
        "stream": 7,
        "correlation": correlation,
        "step": step,
        "launch_name": "cudaLaunchKernel",
        "launch_ts": launch_ts,
        "launch_dur": launch_dur,
        "op": None,
    }


def trace_set(events, steps=(), gpu=()):
    gpu_rows = list(gpu)
    cat_of = {"kernel": "kernel", "memcpy": "gpu_memcpy", "memset": "gpu_memset"}
    mirrored = [
        cpu_event(g["name"], g["ts"], g["dur"], tid="7", cat=cat_of[g["kind"]], stream=7, correlation=g["correlation"])
        for g in gpu_rows
    ]
    return TraceSet(
        events=pl.DataFrame(list(events) + mirrored, schema=EVENTS_SCHEMA),
        profiler_steps=pl.DataFrame(list(steps), schema=STEPS_SCHEMA, orient="row"),
        gpu=pl.DataFrame(gpu_rows, schema=GPU_SCHEMA),
        ranks={0: {}},
    )


def test_self_time_subtracts_direct_children_only_and_absorbs_ns_bleed():
    events = [
        cpu_event("ProfilerStep#1", 0, 1000_000, cat="user_annotation", step=1),
        cpu_event("aten::linear", 100_000, 600_000, step=1),
        cpu_event("aten::addmm", 150_000, 400_000, step=1),
        cpu_event("aten::copy_", 200_000, 100_000, step=1),
        # Starts 300 ns before its sibling ends (Kineto rounding): still a sibling, not a child.
        cpu_event("aten::t", 549_700, 100_000, step=1),
        cpu_event("aten::relu", 100_000, 50_000, tid="2", step=1),  # other thread: not nested in linear
    ]
    ops = {r["name"]: r for r in summarize(trace_set(events, [(0, 0, 1, 0, 1000_000)])).ops.iter_rows(named=True)}
    assert ops["aten::linear"]["self_ns"] == 600_000 - 400_000 - 100_000
    assert ops["aten::addmm"]["self_ns"] == 400_000 - 100_000
    assert ops["aten::copy_"]["self_ns"] == 100_000
    assert ops["aten::t"]["self_ns"] == 100_000
    assert ops["aten::relu"]["self_ns"] == 50_000
    assert "ProfilerStep#1" not in ops


def test_step_waterfall_parts_sum_to_the_step_and_follow_priority():
    steps = [(0, 0, 1, 0, 1000_000), (0, 0, 2, 1000_000, 1000_000)]
    events = [
        cpu_event("ProfilerStep#1", 0, 1000_000, cat="user_annotation", step=1),
        cpu_event("ProfilerStep#2", 1000_000, 1000_000, cat="user_annotation", step=2),
        cpu_event(
            "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 0, 300_000, cat="user_annotation", step=1
        ),
        cpu_event("cudaStreamSynchronize", 700_000, 200_000, cat="cuda_runtime", step=1),
    ]
    gpu = [
        gpu_event("gemm", 250_000, 300_000),  # overlaps 50 µs of data loading: GPU busy wins
        gpu_event("ncclKernel_AllReduce", 500_000, 100_000),  # 50 µs under gemm, 50 µs exposed
        gpu_event("Memcpy DtoH (Device -> Pinned)", 900_000, 200_000, kind="memcpy"),  # crosses into step 2
    ]
    timing = summarize(trace_set(events, steps, gpu))
    first, second = timing.steps.sort("step").iter_rows(named=True)
    assert first["compute_ns"] == 300_000
    assert first["comm_ns"] == 50_000
    assert first["memcpy_ns"] == 100_000
    assert first["data_loading_ns"] == 250_000
    assert first["host_sync_ns"] == 200_000 - 0  # 700–900 µs: GPU idle there
    parts = ("compute_ns", "comm_ns", "memcpy_ns", "memset_ns", "data_loading_ns", "host_sync_ns", "other_ns")
    assert sum(first[p] for p in parts) == first["duration_ns"]
    assert first["total_data_loading_ns"] == 300_000
    assert first["total_gpu_idle_ns"] == 1000_000 - 300_000 - 50_000 - 100_000
    assert second["memcpy_ns"] == 100_000 and sum(second[p] for p in parts) == 1000_000


def test_temporal_breakdown_overlap_and_launch_stats_by_hta_definitions():
    gpu = [
        gpu_event("gemm", 1_000_000, 2_000_000, launch_ts=990_000, launch_dur=5_000, correlation=1),
        gpu_event("ncclKernel_AllReduce", 2_000_000, 2_000_000, launch_ts=1_995_000, launch_dur=5_000, correlation=2),
        gpu_event("relu", 6_000_000, 1_000, launch_ts=5_000_000, launch_dur=8_000, correlation=3),
    ]
    timing = summarize(trace_set([], [], gpu))
    entry = timing.ranks[0]
    # span 1000–6001 µs; union 1000–4000 and 6000–6001; compute = gemm ∪ relu.
    assert entry["gpu"]["span_us"] == 5001
    assert entry["gpu"]["idle_us"] == 5001 - 3001
    assert entry["gpu"]["compute_us"] == 2001
    assert entry["gpu"]["non_compute_us"] == 5001 - 2001 - 2000
    assert entry["gpu"]["comm_overlap"] == pytest.approx(1000 / 2000)
    assert entry["launch"]["launches"] == 3
    assert entry["launch"]["shorter_than_launch"] == 1  # relu: 1 µs on the GPU, 8 µs to launch
    assert entry["launch"]["delay_outliers"] == 1  # relu started 1000 µs after its launch
    kernels = {r["name"]: r for r in timing.kernels.iter_rows(named=True)}
    assert kernels["ncclKernel_AllReduce"]["type"] == "COMMUNICATION" and kernels["gemm"]["calls"] == 1


@pytest.fixture(scope="module")
def cpu_timing(tmp_path_factory):
    return timing_of(profiled_loop(tmp_path_factory.mktemp("plain")))


def test_real_cpu_trace_ops_and_steps(cpu_timing):
    assert cpu_timing.step_span() == {"first": 1, "last": ACTIVE, "count": ACTIVE}
    ops = cpu_timing.ops
    mm = ops.filter(pl.col("name").cast(pl.String) == "aten::addmm")
    assert mm["calls"].sum() == 3 * ACTIVE  # three Linear layers forward, once per profiled step
    assert (ops["self_ns"] <= ops["total_ns"]).all()
    linear = ops.filter(pl.col("name").cast(pl.String) == "aten::linear").row(0, named=True)
    assert linear["self_ns"] < linear["total_ns"]  # addmm runs inside it
    steps = cpu_timing.steps
    assert steps.height == ACTIVE and steps["compute_ns"].null_count() == ACTIVE  # no GPU on this rank
    parts = ["data_loading_ns", "host_sync_ns", "other_ns"]
    assert (steps.select(pl.sum_horizontal(parts)).to_series() == steps["duration_ns"]).all()
    assert (steps["total_data_loading_ns"] > 0).all()
    assert cpu_timing.ranks == [
        {"rank": 0, "steps": ACTIVE, "step_time_s": pytest.approx(steps["duration_ns"].median() / 1e9)}
    ]


def test_htas_rounding_never_makes_a_negative_time_in_the_output():
    """A 0.4 µs memcpy inside no whole µs: HTA's view gives it −1 µs, and the breakdown a
    negative non-compute time; the exact view stands in for that session."""
    gpu = [
        gpu_event("gemm", 1_000_000, 5_000_000, launch_ts=990_000, launch_dur=5_000, correlation=1),
        gpu_event("Memcpy HtoD (Pageable -> Device)", 10_200, 400, kind="memcpy", correlation=2),
    ]
    gpu[1]["ts"] = 10_200_200  # 10200.2 µs: rounds up to 10201, its end down to 10200
    timing = summarize(trace_set([], [], gpu))
    [entry] = timing.ranks
    [session] = entry["gpu"]["sessions"]
    assert session["view"] == "exact"
    assert min(entry["gpu"][k] for k in ("idle_us", "compute_us", "non_compute_us")) >= 0
    assert entry["gpu"]["non_compute_us"] == pytest.approx(0.4)
    assert entry["gpu"]["span_us"] == pytest.approx(10_200.6 - 1_000)
    kernels = {r["name"]: r for r in timing.kernels.iter_rows(named=True)}
    assert kernels["Memcpy HtoD (Pageable -> Device)"]["hta_sum_us"] == 0  # exact 0.4 µs, not HTA's −1
