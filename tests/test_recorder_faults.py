"""The Recorder's promises (docs/recorder.md) under real faults, each in a real training process
(tests/recorder_fault_child.py): disk full (injected at the write boundary, and a real full
tmpfs), a stalling disk, SIGTERM, SIGKILL, an exception from the loop, and 2-rank gloo DDP.
Faults already covered in-process by test_recorder.py (run folder replaced by a file, one
failed chunk write, in-process exception, files readable after SIGKILL) are not repeated."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner

from recording_helpers import HANG_GUARD_S, batches, check_every_file_readable, mlp, read_grads, read_steps
from tracemortem import analyze
from tracemortem import format as fmt
from tracemortem.cli import main

CHILD = Path(__file__).with_name("recorder_fault_child.py")
WARNING_LINE = re.compile(r"^\S+:\d+: \w*Warning: tracemortem:", re.M)


def _child(mode: str, env: dict | None = None, group: bool = False, **args) -> subprocess.Popen:
    """The child process of MODE; with `group`, it leads a process group of its own (as a job
    step under Slurm or a torchrun worker does), so that os.killpg reaches it and its children."""
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=group,
    )


def _finish(proc: subprocess.Popen, timeout: float = HANG_GUARD_S) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def _report(run: Path) -> dict:
    result = CliRunner().invoke(main, ["report", str(run), "--format", "json", "-o", "-", "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# --- disk full ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory):
    """One training process, two runs with the disk full during steps 10-19: ENOSPC injected at
    the write boundary, and (where this process may mount) a real 2 MiB tmpfs filled up."""
    root = tmp_path_factory.mktemp("disk_full")
    runs = {"inject": root / "run"}
    mount = root / "fs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode == 0:
        runs["tmpfs"] = mount / "run"
    result, stderr = _finish(_child("disk_full", runs={k: str(v) for k, v in runs.items()}))
    logs = dict(re.findall(r"^=== (\w+)\n(.*?)(?=^=== |\Z)", stderr, re.M | re.S))
    yield runs, result, logs, mounted.stderr.decode().strip()
    if mounted.returncode == 0:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _check_disk_full(run: Path, loss: float, reference: float, stderr: str, real_disk: bool = False) -> None:
    # Training is untouched: bit-identical to the same seeded loop without a recorder.
    assert loss == reference
    assert len(WARNING_LINE.findall(stderr)) == 1, stderr
    recorded = list(range(10)) + list(range(20, 30))  # steps 10-19 were due while the disk was full
    assert read_steps(run)["step"].to_list() == recorded
    grads = read_grads(run)["step"].unique().sort().to_list()
    if real_disk:
        # On a real full filesystem the recorder's own replaced files free a few blocks, so a
        # small grads chunk of those steps may still fit (its steps chunk did not: the steps
        # count as lost). What got there is whole chunks of five steps (flush_every).
        extra = set(grads) - set(recorded)
        assert set(recorded) <= set(grads) and extra <= set(range(10, 20)), grads
        assert all(set(range(s - s % 5, s - s % 5 + 5)) <= extra for s in extra), grads
    else:
        assert grads == recorded
    manifest = _manifest(run)
    assert manifest["status"] == "closed"
    assert (manifest["lost_steps"], manifest["dropped_steps"]) == (10, 0)
    assert any("No space left on device" in w for w in manifest["warnings"]), manifest["warnings"]
    # Checkpoints turn themselves off at their first failure (documented); the ones before stay.
    assert any(w.startswith("checkpoints disabled") for w in manifest["warnings"])
    assert sorted(p.name for p in (run / "rank0" / "checkpoints").glob("*.pt")) == [
        "step-00000004.pt",
        "step-00000009.pt",
    ]
    check_every_file_readable(run)
    assert not list(run.rglob(".*"))  # no temp files of the failed writes left behind
    # The report says what was lost, so a reader knows the charts have a gap.
    losses = [f for f in _report(run)["findings"] if f["title"] == "the recorder reported problems"]
    assert len(losses) == 1 and losses[0]["severity"] == "warning"
    assert losses[0]["evidence"]["lost_steps"] == 10


def test_disk_full_at_the_write_boundary(disk_full):
    runs, result, logs, _ = disk_full
    _check_disk_full(runs["inject"], result["inject"], result["reference"], logs["inject"])


def test_disk_full_on_a_real_full_filesystem(disk_full):
    runs, result, logs, why = disk_full
    if "tmpfs" not in runs:
        pytest.skip(f"cannot mount a tmpfs here: {why}")
    _check_disk_full(runs["tmpfs"], result["tmpfs"], result["reference"], logs["tmpfs"], real_disk=True)


# --- slow disk ------------------------------------------------------------------------------


def test_stalling_disk_never_stalls_training(tmp_path):
    result, stderr = _finish(_child("slow_disk", run=str(tmp_path / "slow")), timeout=HANG_GUARD_S)
    assert result["loss"] == result["reference"]
    # Every step ran while the disk held the writer's first write: no step waited for the disk.
    assert result["finished_while_held"] and result["held_writes"] >= 1
    assert result["training_thread_writes"] == 0  # not even once (e.g. a status write)
    assert result["longest_queue"] <= 8
    manifest, rows = _manifest(tmp_path / "slow"), read_steps(tmp_path / "slow")
    assert manifest["dropped_steps"] > 0 and manifest["lost_steps"] == 0
    # Every step is either on disk or counted as dropped; recording order is kept.
    assert rows.height + manifest["dropped_steps"] == 150
    assert rows["step"].is_sorted() and rows["step"][-1] == 149
    assert not WARNING_LINE.findall(stderr)  # dropping under back-pressure is counted, not warned


# --- signals --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    """The SIGTERM, SIGKILL and exception processes, started together to share start-up time."""
    runs = {name: tmp_path_factory.mktemp(name) for name in ("sigterm", "sigkill", "raise")}
    procs = {name: _child("loop", run=str(run), raise_at=7 if name == "raise" else None) for name, run in runs.items()}
    yield {name: (runs[name], procs[name]) for name in runs}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _when_ready(proc: subprocess.Popen) -> subprocess.Popen:
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_sigterm_flushes_and_the_analyzer_reads_a_crashed_run(loops):
    tmp_path, proc = loops["sigterm"]
    _when_ready(proc)  # it trains on: the signal lands in the middle of a step or between two
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == -signal.SIGTERM, stderr
    steps = read_steps(tmp_path)["step"].to_list()
    meta = json.loads((tmp_path / "rank0" / "meta.json").read_text())
    # Every completed rec.step() was flushed (the step cut by the signal may be there too).
    assert steps == list(range(len(steps))) and len(steps) - meta["steps"] in (0, 1)
    manifest = _manifest(tmp_path)
    # Killed, not finished: "crashed", with the end time and the cause.
    assert manifest["status"] == "crashed" and manifest["ended"]
    assert "terminated by SIGTERM" in manifest["warnings"]
    report = _report(tmp_path)
    assert report["run"]["status"] == "crashed"
    assert report["run"]["steps"]["last"] == steps[-1]
    assert not [f for f in report["findings"] if f["title"] == "run ended without an end marker"]
    crashed = [f for f in report["findings"] if f["title"] == "run crashed"]
    assert len(crashed) == 1 and crashed[0]["step"] == steps[-1]


def test_sigkill_is_reported_as_a_crash_at_the_last_whole_chunk(loops):
    tmp_path, proc = loops["sigkill"]
    _when_ready(proc)  # steps 0-19 are on disk by then
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD_S)
    check_every_file_readable(tmp_path)
    last = max(pl.read_parquet(p)["step"].max() for p in fmt.list_chunks(tmp_path / "rank0" / "steps"))
    assert last >= 19
    assert _manifest(tmp_path)["status"] == "running"
    report = _report(tmp_path)
    assert report["run"]["status"] == "crashed" and report["run"]["steps"]["last"] == last
    [end] = [f for f in report["findings"] if f["title"] == "run ended without an end marker"]
    assert end["step"] == last and end["evidence"]["last_step"] == last


# --- signals to the whole process group, with DataLoader workers -----------------------------


def _wait_for_file(path: Path, proc: subprocess.Popen, limit: float = HANG_GUARD_S) -> str:
    """The child writes `path` when it reaches a known step; its text."""
    deadline = time.monotonic() + limit
    while not path.exists() or not path.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"the child never wrote {path}"
        time.sleep(0.05)
    return path.read_text()


def _signal_group_during_training(tmp_path: Path, context: str, signum: int, pause: bool) -> tuple[Path, dict, list]:
    run, marker, handed = tmp_path / "run", tmp_path / "marker", tmp_path / "handed"
    proc = _child(
        "dataloader",
        group=True,
        run=str(run),
        context=context,
        marker=str(marker),
        handed=str(handed),
        marker_step=300,
        pause=pause,
    )
    started = json.loads(_wait_for_file(marker, proc))
    os.killpg(proc.pid, signum)  # what Slurm (scancel, time limit) and torchrun send
    try:
        _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        stacks = _stacks_of_group(proc)
        raise AssertionError(f"the group did not end (inherited: {started['inherited']}); stacks:\n{stacks}") from None
    assert proc.returncode == -signum, (started["inherited"], stderr)  # the process still ends by the signal
    # The samples really came from two worker processes, not the trainer.
    assert len(started["workers"]) == 2 and started["main"] not in started["workers"]
    return run, started, [int(line) for line in handed.read_text().split()]


def _stacks_of_group(proc: subprocess.Popen) -> str:
    """Every thread's stack of every process still in the child's group (faulthandler, SIGUSR1),
    and what `ps` says of them; the group is killed afterwards."""
    listing = subprocess.run(
        ["ps", "-o", "pid,ppid,stat,wchan:24,args", "-g", str(proc.pid)], capture_output=True, text=True
    )
    os.killpg(proc.pid, signal.SIGUSR1)
    time.sleep(2)  # a diagnostic after a failure, not a judgement: let the dumps reach stderr
    os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    return f"{listing.stdout}\n{stderr}"


def _check_nothing_lost(run: Path, started: dict, handed: list[int], note: str) -> None:
    on_disk = read_steps(run)["step"].to_list()
    # Every step handed to the recorder before the signal is on disk (the one the signal cut
    # may be there too); none of the ~300 buffered steps had been flushed before it.
    assert on_disk == list(range(len(on_disk))) and len(on_disk) - len(handed) in (0, 1), (len(on_disk), len(handed))
    assert on_disk[: len(handed)] == handed and len(handed) >= 301
    assert read_grads(run)["step"].unique().sort().to_list() == on_disk
    manifest, meta = _manifest(run), json.loads((run / "rank0" / "meta.json").read_text())
    assert manifest["status"] == meta["status"] == "crashed" and manifest["ended"] and meta["ended"]
    assert (manifest["lost_steps"], manifest["dropped_steps"], meta["disabled"]) == (0, 0, [])
    assert note in manifest["warnings"], manifest["warnings"]
    assert meta["pid"] == started["main"]  # written by the trainer, never by a worker
    assert not list(run.rglob(".*"))  # no temp file of an interrupted write left behind
    check_every_file_readable(run)
    report = _report(run)
    assert report["run"]["status"] == "crashed" and report["run"]["steps"]["last"] == on_disk[-1]


@pytest.mark.parametrize(
    "context, pause",
    [
        ("fork", False),
        pytest.param("forkserver", False, marks=pytest.mark.slow),
        pytest.param("spawn", True, marks=pytest.mark.slow),
    ],
)
def test_sigterm_to_the_process_group_with_dataloader_workers_loses_nothing(tmp_path, context, pause):
    run, started, handed = _signal_group_during_training(tmp_path, context, signal.SIGTERM, pause)
    if pause:  # parked after step 300 when the signal came: exactly steps 0-300 exist
        assert handed == list(range(301))
    _check_nothing_lost(run, started, handed, "terminated by SIGTERM")


def test_sigint_to_the_process_group_with_dataloader_workers_loses_nothing(tmp_path):
    """Ctrl-C in a terminal: SIGINT to the foreground group; KeyboardInterrupt leaves the loop."""
    run, started, handed = _signal_group_during_training(tmp_path, "fork", signal.SIGINT, pause=False)
    _check_nothing_lost(run, started, handed, "interrupted by SIGINT (KeyboardInterrupt)")


def test_forked_copies_never_write_or_handle_signals(tmp_path):
    result, _ = _finish(_child("forked_copy", run=str(tmp_path)))
    # The copy saw the handler from before the Recorder (the default), not the Recorder's.
    assert result["child"] == {"sigterm_is_recorder": False, "sigterm_is_default": True, "pending_grads": False}
    assert result["child_exit"] == 0  # it stepped, closed and ran its atexit hooks: all no-ops
    assert result["killed_exit"] == -signal.SIGTERM  # SIGTERM's default action, nothing first
    # While both copies were gone, the run directory still held the parent's running state.
    assert result["meta_between"] == {"pid": result["pid"], "status": "running", "ended": None}
    meta = json.loads((tmp_path / "rank0" / "meta.json").read_text())
    assert (meta["pid"], meta["status"], meta["steps"]) == (result["pid"], "closed", 10)
    assert read_steps(tmp_path)["step"].to_list() == list(range(10))
    assert read_grads(tmp_path)["step"].unique().sort().to_list() == list(range(10))


# --- exception from the loop ----------------------------------------------------------------


def test_exception_from_the_loop_propagates_unchanged(loops):
    tmp_path, proc = loops["raise"]
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 1
    # The interpreter's traceback: our exception, raised in the loop's own load(), nothing
    # chained or added on the way out of the with block.
    assert stderr.rstrip().endswith("ValueError: corrupt sample in batch 7"), stderr
    trace = stderr[stderr.index("Traceback") :]
    assert re.search(r"line \d+, in load\n\s+raise ValueError", trace), trace
    assert "During handling" not in trace and "tracemortem" not in trace.replace(str(CHILD), "")
    assert read_steps(tmp_path)["step"].to_list() == list(range(7))
    manifest = _manifest(tmp_path)
    assert manifest["status"] == "crashed" and manifest["ended"] and manifest["lost_steps"] == 0
    assert _report(tmp_path)["run"]["status"] == "crashed"


# --- two live processes on one rank directory ------------------------------------------------


def test_two_live_processes_on_one_rank_each_keep_their_data_and_the_second_warns(tmp_path):
    markers = [tmp_path / "a.ready", tmp_path / "b.ready"]
    go = tmp_path / "go"
    run = tmp_path / "run"
    first = _child("shared_rank", run=str(run), marker=str(markers[0]), go=str(go), seed=1)
    _wait_for_file(markers[0], first)
    second = _child("shared_rank", run=str(run), marker=str(markers[1]), go=str(go), seed=2)
    _wait_for_file(markers[1], second)
    go.write_text("")  # both are alive and recording rank 0 now
    (a, a_err), (b, b_err) = _finish(first), _finish(second)
    assert (a["attempt"], b["attempt"]) == (0, 1)
    assert not WARNING_LINE.findall(a_err)
    [warning] = WARNING_LINE.finditer(b_err)
    assert f"also being recorded by pid {a['pid']}" in b_err[warning.start() :]
    # Each kept all ten of its steps, in its own folder; neither overwrote the other.
    for folder, seed in ((run / "rank0", 1), (run / "rank0" / "attempts" / "1", 2)):
        steps = pl.read_parquet(folder / "steps" / "*.parquet").sort("step")
        assert steps["step"].to_list() == list(range(10))
        assert steps["loss"][0] == pytest.approx(_first_loss(seed), rel=1e-6)
    manifest = _manifest(run)
    assert [(t["attempt"], t["pid"], t["status"]) for t in manifest["attempts"]] == [
        (0, a["pid"], "closed"),
        (1, b["pid"], "closed"),
    ]
    assert manifest["lost_steps"] == manifest["dropped_steps"] == 0
    report = _report(run)
    [resumed] = [f for f in report["findings"] if f["rule"] == "run-resumed"]
    assert resumed["severity"] == "info" and resumed["rank"] == 0 and resumed["step"] == 0
    assert resumed["evidence"]["superseded_steps"] == 10  # the second started at step 0 too
    assert report["run"]["steps"]["count"] == 10


def _first_loss(seed: int) -> float:
    model = mlp(seed=seed)
    x, y = batches(1, seed=seed)[0]
    return torch.nn.functional.mse_loss(model(x), y).item()


# --- two ranks ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_grad_norms() -> list[list[float]]:
    """What DDP computes, without DDP: per step, the mean of both ranks' local gradients."""
    model = mlp(seed=0)
    params = list(model.parameters())
    norms = []
    for (x0, y0), (x1, y1) in zip(batches(10, seed=10), batches(10, seed=11)):
        grads = []
        for x, y in ((x0, y0), (x1, y1)):
            grads.append(torch.autograd.grad(torch.nn.functional.mse_loss(model(x), y), params))
        mean = [(a + b) / 2 for a, b in zip(*grads)]
        norms.append([g.norm().item() for g in mean])
        with torch.no_grad():
            for p, g in zip(params, mean):
                p -= 0.05 * g
    return norms


def test_two_rank_gloo_ddp_is_merged_as_replicas(tmp_path):
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [_child("ddp", env={**env, "RANK": str(r)}, run=str(tmp_path)) for r in (0, 1)]
    for proc in procs:
        _finish(proc, timeout=HANG_GUARD_S)

    manifest = _manifest(tmp_path)
    assert (manifest["status"], manifest["world_size"], manifest["ranks"]) == ("closed", 2, [0, 1])
    assert (manifest["dropped_steps"], manifest["lost_steps"], manifest["warnings"]) == (0, 0, [])
    for rank in (0, 1):
        meta = json.loads((tmp_path / f"rank{rank}" / "meta.json").read_text())
        assert (meta["rank"], meta["world_size"], meta["status"]) == (rank, 2, "closed")

    expected = _ddp_grad_norms()
    for rank in (0, 1):  # after the all-reduce both replicas hold the same, mean gradient
        got = read_grads(tmp_path, rank)["norm"].to_list()
        assert got == pytest.approx([n for step in expected for n in step], rel=1e-4)
    analysis = analyze(tmp_path)
    run = analysis.to_dict()["run"]
    assert run["world_size"] == 2 and [r["rank"] for r in run["ranks"]] == [0, 1]
    assert [r["steps"] for r in run["ranks"]] == [10, 10]
    # Replicas are not summed as shards would be (that would give sqrt(2) x the norm).
    merged = analysis.grads.collect().sort("step", "param_id")["norm"].to_list()
    assert merged == pytest.approx([n for step in expected for n in step], rel=1e-4)
