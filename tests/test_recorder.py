"""The Recorder on real small CPU training loops: recorded values are checked against values
computed independently with torch in the test, and the failure promises against real faults."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")

from recording_helpers import HANG_GUARD_S, batches, check_every_file_readable, mlp, read_grads, read_steps
from tracemortem import format as fmt
from tracemortem.record import ProfileSchedule, Recorder

RTOL = 1e-4
REPO = Path(__file__).resolve().parents[1]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-7)


def test_recorded_stats_equal_independent_torch_values(tmp_path):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    params = list(model.parameters())
    expected = []  # (step, pid, norm, absmax, weight_norm, update_norm or None)
    losses = []
    with Recorder(tmp_path, model, opt, update_every=3) as rec:
        for step, (x, y) in enumerate(batches(10)):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            before = [p.detach().clone() for p in params]
            stats = [(p.grad.norm().item(), p.grad.abs().max().item(), p.norm().item()) for p in params]
            opt.step()
            for pid, (p, b, (n, a, w)) in enumerate(zip(params, before, stats)):
                upd = (p.detach() - b).norm().item() if step % 3 == 0 else None
                expected.append((step, pid, n, a, w, upd))
            opt.zero_grad()
            losses.append(loss.item())
            rec.step(loss=loss)

    grads = read_grads(tmp_path)
    assert grads.height == len(expected)
    for row, (step, pid, n, a, w, upd) in zip(grads.iter_rows(named=True), expected):
        assert (row["step"], row["param_id"]) == (step, pid)
        assert _close(row["norm"], n) and _close(row["absmax"], a) and _close(row["weight_norm"], w)
        assert row["nonfinite"] == 0
        if upd is None:
            assert row["update_norm"] is None
        else:
            assert _close(row["update_norm"], upd)
    steps = read_steps(tmp_path)
    assert steps["step"].to_list() == list(range(10))
    assert all(_close(a, b) for a, b in zip(steps["loss"].to_list(), losses))
    assert steps["lr"].to_list() == [1e-2] * 10
    assert steps["skipped"].to_list() == [False] * 10
    by_step = grads.group_by("step").agg((pl.col("norm").cast(pl.Float64) ** 2).sum().sqrt()).sort("step")
    assert all(_close(a, b) for a, b in zip(steps["grad_norm"].to_list(), by_step["norm"].to_list()))
    meta = json.loads((tmp_path / "rank0" / "meta.json").read_text())
    assert [p["name"] for p in meta["params"]] == [n for n, _ in model.named_parameters()]
    # Backward order: the output layer's parameters become ready first.
    order = meta["backward_order"]
    assert order.index(4) < order.index(2) < order.index(0)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "closed" and manifest["dropped_steps"] == 0 and manifest["ranks"] == [0]


def _exploding_run(run_dir: Path, guard: bool = True):
    """Linear regression with a far too large learning rate: weights grow until the grads
    overflow. Returns the true first non-finite step, the weights before its update, its batch,
    and the exact NaN/Inf counts per param at that step."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    with Recorder(run_dir, model, opt, snapshot_on_nonfinite=guard, update_every=1) as rec:
        for step, (x, y) in enumerate(batches(60, scale=3.0)):
            rec.observe_batch({"x": x, "y": y})
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            if first is None and any(not torch.isfinite(p.grad).all() for p in model.parameters()):
                first = (
                    step,
                    {k: v.clone() for k, v in model.state_dict().items()},
                    x.clone(),
                    [int((~torch.isfinite(p.grad)).sum()) for p in model.parameters()],
                )
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    assert first is not None, "the model was meant to explode"
    return first


def test_first_nonfinite_step_and_pre_update_snapshot(tmp_path):
    first_step, weights_before, x_before, counts = _exploding_run(tmp_path)
    steps = read_steps(tmp_path)
    assert steps.filter(pl.col("nonfinite") > 0)["step"].min() == first_step
    grads = read_grads(tmp_path).filter(pl.col("step") == first_step).sort("param_id")
    assert grads["nonfinite"].to_list() == counts

    snap = tmp_path / "rank0" / "snapshot"
    info = json.loads((snap / "info.json").read_text())
    assert info["step"] == first_step and info["pre_update"] is True
    assert info["reason"] == "nonfinite-gradient"
    names = [n for n, _ in torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)).named_parameters()]
    bad = [n for n, c in zip(names, counts) if c]
    assert sorted(info["nonfinite_params"]) == sorted(bad)
    # nearest the output first: layer 1 before layer 0
    layers = [int(n.split(".")[0]) for n in info["nonfinite_params"]]
    assert layers == sorted(layers, reverse=True)
    model_state = torch.load(snap / "model.pt", weights_only=True)
    for key, value in weights_before.items():
        assert torch.equal(model_state[key], value), key
    assert torch.equal(torch.load(snap / "batch.pt", weights_only=True)["x"], x_before)
    torch.load(snap / "optimizer.pt", weights_only=True)
    rng = torch.load(snap / "rng.pt", weights_only=True)
    assert {"python", "torch_cpu", "numpy"} <= set(rng)
    assert info["loss_text"] is not None


def test_without_guard_no_snapshot_and_counts_unknown(tmp_path):
    first_step, _, _, _ = _exploding_run(tmp_path, guard=False)
    assert not (tmp_path / "rank0" / "snapshot").exists()
    grads = read_grads(tmp_path).filter(pl.col("step") == first_step)
    bad = grads.filter(~pl.col("absmax").is_finite())
    assert bad.height > 0 and bad["nonfinite"].null_count() == bad.height
    assert read_steps(tmp_path).filter(pl.col("nonfinite") > 0)["step"].min() == first_step


def test_works_without_optimizer(tmp_path):
    model = mlp()
    params = list(model.parameters())
    expected = []
    with Recorder(tmp_path, model) as rec:
        for x, y in batches(5):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            expected.append([(p.grad.norm().item(), p.norm().item()) for p in params])
            rec.step(loss=loss.detach())
            with torch.no_grad():
                for p in params:
                    p -= 0.01 * p.grad
                    p.grad = None
    grads = read_grads(tmp_path)
    got = [
        list(zip(g["norm"].to_list(), g["weight_norm"].to_list()))
        for _, g in grads.group_by("step", maintain_order=True)
    ]
    for row_got, row_exp in zip(got, expected, strict=True):
        for (gn, gw), (en, ew) in zip(row_got, row_exp, strict=True):
            assert _close(gn, en) and _close(gw, ew)
    assert grads["update_norm"].null_count() == grads.height
    steps = read_steps(tmp_path)
    assert steps["skipped"].null_count() == 5 and steps["lr"].null_count() == 5


def test_grad_scaler_overflow_steps_are_skipped_with_scale(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    # A scale this large overflows float32 in backward: the scaler skips and halves it.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
    skipped, scales = [], []
    with Recorder(tmp_path, model, opt, scaler=scaler) as rec:
        for x, y in batches(12):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            skipped.append(all(torch.equal(b, p) for b, p in zip(before, model.parameters())))
            scales.append(scaler.get_scale())
            opt.zero_grad()
            rec.step(loss=loss)
    assert any(skipped) and not all(skipped)
    steps = read_steps(tmp_path)
    assert steps["skipped"].to_list() == skipped
    assert steps["scale"].to_list() == scales
    # grads of applied steps only, and they are finite: overflow is AMP's business, not a snapshot's
    assert set(read_grads(tmp_path)["step"].unique().to_list()) == {i for i, s in enumerate(skipped) if not s}
    assert not (tmp_path / "rank0" / "snapshot").exists()


def test_grad_every_records_only_sampled_steps(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(tmp_path, model, opt, grad_every=3) as rec:
        for x, y in batches(7):
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    assert sorted(read_grads(tmp_path)["step"].unique().to_list()) == [0, 3, 6]
    steps = read_steps(tmp_path)
    assert steps.height == 7 and steps["grad_norm"].null_count() == 4


def test_exception_in_loop_propagates_and_marks_crashed(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with pytest.raises(KeyError, match="boom"), Recorder(tmp_path, model, opt) as rec:
        for step, (x, y) in enumerate(batches(6)):
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            rec.step()
            if step == 4:
                raise KeyError("boom")
    assert read_steps(tmp_path)["step"].to_list() == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "crashed"
    rec.close()  # idempotent after the context manager closed it
    rec.close(status="closed")
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "crashed"
    rec.step()  # after close: a no-op, not an error


def _train(rec, model, opt, n):
    for x, y in batches(n):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        rec.step()


def test_run_dir_broken_mid_run_does_not_stop_training(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path, model, opt, flush_every=2, checkpoint_every=4) as rec:
            _train(rec, model, opt, 4)
            time.sleep(1.5)  # let the writer flush what it has
            # A real fault that root cannot ignore either: the folders become files.
            for name in ("grads", "checkpoints"):
                target = tmp_path / "rank0" / name
                for child in target.iterdir():
                    child.unlink()
                target.rmdir()
                target.write_text("not a folder")
            _train(rec, model, opt, 8)
    assert rec._step == 12  # every step ran
    assert any("tracemortem" in str(w.message) for w in caught)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["lost_steps"] > 0 and manifest["status"] == "closed"
    assert manifest["warnings"]
    assert read_steps(tmp_path)["step"].to_list()[:4] == [0, 1, 2, 3]


def test_write_error_at_the_boundary_is_counted_and_recording_recovers(tmp_path, monkeypatch):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    real = fmt.write_chunk
    failures = {"left": 1}

    def disk_full_once(folder, index, table):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return real(folder, index, table)

    monkeypatch.setattr(fmt, "write_chunk", disk_full_once)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Recorder(tmp_path, model, opt, flush_every=1, flush_seconds=0.05) as rec:
            for _ in range(3):
                _train(rec, model, opt, 2)
                time.sleep(0.3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    # The failed write was the first grads chunk (one flush: one or two steps, as the writer
    # woke): only those steps' grads are missing; the steps table, written on its own, is whole.
    assert manifest["lost_steps"] >= 1
    assert read_steps(tmp_path).height == 6
    assert read_grads(tmp_path)["step"].n_unique() + manifest["lost_steps"] == 6


def test_snapshot_fault_warns_once_and_training_goes_on(tmp_path):
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank0" / "snapshot").write_text("in the way")
    with pytest.warns(RuntimeWarning, match="snapshot"):
        _exploding_run(tmp_path)
    steps = read_steps(tmp_path)
    assert steps.height == 60
    assert "snapshot" in " ".join(json.loads((tmp_path / "manifest.json").read_text())["warnings"])


def test_checkpoints_keep_last_k_with_health(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(tmp_path, model, opt, checkpoint_every=2, keep_checkpoints=2) as rec:
        _train(rec, model, opt, 7)
        extra = rec.checkpoint()
    ckpts = sorted(p.name for p in (tmp_path / "rank0" / "checkpoints").glob("*.pt"))
    assert ckpts == ["step-00000005.pt", "step-00000006.pt"] and extra.name == ckpts[-1]
    state = torch.load(extra, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    health = pl.read_parquet(tmp_path / "rank0" / "checkpoints" / "health.parquet").sort("step", "param_id")
    assert sorted(set(health["step"].to_list())) == [5, 6]
    last = health.filter(pl.col("step") == 6)
    for pid, p in enumerate(model.parameters()):
        assert _close(last["weight_norm"][pid], p.norm().item())
        assert _close(last["weight_absmax"][pid], p.abs().max().item())
    assert last["nonfinite"].sum() == 0


def test_profiler_writes_gzipped_chrome_traces(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    schedule = ProfileSchedule(wait=1, warmup=1, active=2, repeat=1, skip_first=0)
    with Recorder(tmp_path, model, opt, profile=schedule) as rec:
        _train(rec, model, opt, 6)
    traces = list((tmp_path / "rank0" / "traces").glob("*.pt.trace.json.gz"))
    assert len(traces) == 1
    assert check_every_file_readable(tmp_path)["trace"] == 1


def test_rank_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(tmp_path, model, opt) as rec:
        _train(rec, model, opt, 2)
    assert not (tmp_path / "manifest.json").exists()  # only rank 0 writes it
    meta = json.loads((tmp_path / "rank1" / "meta.json").read_text())
    assert (meta["rank"], meta["world_size"]) == (1, 2)
    assert "RANK" not in json.dumps(meta)
    assert read_steps(tmp_path, rank=1).height == 2


_CHILD = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from recording_helpers import mlp, batches
    from tracemortem.record import ProfileSchedule, Recorder
    model = mlp(width=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batches(8)
    rec = Recorder({run!r}, model, opt, flush_every=3, flush_seconds=0.05, checkpoint_every=2,
                   profile=ProfileSchedule(wait=1, warmup=1, active=1, repeat=0, skip_first=0))
    {setup}
    step = 0
    while True:
        x, y = data[step % 8]
        rec.observe_batch(x)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        rec.step(loss=loss)
        step += 1
        if step == 20:  # "ready" once the writer has written those steps, however busy the host
            deadline = time.monotonic() + 120  # a hang guard only
            while rec.writer.written_steps + rec.writer.lost_steps + rec.writer.dropped_steps < 20:
                assert time.monotonic() < deadline, "writer did not settle"
                time.sleep(0.02)
            print("ready", flush=True)
    """
)


def _start_child(run: Path, setup: str = "", ready: bool = True) -> subprocess.Popen:
    code = _CHILD.format(tests=str(Path(__file__).parent), run=str(run), setup=setup)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if ready:
        assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("kill_after", [0.0, 0.4])
def test_sigkill_leaves_only_readable_files(tmp_path, kill_after):
    proc = _start_child(tmp_path)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD_S)
    seen = check_every_file_readable(tmp_path)
    assert seen["parquet"] >= 2 and seen["json"] >= 2 and seen["pt"] >= 1
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "running"


def test_sigterm_flushes_then_terminates(tmp_path):
    proc = _start_child(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=HANG_GUARD_S) == -signal.SIGTERM  # the default action still happens
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "crashed" and manifest["ended"]
    assert "SIGTERM" in " ".join(manifest["warnings"])
    assert read_steps(tmp_path).height >= 20
    check_every_file_readable(tmp_path)


# SIGTERM delivered while the training thread is handing a step to the writer (the handler runs
# right there, in the middle of `put`): the close must not wait on anything that code holds.
_TERM_INSIDE_PUT = """
import collections, os, signal
class _TermOnAppend(collections.deque):
    def append(self, item):
        super().append(item)
        if item.step == 25:
            os.kill(os.getpid(), signal.SIGTERM)
rec.writer._queue = _TermOnAppend()
"""


def test_sigterm_inside_the_step_hand_over_still_flushes_and_terminates(tmp_path):
    proc = _start_child(tmp_path, setup=_TERM_INSIDE_PUT, ready=False)
    assert proc.wait(timeout=HANG_GUARD_S) == -signal.SIGTERM
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "crashed"
    assert read_steps(tmp_path).height >= 25
    check_every_file_readable(tmp_path)


def test_norm_overflow_on_finite_grads_is_not_nonfinite(tmp_path):
    model = torch.nn.Linear(64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with Recorder(tmp_path, model, opt) as rec:
        (model(torch.full((1, 64), 10.0)).sum() * 1e19).backward()  # weight grads 1e20: Σg² overflows
        assert torch.isfinite(model.weight.grad).all() and not torch.isfinite(model.weight.grad.norm())
        opt.step()
        rec.step()
    row = read_grads(tmp_path).filter(pl.col("param_id") == 0).row(0, named=True)
    assert math.isinf(row["norm"]) and _close(row["absmax"], 1e20) and row["nonfinite"] == 0
    assert read_steps(tmp_path)["nonfinite"].to_list() == [0]
    assert not (tmp_path / "rank0" / "snapshot").exists()


# --- attempts: a Recorder on a directory that already holds a recording -----------------------


def _poisoned(step: int, x: torch.Tensor, bad_step: int | None) -> torch.Tensor:
    """The batch of `step`, with an Inf in it at `bad_step`: that step's gradients are NaN."""
    if step != bad_step:
        return x
    x = x.clone()
    x[0, 0] = float("inf")
    return x


def _attempt(run: Path, model, opt, steps: range, bad_step: int | None = None, crash_at: int | None = None) -> dict:
    """Record `steps` of a real loop; returns what each step's grads really were (norm per
    param, computed here), the step the loop raised at (if `crash_at`), and its warnings."""
    truth: dict[int, list[float]] = {}
    data = batches(len(steps), seed=steps.start + 7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Recorder(run, model, opt, start_step=steps.start, checkpoint_every=10) as rec:
                for step, (x, y) in zip(steps, data):
                    if step == crash_at:
                        raise RuntimeError("node lost")
                    loss = torch.nn.functional.mse_loss(model(_poisoned(step, x, bad_step)), y)
                    loss.backward()
                    truth[step] = [p.grad.norm().item() for p in model.parameters()]
                    opt.step()
                    opt.zero_grad()
                    rec.step(loss=loss)
        except RuntimeError as exc:
            assert str(exc) == "node lost"
    return {"truth": truth, "warnings": [str(w.message) for w in caught if "tracemortem" in str(w.message)]}


def _report_json(run: Path) -> dict:
    from click.testing import CliRunner

    from tracemortem.cli import main

    result = CliRunner().invoke(main, ["report", str(run), "--format", "json", "-o", "-", "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _analysed_norms(run: Path) -> dict[int, list[float]]:
    from tracemortem import analyze

    grads = analyze(run).grads.collect().sort("step", "param_id")
    return {s: g["norm"].to_list() for (s,), g in grads.group_by("step", maintain_order=True)}


def test_resume_from_a_checkpoint_supersedes_the_crashed_attempt_from_its_first_step(tmp_path):
    # Attempt 0: gradients go NaN at step 35 (an Inf in the batch), the job dies at step 38.
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = _attempt(tmp_path, model, opt, range(60), bad_step=35, crash_at=38)
    assert (tmp_path / "rank0" / "snapshot" / "info.json").exists()
    # Attempt 1: resumed from the checkpoint after step 19, on clean data, to step 59.
    state = torch.load(tmp_path / "rank0" / "checkpoints" / "step-00000019.pt", weights_only=True)
    model = mlp(seed=0)
    model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.load_state_dict(state["optimizer"])
    second = _attempt(tmp_path, model, opt, range(20, 60))
    assert first["warnings"] == second["warnings"] == []  # a restart after a crash is not a conflict

    # Nothing was overwritten: attempt 0's steps 0-37 are still on disk, attempt 1 has its own folder.
    assert read_steps(tmp_path)["step"].to_list() == list(range(38))
    resumed = pl.read_parquet(tmp_path / "rank0" / "attempts" / "1" / "steps" / "*.parquet").sort("step")
    assert resumed["step"].to_list() == list(range(20, 60))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(a["attempt"], a["status"], a["start_step"]) for a in manifest["attempts"]] == [
        (0, "crashed", 0),
        (1, "closed", 20),
    ]
    assert manifest["status"] == "closed"  # the run as a whole: its latest attempt

    # The analysis: steps 0-19 of attempt 0, then attempt 1; its grads, not the NaN ones.
    expected = {s: first["truth"][s] for s in range(20)} | second["truth"]
    got = _analysed_norms(tmp_path)
    assert sorted(got) == list(range(60))
    for step, norms in expected.items():
        assert all(_close(a, b) for a, b in zip(got[step], norms, strict=True)), step
    report = _report_json(tmp_path)
    assert report["run"]["steps"] == {"first": 0, "last": 59, "count": 60}
    rules = [f["rule"] for f in report["findings"]]
    assert "nonfinite-gradient" not in rules and "nonfinite-loss" not in rules
    [finding] = [f for f in report["findings"] if f["rule"] == "run-resumed"]
    assert (finding["severity"], finding["step"], finding["rank"]) == ("info", 20, 0)
    old, new = finding["evidence"]["attempts"]
    assert (old["superseded_first"], old["superseded_last"], old["superseded_steps"]) == (20, 37, 18)
    assert (old["kept_steps"], old["first_nonfinite_step"], old["snapshot_step"]) == (20, 35, 35)
    assert (new["first_step"], new["kept_steps"], new["superseded_steps"]) == (20, 40, 0)
    assert "NaN/Inf at step 35" in finding["message"]
    # A checkpoint taken after step 20 by the crashed attempt is not offered for recovery.
    assert all(c["step"] < 20 or c["path"].count("attempts") for c in report["run"]["checkpoints"])


def test_a_rerun_from_step_0_supersedes_it_all_and_its_own_nan_is_blamed_on_it(tmp_path):
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _attempt(tmp_path, model, opt, range(30))  # a clean first run
    model = mlp(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rerun = _attempt(tmp_path, model, opt, range(25), bad_step=12)  # the re-run cell goes NaN at 12

    assert read_steps(tmp_path)["step"].to_list() == list(range(30))  # the first run, untouched
    got = _analysed_norms(tmp_path)
    assert sorted(got) == list(range(25))
    assert all(_close(a, b) for a, b in zip(got[3], rerun["truth"][3], strict=True))
    report = _report_json(tmp_path)
    [nan] = [f for f in report["findings"] if f["rule"] == "nonfinite-gradient"]
    assert nan["step"] == 12
    assert (nan["evidence"]["attempt"], nan["evidence"]["attempt_path"]) == (1, "rank0/attempts/1")
    # The snapshot offered for the replay is the re-run's own, taken at its step 12.
    snapshot = Path(nan["evidence"]["snapshot"])
    assert snapshot == tmp_path / "rank0" / "attempts" / "1" / "snapshot"
    assert json.loads((snapshot / "info.json").read_text())["step"] == 12
    [resumed] = [f for f in report["findings"] if f["rule"] == "run-resumed"]
    assert resumed["evidence"]["superseded_steps"] == 30 and resumed["step"] == 0
