"""Hugging Face Trainer output folders left by a real `Trainer.train()` (tiny config-built GPT-2)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from cli_helpers import cli
from ingest_helpers import hf_trainer_run
from tracemortem import analyze

pytestmark = pytest.mark.slow


def _by_rule(analysis, rule):
    return [f for f in analysis.findings if f.rule == rule]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    output = tmp_path_factory.mktemp("hf") / "out"
    return output, hf_trainer_run(output, steps=60, kick_at=45, diverge_at=54)


def test_checkpoint_folder_first_nonfinite_loss_is_exact(diverged):
    output, truth = diverged
    assert truth.first_nonfinite is not None
    for path in (output, output / "checkpoint-60"):  # the output dir reads its newest checkpoint
        analysis = analyze(path)
        assert analysis.kind == "hf-trainer"
        assert analysis.run.to_dict()["trainer_state"].endswith("checkpoint-60/trainer_state.json")
        (nonfinite,) = _by_rule(analysis, "nonfinite-loss")
        assert nonfinite.step == truth.first_nonfinite
        assert _by_rule(analysis, "nonfinite-gradient")[0].step == truth.first_nonfinite
        assert analysis.run.to_dict()["tags"] == {"grad_norm": "grad_norm", "loss": "loss", "lr": "learning_rate"}
        assert analysis.run.to_dict()["steps"]["first"] == 1 and analysis.run.to_dict()["steps"]["last"] == 60
    older = analyze(output / "checkpoint-30")
    assert older.run.to_dict()["steps"]["last"] == 30 and not _by_rule(older, "nonfinite-loss")


def test_loss_spike_where_the_loop_saw_it(diverged):
    output, truth = diverged
    assert truth.spikes[0] == 45  # the loss right after the kicked update
    (spike,) = _by_rule(analyze(output), "loss-spike")
    assert spike.step == 45
    # every step reported was a real jump in the loss the loop computed
    assert set(spike.evidence["spike_steps"]) <= truth.jumps(1.5)


def test_logging_filter_hides_the_nan_loss_and_the_report_says_so(tmp_path):
    truth = hf_trainer_run(tmp_path / "out", steps=36, diverge_at=32, nan_filter=True, save_state=True)
    analysis = analyze(tmp_path / "out")
    assert analysis.run.to_dict()["trainer_state"] == str(tmp_path / "out" / "trainer_state.json")
    assert not _by_rule(analysis, "nonfinite-loss")  # the Trainer logged the running mean instead
    (grads,) = _by_rule(analysis, "nonfinite-gradient")
    assert grads.step == truth.first_nonfinite
    hint = next(f for f in analysis.findings if f.title == "the logged loss may hide the divergence")
    assert hint.evidence["first_step"] == truth.first_nonfinite


def test_damaged_state_is_one_line_or_a_note(diverged, tmp_path):
    output, truth = diverged
    state = json.loads((output / "checkpoint-60" / "trainer_state.json").read_text())
    state["log_history"][3] = "garbage"
    state["log_history"][4]["step"] = "five"
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    analysis = analyze(tmp_path)
    assert any(f.title == "unreadable log entries" and f.evidence["skipped"] == 2 for f in analysis.findings)
    assert _by_rule(analysis, "nonfinite-loss")[0].step == truth.first_nonfinite
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(output / "checkpoint-60" / "trainer_state.json", broken / "trainer_state.json")
    with open(broken / "trainer_state.json", "r+") as handle:
        handle.truncate(100)
    result = cli("summary", str(broken))
    assert result.code == 3 and "cannot read trainer_state.json" in result.output
