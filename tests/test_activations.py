"""Activation statistics (`Recorder(activations=N)`): what is recorded, that it never harms
training, and the dead-activation / saturated-activation / activation-growth rules on real
training loops that kill ReLUs, saturate tanh and blow one layer up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from torch import nn

import replay_models as rm
from recording_helpers import mlp
from tracemortem import Recorder, analyze


class GrowNet(nn.Module):
    """`amp`'s output is rewarded for its magnitude: its weights grow until the loss overflows;
    the tanh after it keeps everything downstream bounded."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.act1 = nn.ReLU()
        self.amp = nn.Linear(16, 16)
        self.squash = nn.Tanh()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.squash(self.amp(self.act1(self.inp(x)))))


class ReluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.inp(x)))


def _loop(run: Path, model: nn.Module, loss_fn: Any, steps: int, lr: float, **options: Any) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    with Recorder(run, model, opt, **options) as rec:
        for batch in rm.data(steps):
            loss = loss_fn(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            losses.append(float(loss.detach()))
    return losses


def _grow_loss(model: GrowNet, batch: Any) -> torch.Tensor:
    x, y = batch
    z = model.amp(model.act1(model.inp(x)))
    return (model.head(model.squash(z)) - y).pow(2).mean() - z.pow(2).mean()


def _relu_penalty_loss(model: ReluNet, batch: Any) -> torch.Tensor:
    x, y = batch
    hidden = model.act(model.inp(x))
    return (model.head(hidden) - y).pow(2).mean() + 100.0 * hidden.mean()  # an activation penalty far too strong


def _acts(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "rank0" / "acts" / "*.parquet").sort("step", "module_id")


def _rules(run: Path, rule: str) -> list[Any]:
    return [f for f in analyze(run).findings if f.rule == rule]


def test_statistics_every_n_steps_with_module_table(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    _loop(tmp_path, model, rm.mse, 12, 0.01, activations=5)
    acts = _acts(tmp_path)
    assert sorted(acts["step"].unique()) == [0, 5, 10]
    modules = json.loads((tmp_path / "rank0" / "acts" / "modules.json").read_text())["modules"]
    assert [(m["name"], m["class"]) for m in modules] == [
        ("0", "Linear"),
        ("1", "Tanh"),
        ("2", "Linear"),
        ("3", "Tanh"),
        ("4", "Linear"),
    ]
    first = acts.filter(pl.col("step") == 0)
    assert first["module_id"].to_list() == [0, 1, 2, 3, 4]
    # the recorded numbers are the real output statistics of step 0
    torch.manual_seed(0)
    fresh = mlp()
    x, _ = rm.data(1)[0]
    out = fresh[0](x).detach()
    row = first.row(0, named=True)
    assert row["rms"] == pytest.approx(float(out.pow(2).mean().sqrt()), rel=1e-5)
    assert row["absmax"] == pytest.approx(float(out.abs().max()), rel=1e-6)
    assert row["nonfinite"] == 0 and row["zero_fraction"] == 0.0
    assert first["saturation"].is_null().to_list() == [True, False, True, False, True]


def test_eval_forwards_are_not_recorded_and_training_is_unchanged(tmp_path):
    def run(folder: Path, **options: Any) -> tuple[list[float], list[torch.Tensor]]:
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        with Recorder(folder, model, opt, **options) as rec:
            for batch in rm.data(6):
                model.eval()
                with torch.no_grad():
                    model(batch[0] * 1000)  # an evaluation pass between steps: not training, not recorded
                model.train()
                loss = rm.mse(model, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(loss=loss)
                losses.append(float(loss.detach()))
        return losses, [p.detach().clone() for p in model.parameters()]

    plain = run(tmp_path / "plain")
    recorded = run(tmp_path / "acts", activations=1)
    assert plain[0] == recorded[0]
    assert all(torch.equal(a, b) for a, b in zip(plain[1], recorded[1]))
    assert _acts(tmp_path / "acts")["absmax"].max() < 100  # the ×1000 eval inputs left no trace


def test_nonfinite_outputs_are_counted(tmp_path):
    torch.manual_seed(0)
    _loop(tmp_path, rm.norm_net(), rm.norm_loss, 10, 0.5, activations=1)
    acts = _acts(tmp_path)
    modules = json.loads((tmp_path / "rank0" / "acts" / "modules.json").read_text())["modules"]
    norm_id = next(m["module_id"] for m in modules if m["name"] == "norm")
    first_bad = acts.filter(pl.col("nonfinite") > 0)["step"].min()
    assert first_bad == 6  # the step whose Normalize divided 0 by 0
    assert acts.filter((pl.col("step") == 6) & (pl.col("module_id") == norm_id))["nonfinite"][0] > 0


def test_dead_relu_is_found(tmp_path):
    torch.manual_seed(0)
    _loop(tmp_path, ReluNet(), _relu_penalty_loss, 60, 0.1, activations=2)
    (finding,) = _rules(tmp_path, "dead-activation")
    assert finding.subject == "act" and finding.evidence["zero_fraction"] >= 0.95


def test_saturated_tanh_is_found(tmp_path):
    def unscaled_inputs(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return (model(x * 50) - y).pow(2).mean()

    torch.manual_seed(0)
    _loop(tmp_path, mlp(), unscaled_inputs, 20, 0.01, activations=2)
    subjects = {f.subject for f in _rules(tmp_path, "saturated-activation")}
    assert "1" in subjects  # the first Tanh, fed by inputs ×50


def test_the_layer_that_grew_first_is_named(tmp_path):
    torch.manual_seed(0)
    losses = _loop(tmp_path, GrowNet(), _grow_loss, 120, 0.05, activations=2)
    assert rm.first_nonfinite(losses) is not None
    (finding,) = _rules(tmp_path, "activation-growth")
    assert finding.subject == "amp"
    assert finding.evidence["ratio"] >= 10 and finding.step < finding.evidence["divergence_step"]


def test_a_healthy_run_raises_no_activation_findings(tmp_path):
    torch.manual_seed(0)
    _loop(tmp_path, mlp(), rm.mse, 80, 0.01, activations=4)
    findings = analyze(tmp_path).findings
    assert not [f for f in findings if f.rule in ("dead-activation", "saturated-activation", "activation-growth")]


class ProbedNet(nn.Module):
    """Calls a leaf whose output lives on the meta device (its statistics cannot be copied to
    the host) and ignores it."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Identity()
        self.inp = nn.Linear(8, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.probe(torch.empty(x.shape, device="meta"))
        return self.head(torch.tanh(self.inp(x)))


def test_a_statistics_failure_warns_once_and_training_goes_on(tmp_path):
    def run(folder: Path, **options: Any) -> list[float]:
        torch.manual_seed(0)
        return _loop(folder, ProbedNet(), rm.mse, 8, 0.01, **options)

    with pytest.warns(RuntimeWarning, match="activations disabled") as caught:
        losses = run(tmp_path / "acts", activations=1)
    assert len([w for w in caught if "tracemortem" in str(w.message)]) == 1
    assert losses == run(tmp_path / "plain")
    meta = json.loads((tmp_path / "acts" / "rank0" / "meta.json").read_text())
    assert meta["disabled"] == ["activations"]
    assert len(pl.read_parquet(tmp_path / "acts" / "rank0" / "steps" / "*.parquet")) == 8


def test_malformed_module_table_and_chunks_are_input_notes(tmp_path):
    from tracemortem.load.discover import discover
    from tracemortem.load.run import load_run

    torch.manual_seed(0)
    _loop(tmp_path, mlp(), rm.mse, 6, 0.01, activations=1)
    acts = tmp_path / "rank0" / "acts"
    (acts / "modules.json").write_text('{"modules": [{"module_id": "zero"}, 7, {"module_id": 1, "name": 5}]}')
    (acts / "part-000009.parquet").write_bytes(b"PAR1 broken")
    run = load_run(discover(tmp_path))
    assert any(n.rule == "input-error" and "acts chunk" in n.title for n in run.notes)
    assert run.acts.height == 6 * 5
    assert set(run.acts["module"]) == {f"module {i}" for i in range(5)}
