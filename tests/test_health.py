"""Training-health rules on real CPU training runs recorded with the Recorder: each failure
is found where it happened, by name and step."""

from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")

import tracemortem
from health_helpers import Branchy, analyse, deep_sigmoid, regression_batches, relu_mlp, train

mse = torch.nn.functional.mse_loss


def by_rule(findings, rule):
    return [f for f in findings if f.rule == rule]


def test_deep_sigmoid_net_has_vanishing_gradients_in_its_first_layers(tmp_path):
    model = deep_sigmoid(seed=0)
    train(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), regression_batches(90, 16, 1), mse)
    _, findings = analyse(tmp_path)
    [vanish] = by_rule(findings, "vanishing-gradient")
    assert vanish.severity == "warning"
    params = vanish.evidence["params"]
    assert params[0] == "0.weight" and "0.bias" in params
    # only the input side: the last layers learn
    assert not {"16.weight", "18.weight", "20.weight"} & set(params)
    assert vanish.evidence["rms_input_side"] < 1e-3 * vanish.evidence["rms_output_side"]
    assert not by_rule(findings, "exploding-gradient") and not by_rule(findings, "nonfinite-gradient")


def _diverging(run_dir: Path | None) -> int | None:
    """ReLU MLP whose learning rate warms up exponentially past the stability limit."""
    model = relu_mlp(seed=0)
    return train(
        run_dir,
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        regression_batches(300, 16, 2),
        mse,
        schedule=lambda s: 0.01 * 1.03**s,
        stop_after_nonfinite=5,
        checkpoint_every=25,
    )


def test_too_high_learning_rate_explodes_then_goes_non_finite_at_the_replayed_step(tmp_path):
    _diverging(tmp_path)
    expected = _diverging(None)  # the same seeded training, without the recorder
    assert expected is not None
    run, findings = analyse(tmp_path)

    [nan] = by_rule(findings, "nonfinite-gradient")
    assert nan.severity == "error" and nan.step == expected and nan.rank == 0
    # The steps just before the NaN were finite but already blowing up: the last healthy step is
    # the one before the divergence that ran into the NaN, with a loss no higher than in the run's
    # first 100 steps and a grad norm not "unexpectedly large" against them (Megatron's 10x).
    last_ok = nan.evidence["last_healthy_step"]
    assert last_ok < expected - 1
    early = run.steps.filter(pl.col("step") < 100)
    ok_row = run.steps.filter(pl.col("step") == last_ok).row(0, named=True)
    assert ok_row["loss"] <= early["loss"].max() and ok_row["grad_norm"] < 10 * early["grad_norm"].max()
    newest = max(c["step"] for c in run.facts["checkpoints"] if c["step"] <= last_ok)
    assert nan.evidence["checkpoint"].endswith(f"step-{newest:08d}.pt")
    assert nan.evidence["snapshot"] == run.facts["snapshot"]["path"]
    # named nearest the output first: the backward order the recorder saw
    order = dict(zip(run.params["name"], run.params["order"]))
    names = nan.evidence["params_nearest_output"]
    assert names and [order[n] for n in names] == sorted(order[n] for n in names)

    [boom] = by_rule(findings, "exploding-gradient")
    assert boom.severity == "error" and boom.step < expected
    assert boom.evidence["first_nonfinite_step"] == expected
    assert boom.evidence["leaders"] and boom.evidence["leaders"][0]["score"] > 1
    assert by_rule(findings, "nonfinite-loss")[0].step >= expected


def test_unused_head_and_zeroed_branch_are_named(tmp_path):
    model = Branchy(seed=4)
    train(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.05), regression_batches(40, 16, 6), mse)
    _, findings = analyse(tmp_path)
    [unused] = by_rule(findings, "unused-parameter")
    [dead] = by_rule(findings, "dead-parameter")
    assert unused.subject == "aux_head" and set(unused.evidence["params"]) == {"aux_head.weight", "aux_head.bias"}
    assert dead.subject == "branch" and set(dead.evidence["params"]) == {"branch.weight", "branch.bias"}
    assert dead.evidence["recorded_steps"] == 40


@pytest.fixture(scope="module")
def amp_run(tmp_path_factory):
    """fp16 autocast with a GradScaler starting far too high and growing back every 5 steps."""
    run_dir = tmp_path_factory.mktemp("amp")
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=5)
    with tracemortem.Recorder(run_dir, model, opt, scaler=scaler, profile=None) as rec:
        for x, y in regression_batches(80, 16, 7):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = mse(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            rec.step(loss=loss)
    return run_dir


def test_gradscaler_overflows_are_amp_overflow_not_nonfinite_gradients(amp_run):
    run, findings = analyse(amp_run)
    [amp] = by_rule(findings, "amp-overflow")
    skipped = int(run.steps["skipped"].sum())
    assert amp.severity == "warning" and amp.step == 0
    assert amp.evidence["skipped_steps"] == skipped > 0.01 * run.steps.height
    assert amp.evidence["scale_first"] == 2.0**23  # the first step already halved it
    assert not by_rule(findings, "nonfinite-gradient")


def test_loss_scale_at_the_minimum_is_an_error(amp_run):
    _, findings = analyse(amp_run)
    floor = by_rule(findings, "amp-overflow")[0].evidence["scale_min"]
    _, findings = analyse(amp_run, **{"amp-overflow.min_scale": floor})
    [amp] = by_rule(findings, "amp-overflow")
    assert amp.severity == "error" and "collapsed" in amp.message
