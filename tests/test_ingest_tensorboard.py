"""TensorBoard log directories written by torch's real SummaryWriter, analysed as they are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("google_crc32c")

from cli_helpers import cli
from ingest_helpers import tensorboard_loop
from tracemortem import analyze
from tracemortem.config import Config

pytestmark = pytest.mark.slow  # real training loops and fresh interpreters: seconds each


def _by_rule(analysis, rule):
    return [f for f in analysis.findings if f.rule == rule]


def _events(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if "tfevents" in p.name)


@pytest.fixture(scope="module")
def diverging(tmp_path_factory) -> tuple[Path, object]:
    logdir = tmp_path_factory.mktemp("tb") / "run"
    truth = tensorboard_loop(logdir, steps=120, diverge_at=90, bad_batches=(60,), histogram_every=10)
    return logdir, truth


def test_first_nonfinite_loss_and_spikes_are_the_loops_own(diverging):
    logdir, truth = diverging
    assert truth.first_nonfinite is not None and truth.spikes  # the loop really diverged and spiked
    analysis = analyze(logdir)
    assert analysis.kind == "tensorboard" and analysis.run.to_dict()["kind"] == "tensorboard"
    (nonfinite,) = _by_rule(analysis, "nonfinite-loss")
    assert nonfinite.step == truth.first_nonfinite
    (spike,) = _by_rule(analysis, "loss-spike")
    assert spike.evidence["spike_steps"] == [s for s in truth.spikes if s < truth.first_nonfinite]
    assert analysis.run.to_dict()["tags"] == {"grad_norm": "grad_norm", "loss": "Loss/train", "lr": "lr"}
    assert analysis.run.to_dict()["steps"] == {"first": 0, "last": 119, "count": 120}
    assert analysis.run.to_dict()["lr"]["peak"] == pytest.approx(1e20, rel=1e-6)


def test_histograms_become_per_parameter_gradients(diverging):
    logdir, truth = diverging
    analysis = analyze(logdir)
    names = analysis.params.sort("param_id")["name"].to_list()
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert analysis.params.filter(name="0.weight")["numel"].item() == 8 * 32
    grads = analysis.grads.collect()
    # the loop logs histograms every 10 steps while its gradients are finite
    assert sorted(grads["step"].unique().to_list()) == list(range(0, truth.first_nonfinite, 10))
    # the norm comes from the histogram's exact sum of squares, the weight norm from the weight histogram
    assert grads["norm"].is_not_null().all() and grads["weight_norm"].is_not_null().all()
    assert grads["absmax"].min() > 0
    assert not any(f.title == "no per-parameter gradients were logged" for f in analysis.findings)


def test_histogram_norm_is_the_tensors_l2(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(1)
    values = {step: torch.randn(64, 16) * (step + 1) for step in range(3)}
    with SummaryWriter(str(tmp_path)) as writer:
        for step, tensor in values.items():
            writer.add_histogram("grad/layer.weight", tensor, step)
            writer.add_scalar("loss", 1.0, step)
    grads = analyze(tmp_path).grads.collect().sort("step")
    for row, tensor in zip(grads.iter_rows(named=True), values.values()):
        assert row["norm"] == pytest.approx(tensor.norm().item(), rel=1e-5)
        assert row["absmax"] == pytest.approx(tensor.abs().max().item(), rel=1e-6)


def test_loss_only_log_says_what_it_lacks(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(50):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    analysis = analyze(tmp_path)
    titles = {f.title for f in analysis.findings}
    assert {"no per-parameter gradients were logged", "no gradient norm was logged"} <= titles
    lacking = next(f for f in analysis.findings if f.title == "no per-parameter gradients were logged")
    assert lacking.severity == "info" and "tracemortem callback" in lacking.suggestion


def test_several_runs_are_analysed_separately(tmp_path):
    truths = {
        "exp/a": tensorboard_loop(tmp_path / "exp" / "a", steps=80, diverge_at=50),
        "exp/b": tensorboard_loop(tmp_path / "exp" / "b", steps=100, seed=1),
    }
    analysis = analyze(tmp_path)
    assert [r["name"] for r in analysis.run.to_dict()["runs"]] == ["exp/a", "exp/b"]
    assert analysis.run.to_dict()["charts_run"] == "exp/b"  # the run with the most steps
    (nonfinite,) = _by_rule(analysis, "nonfinite-loss")
    assert nonfinite.evidence["run"] == "exp/a" and nonfinite.step == truths["exp/a"].first_nonfinite
    assert nonfinite.message.startswith("run exp/a: ")
    # one run of the folder on its own is one single run
    alone = analyze(tmp_path / "exp" / "a")
    assert (
        "runs" not in alone.run.to_dict()
        and _by_rule(alone, "nonfinite-loss")[0].step == truths["exp/a"].first_nonfinite
    )


def test_restarted_run_later_attempt_supersedes(tmp_path):
    first = tensorboard_loop(tmp_path, steps=60, seed=0)
    resumed = tensorboard_loop(tmp_path, steps=40, start=40, diverge_at=70, seed=2)  # resume from step 40
    assert len(_events(tmp_path)) == 2
    analysis = analyze(tmp_path)
    assert analysis.run.to_dict()["steps"] == {"first": 0, "last": 79, "count": 80}
    losses = dict(zip(analysis.steps["step"].to_list(), analysis.steps["loss"].to_list()))
    assert losses[10] == pytest.approx(first.losses[10], rel=1e-6)
    assert losses[45] == pytest.approx(resumed.losses[45], rel=1e-6)
    note = next(f for f in analysis.findings if f.title.startswith("restarted run"))
    assert note.evidence["superseded"] == 20 * 3  # steps 40-59 of loss, grad norm and lr
    assert _by_rule(analysis, "nonfinite-loss")[0].step == resumed.first_nonfinite


def test_truncated_event_file_reads_every_whole_record(tmp_path, diverging):
    logdir, truth = diverging
    (events,) = _events(logdir)
    data = events.read_bytes()
    torn = tmp_path / events.name
    torn.write_bytes(data[:-30])  # a job killed while writing its last record
    analysis = analyze(tmp_path)
    (note,) = _by_rule(analysis, "trace-truncated")
    # tensorboard's own loader counts the records of the whole file: all but the torn last one were read
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    assert note.evidence["records"] == len(list(RawEventFileLoader(str(events)).Load())) - 1
    last = analysis.steps.filter(step=119)
    assert last["loss"].is_not_null().all() and last["lr"].is_null().all()  # lr was the torn record
    assert _by_rule(analysis, "nonfinite-loss")[0].step == truth.first_nonfinite
    half = tmp_path / "half"
    half.mkdir()
    (half / events.name).write_bytes(data[: len(data) // 2])
    assert analyze(half).steps["step"].max() < 119


def test_corrupt_record_and_garbage_files_are_notes(tmp_path, diverging):
    logdir, _ = diverging
    (events,) = _events(logdir)
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit of a copy gone wrong
    (tmp_path / events.name).write_bytes(bytes(data))
    (tmp_path / "events.out.tfevents.123.garbage").write_bytes(os.urandom(4096))
    (tmp_path / "notes.txt").write_text("not a log")
    analysis = analyze(tmp_path)
    titles = [f.title for f in analysis.findings if f.rule == "input-error"]
    assert "damaged event file" in titles and "not an event file" in titles
    assert analysis.steps.height > 10


def test_links_out_of_the_folder_and_fifos_are_not_opened(tmp_path, diverging):
    logdir, _ = diverging
    (events,) = _events(logdir)
    inside = tmp_path / "logs"
    inside.mkdir()
    shutil.copy(events, inside / events.name)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(events, outside / "events.out.tfevents.2.secret")
    (inside / "events.out.tfevents.3.link").symlink_to(outside / "events.out.tfevents.2.secret")
    (inside / "sub").symlink_to(outside, target_is_directory=True)
    os.mkfifo(inside / "events.out.tfevents.4.fifo")
    analysis = analyze(inside)  # a FIFO opened for reading would block here
    refused = [f for f in analysis.findings if f.title == "refused a file"]
    assert {Path(f.message.split(":")[0]).name for f in refused} == {
        "events.out.tfevents.3.link",
        "events.out.tfevents.4.fifo",
    }
    assert "runs" not in analysis.run.to_dict()  # the linked folder was not walked into


def test_tag_map_override_from_config(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "log")) as writer:
        for step in range(40):
            writer.add_scalar("objective", float("nan") if step == 33 else 1.0, step)
            writer.add_scalar("val/loss", 1.0, step)
    assert not _by_rule(analyze(tmp_path / "log"), "nonfinite-loss")  # val/loss is no training loss
    config = Config(options={"tags": {"loss": "objective"}})
    (nonfinite,) = _by_rule(analyze(tmp_path / "log", config), "nonfinite-loss")
    assert nonfinite.step == 33
    (tmp_path / "tracemortem.toml").write_text('[tags]\nloss = ["objective"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "tracemortem.cli", "report", "log", "--format", "json", "-o", "-", "--fail-on", "never"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(out.stdout)
    assert document["run"]["tags"] == {"loss": "objective"}
    assert [f["step"] for f in document["findings"] if f["rule"] == "nonfinite-loss"] == [33]
    (tmp_path / "tracemortem.toml").unlink()
    args = ["report", str(tmp_path / "log"), "--format", "json", "-o", "-", "--fail-on", "never"]
    result = cli(*args, "--set", "tags.loss=objective")
    assert [f["step"] for f in json.loads(result.stdout)["findings"] if f["rule"] == "nonfinite-loss"] == [33]
    result = cli(*args, "--set", "tags.los=objective")
    assert result.code == 2 and "unknown key 'los'" in result.output


def test_new_style_tensor_scalars(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import scalar

    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(40):
            value = float("inf") if step == 37 else 2.0
            writer.file_writer.add_summary(scalar("loss", torch.tensor(value), new_style=True), step)
    (nonfinite,) = _by_rule(analyze(tmp_path), "nonfinite-loss")
    assert nonfinite.step == 37


def test_missing_extra_is_one_line_exit_3(tmp_path, diverging):
    logdir, _ = diverging
    blocker = "import sys; sys.modules['google_crc32c'] = None; from tracemortem.cli import main; main()"
    out = subprocess.run(
        [sys.executable, "-c", blocker, "summary", str(logdir)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "pip install 'tracemortem[tensorboard]'" in out.stderr
    assert "Traceback" not in out.stderr
