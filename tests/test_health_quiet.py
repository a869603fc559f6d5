"""Healthy runs of three kinds: no training-health finding at warning or above may fire."""

import pytest

torch = pytest.importorskip("torch")

from health_helpers import (
    TinyTransformer,
    analyse,
    at_least,
    image_batches,
    regression_batches,
    relu_mlp,
    small_cnn,
    token_batches,
    train,
)


def test_mlp_with_sgd_is_quiet(tmp_path):
    model = relu_mlp(seed=1)
    train(
        tmp_path,
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        regression_batches(200, 16, 3),
        torch.nn.functional.mse_loss,
    )
    run, findings = analyse(tmp_path)
    assert run.facts["steps"]["count"] == 200
    assert at_least(findings, "warning") == []


def test_small_cnn_with_momentum_is_quiet(tmp_path):
    model = small_cnn(seed=2)
    train(
        tmp_path,
        model,
        torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
        image_batches(100, 4),
        torch.nn.functional.cross_entropy,
    )
    _, findings = analyse(tmp_path)
    assert at_least(findings, "warning") == []


def test_small_transformer_with_adamw_and_warmup_is_quiet(tmp_path):
    model = TinyTransformer(seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    train(
        tmp_path,
        model,
        opt,
        token_batches(100, 5),
        torch.nn.functional.cross_entropy,
        schedule=lambda s: 3e-3 * min(1.0, (s + 1) / 30),
    )
    run, findings = analyse(tmp_path)
    losses = run.steps["loss"]
    assert losses.tail(10).mean() < losses.head(10).mean()  # it did learn
    assert at_least(findings, "warning") == []
