"""Lightning CSVLogger folders left by a real `Trainer.fit`, and the CSV damage users meet."""

from __future__ import annotations

import math

import polars as pl
import pytest

pytest.importorskip("lightning")

from ingest_helpers import lightning_run
from tracemortem import analyze

pytestmark = pytest.mark.slow


def _by_rule(analysis, rule):
    return [f for f in analysis.findings if f.rule == rule]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pl")
    return root, lightning_run(root, steps=60, diverge_at=42, grad_norms=True)


def test_first_nonfinite_loss_and_spike_are_exact(fitted):
    root, truth = fitted
    assert truth.first_nonfinite is not None
    for path in (root, root / "lightning_logs" / "version_0", root / "lightning_logs" / "version_0" / "metrics.csv"):
        analysis = analyze(path)
        assert analysis.kind == "lightning-csv"
        (nonfinite,) = _by_rule(analysis, "nonfinite-loss")
        assert nonfinite.step == truth.first_nonfinite
        spikes = [s for s in truth.spikes if s < truth.first_nonfinite]
        assert [f.evidence["spike_steps"] for f in _by_rule(analysis, "loss-spike")] == ([spikes] if spikes else [])
        assert analysis.run.to_dict()["tags"] == {
            "grad_norm": "grad_2.0_norm_total",
            "loss": "train_loss",
            "lr": "lr-SGD",
        }
    assert analyze(root).run.to_dict()["hparams"] == {"hidden": 32, "lr": 0.05}


def test_lightning_grad_norm_utility_gives_per_parameter_gradients(fitted):
    root, truth = fitted
    analysis = analyze(root)
    assert sorted(analysis.params["name"].to_list()) == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]
    grads = analysis.grads.collect()
    assert grads["step"].n_unique() == 60
    (nonfinite,) = [f for f in analysis.findings if f.rule == "nonfinite-gradient"]
    assert nonfinite.step == truth.first_nonfinite_grad and nonfinite.subject in analysis.params["name"].to_list()
    assert not any(f.title == "no per-parameter gradients were logged" for f in analysis.findings)


def _rewrite(src, dst, change):
    dst.mkdir(parents=True, exist_ok=True)
    table = pl.read_csv(src / "lightning_logs" / "version_0" / "metrics.csv", infer_schema=False)
    change(table).write_csv(dst / "metrics.csv")
    return dst


def test_nan_spellings_and_empty_cells(fitted, tmp_path):
    root, truth = fitted
    first = truth.first_nonfinite

    def spell(table):
        loss = pl.col("train_loss")
        step = pl.col("step").cast(pl.Int64)
        spelled = pl.when(step == first).then(pl.lit("NaN")).when(step == first + 1).then(pl.lit("nan"))
        return table.with_columns(spelled.when(step == first + 2).then(pl.lit("")).otherwise(loss).alias("train_loss"))

    analysis = analyze(_rewrite(root, tmp_path / "spelled", spell))
    assert _by_rule(analysis, "nonfinite-loss")[0].step == first
    losses = analysis.steps.filter(pl.col("step").is_between(first, first + 2)).sort("step")["loss"].to_list()
    assert losses[2] is None and all(math.isnan(v) for v in losses[:2])  # empty = not logged; NaN/nan = NaN


def test_renamed_and_missing_columns(fitted, tmp_path):
    root, truth = fitted
    renamed = _rewrite(root, tmp_path / "renamed", lambda t: t.rename({"train_loss": "loss", "step": "global_step"}))
    assert _by_rule(analyze(renamed), "nonfinite-loss")[0].step == truth.first_nonfinite
    no_step = analyze(_rewrite(root, tmp_path / "nostep", lambda t: t.drop("step")))
    assert any(f.title == "no step column" for f in no_step.findings)
    no_loss = analyze(_rewrite(root, tmp_path / "noloss", lambda t: t.drop("train_loss")))
    assert any(f.title == "no training loss was logged" for f in no_loss.findings)
    assert not _by_rule(no_loss, "nonfinite-loss")


def test_ragged_and_garbage_rows(fitted, tmp_path):
    root, truth = fitted
    folder = tmp_path / "ragged"
    folder.mkdir()
    text = (root / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    text[5] += ",extra,cells"
    text[6] = "garbage"
    text.insert(7, "0,x,not-a-step,1.0")
    (folder / "metrics.csv").write_text("\n".join(text) + "\n")
    analysis = analyze(folder)
    assert any(f.title == "rows without a step" for f in analysis.findings)
    assert _by_rule(analysis, "nonfinite-loss")[0].step == truth.first_nonfinite


def test_several_versions_are_several_runs(tmp_path):
    lightning_run(tmp_path, steps=30, version=0)
    truth = lightning_run(tmp_path, steps=45, diverge_at=40, version=1)
    analysis = analyze(tmp_path)
    assert [r["name"] for r in analysis.run.to_dict()["runs"]] == [
        "lightning_logs/version_0",
        "lightning_logs/version_1",
    ]
    assert analysis.run.to_dict()["charts_run"] == "lightning_logs/version_1"
    (nonfinite,) = _by_rule(analysis, "nonfinite-loss")
    assert nonfinite.evidence["run"] == "lightning_logs/version_1" and nonfinite.step == truth.first_nonfinite
