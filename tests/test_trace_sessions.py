"""Several profiling sessions of one rank: real torch.profiler runs with schedule(repeat=2), the
Recorder's ProfileSchedule(repeat=2), and a folder of unrelated real GPU traces that all claim
rank 0. Each session is its own timeline; nothing is merged across them."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from torch.profiler import ProfilerActivity, profile, schedule

import tracemortem
from trace_helpers import REAL_TRACES
from tracemortem.analysis import analyze
from tracemortem.load.traces import load_traces
from tracemortem.timing import summarize


def by_rule(findings, rule):
    return [f for f in findings if f.rule == rule]


def _two_cycle_traces(folder: Path) -> list[Path]:
    """One process, schedule(wait=1, warmup=1, active=2, repeat=2): two trace files, the wait steps
    between the cycles doing other work (a pause), as an evaluation between two windows would."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(prof):
        written.append(folder / f"cycle{len(written)}.pt.trace.json")
        prof.export_chrome_trace(str(written[-1]))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with profile(
        activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=2, repeat=2), on_trace_ready=save
    ) as prof:
        for step in range(8):
            if step == 4:
                time.sleep(0.2)  # between the cycles: a gap no session contains
            loss = model(torch.randn(16, 32)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            prof.step()
    return written


@pytest.fixture(scope="module")
def two_cycles(tmp_path_factory) -> list[Path]:
    return _two_cycle_traces(tmp_path_factory.mktemp("cycles"))


def test_profiler_repeat_makes_two_sessions_of_one_run(two_cycles):
    assert len(two_cycles) == 2
    traces = load_traces(dict.fromkeys(two_cycles, 0))
    sessions = traces.sessions
    assert sessions.height == 2 and sessions["rank"].to_list() == [0, 0]
    first, second = sessions.sort("start_ns").iter_rows(named=True)
    assert first["end_ns"] <= second["start_ns"] and first["last_step"] < second["first_step"]
    [note] = by_rule(traces.notes, "trace-sessions")
    assert note.severity == "info" and note.evidence["sessions"] == 2
    # every event is linked only within its own file: a step's events all come from one session
    stepped = traces.events.filter(pl.col("step").is_not_null())
    per_step = stepped.group_by("step").agg(pl.col("session").n_unique())
    assert (per_step["session"] == 1).all()
    timing = summarize(traces)
    steps = timing.steps
    assert steps.height == 4 and steps.group_by("session").len()["len"].to_list() == [2, 2]
    parts = ["data_loading_ns", "host_sync_ns", "other_ns"]
    assert (steps.select(pl.sum_horizontal(parts)).to_series() == steps["duration_ns"]).all()


def test_two_sessions_with_the_same_step_numbers_are_not_one_run(two_cycles, tmp_path):
    """The same trace twice (a copy under another name): overlapping times, same steps."""
    copy = tmp_path / "copy.pt.trace.json"
    shutil.copy(two_cycles[0], copy)
    traces = load_traces({two_cycles[0]: 0, copy: 0})
    [note] = by_rule(traces.notes, "trace-sessions")
    assert note.severity == "warning" and "overlapping" in note.message
    timing = summarize(traces)
    # each copy's steps are its own: two step rows per step number, not one merged window
    assert timing.steps.group_by("step").len()["len"].to_list() == [2, 2]
    assert timing.steps["duration_ns"].n_unique() <= 2


@pytest.mark.slow
def test_recorder_profile_schedule_repeat_two_is_two_sessions(tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = tracemortem.ProfileSchedule(wait=1, warmup=1, active=2, repeat=2, skip_first=0)
    with tracemortem.Recorder(tmp_path, model, opt, profile=sched) as rec:
        for _ in range(10):
            loss = torch.nn.functional.mse_loss(model(torch.randn(8, 16)), torch.randn(8, 1))
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    analysis = analyze(tmp_path)
    [note] = by_rule(analysis.findings, "trace-sessions")
    assert note.severity == "info" and note.evidence["sessions"] == 2 and note.rank == 0
    assert analysis.step_times.height == 4 and analysis.step_times["session"].n_unique() == 2


# Real traces of three different jobs whose own distributedInfo says rank 0.
GPU_TRACES = {"v100_single": "*.json*", "nccl_a100": "rank-0.json.gz", "two_rank_sampled": "rank-0.json.gz"}


@pytest.mark.skipif(not (REAL_TRACES / "hta_reference.json").is_file(), reason="shared/real_traces not present")
def test_unrelated_gpu_traces_claiming_one_rank_are_analysed_apart(tmp_path):
    """Copied into one folder, they all claim rank 0. Each keeps HTA's own idle and compute time;
    the rank's totals are their sums, so the time between them is not idle; shares stay <= 100 %."""
    reference = json.loads((REAL_TRACES / "hta_reference.json").read_text())
    for folder, pattern in GPU_TRACES.items():
        [source] = (REAL_TRACES / folder).glob(pattern)
        shutil.copy(source, tmp_path / f"{folder}.json.gz")
    analysis = analyze(tmp_path)
    [note] = by_rule(analysis.findings, "trace-sessions")
    assert note.severity == "warning" and note.evidence["sessions"] == 3
    [entry] = analysis.run.to_dict()["ranks"]
    gpu = entry["gpu"]
    sessions = {s["file"].removesuffix(".json.gz"): s for s in gpu["sessions"]}
    for folder in GPU_TRACES:
        hta = next(r for r in reference[folder]["temporal"] if r["rank"] == 0)
        assert sessions[folder]["idle_us"] == pytest.approx(hta["idle_time(us)"], rel=0.01, abs=2), folder
        assert sessions[folder]["compute_us"] == pytest.approx(hta["compute_time(us)"], rel=0.01, abs=2), folder
    assert gpu["idle_us"] == pytest.approx(sum(s["idle_us"] for s in sessions.values()))
    assert 0 <= gpu["idle_us"] <= gpu["span_us"]
    for finding in analysis.findings:
        for key, value in finding.evidence.items():
            if "share" in key and isinstance(value, (int, float)):
                assert 0 <= value <= 1, (finding.rule, key, value)
