"""Early divergence, all-zero gradients and healthy language-model runs, on real training loops:
a too-high learning rate must be reported before the first non-finite value, a loss that cannot
change must be `zero-gradient` and never an explosion, and sane learning rates stay quiet."""

from __future__ import annotations

import polars as pl
import pytest
import torch

import tracemortem
from health_helpers import analyse, at_least
from lm_helpers import train_lm
from tracemortem.detect.health_growth import GrowthLimits, divergence


def by_rule(findings, rule):
    return [f for f in findings if f.rule == rule]


@pytest.mark.slow
def test_adam_learning_rate_too_high_warns_long_before_the_nan(tmp_path):
    first_bad, history = train_lm(tmp_path, "adam", 0.3)
    assert first_bad is not None and first_bad >= 20  # the run really goes NaN, tens of steps later
    _, findings = analyse(tmp_path)
    [boom] = by_rule(findings, "exploding-gradient")
    assert boom.severity == "error" and boom.step < first_bad
    assert "surge" in boom.evidence["tests"]
    # the first flagged step is the first that blew up against step 0
    blown = next(i for i, (_, g) in enumerate(history) if g >= 100 * history[0][1])
    assert boom.step == blown
    [spike] = by_rule(findings, "loss-spike")
    assert spike.step < first_bad and spike.severity == "error"
    [nan] = by_rule(findings, "nonfinite-gradient")
    assert nan.step == first_bad
    # the steps between the blow-up and the NaN were finite, but not healthy
    assert nan.evidence["last_healthy_step"] < blown


@pytest.mark.slow
def test_sgd_learning_rate_too_high_warns_before_the_nan(tmp_path):
    first_bad, history = train_lm(tmp_path, "sgd", 8.0)
    assert first_bad is not None and first_bad >= 20
    _, findings = analyse(tmp_path)
    [boom] = by_rule(findings, "exploding-gradient")
    assert boom.severity == "error" and boom.step < first_bad
    assert boom.evidence["first_nonfinite_step"] == first_bad
    assert history[boom.step][1] >= 100 * min(g for _, g in history[:3])


def test_sustained_geometric_growth_is_found_without_a_surge():
    """The growth test on its own: a norm rising 1.5x a step from step 10 (a learning rate just
    past the stability limit) is flagged once it has stayed 10x above the start for 5 steps."""
    norms = [1.0 + 0.05 * (i % 3) for i in range(10)] + [1.5**k for k in range(1, 20)]
    frame = pl.DataFrame({"step": range(len(norms)), "grad_norm": norms})
    limits = GrowthLimits(baseline_steps=3, surge=100.0, window=5, floor=10.0, growth=4.0)
    flagged = divergence(frame, "grad_norm", limits).filter("growth")
    first = flagged.row(0, named=True)
    assert not first["surge"] and first["to_baseline"] < 100
    window = norms[first["step"] - 4 : first["step"] + 1]
    assert min(window) >= 10 * norms[1] and window[-1] / window[0] >= 4
    assert first["growth_from"] == first["step"] - 4


def test_all_zero_series_is_never_growth():
    frame = pl.DataFrame({"step": range(20), "grad_norm": [0.0] * 20})
    limits = GrowthLimits(baseline_steps=3, surge=100.0, window=5, floor=10.0, growth=4.0)
    out = divergence(frame, "grad_norm", limits)
    assert not out["surge"].any() and not out["growth"].any()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer", "lr", "cell"), [("sgd", 2.0, "relu"), ("adam", 0.003, "relu"), ("sgd-momentum", 1.0, "tanh")]
)
def test_language_model_with_a_sane_learning_rate_is_quiet(tmp_path, optimizer, lr, cell):
    first_bad, history = train_lm(tmp_path, optimizer, lr, cell=cell)
    assert first_bad is None
    assert sum(loss for loss, _ in history[-10:]) < sum(loss for loss, _ in history[:10])  # it learns
    _, findings = analyse(tmp_path)
    assert at_least(findings, "warning") == []


def test_single_class_cross_entropy_is_zero_gradient_not_an_explosion(tmp_path):
    """pytorch/examples' DDP tutorial series: a Linear(20, 1) model under F.cross_entropy with
    (batch, 1) targets. Softmax over one class is 1, so the loss is 0 and every gradient 0."""
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with tracemortem.Recorder(tmp_path, model, opt, profile=None) as rec:
        for _ in range(30):
            source, targets = torch.rand(32, 20), torch.rand(32, 1)
            loss = torch.nn.functional.cross_entropy(model(source), targets)
            loss.backward()
            assert all(float(p.grad.abs().max()) == 0 for p in model.parameters())
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    _, findings = analyse(tmp_path)
    [zero] = by_rule(findings, "zero-gradient")
    assert zero.severity == "error" and zero.evidence["zero_steps"] == zero.evidence["recorded_steps"] == 30
    assert zero.evidence["constant_loss"] == 0.0
    assert {f.rule for f in findings} == {"zero-gradient"}


def test_a_span_of_zero_gradients_inside_a_learning_run_is_a_warning(tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tracemortem.Recorder(tmp_path, model, opt, profile=None) as rec:
        for step in range(40):
            x = torch.randn(16, 8)
            out = model(x)
            # steps 10-19 compare the output with itself (a bug that makes the loss 0)
            target = out.detach() if 10 <= step < 20 else x.sum(1, keepdim=True)
            loss = torch.nn.functional.mse_loss(out, target)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    _, findings = analyse(tmp_path)
    [zero] = by_rule(findings, "zero-gradient")
    assert zero.severity == "warning" and (zero.evidence["first_step"], zero.evidence["last_step"]) == (10, 19)
    assert not by_rule(findings, "exploding-gradient") and not by_rule(findings, "loss-spike")
