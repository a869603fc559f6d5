"""The Lightning and Hugging Face callbacks on real `Trainer.fit` / `Trainer.train()` runs of tiny
models built in the test (no downloads). Ground truth is computed inside the frameworks' own
hooks: the first step with non-finite gradients, the weights before its update, the loss."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import polars as pl
import pytest
import torch

from recording_helpers import read_grads, read_steps
from tracemortem import analyze

pytestmark = pytest.mark.slow


def _snapshot(run) -> tuple[dict, dict[str, torch.Tensor]]:
    snap = run / "rank0" / "snapshot"
    return json.loads((snap / "info.json").read_text()), torch.load(snap / "model.pt", weights_only=True)


def test_import_tracemortem_imports_no_framework():
    code = (
        "import sys, tracemortem, tracemortem.integrations; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- Lightning ------------------------------------------------------------------------------


def _lightning_module(pl_ns, lr: float, truth: dict, scale: float = 3.0):
    class Regression(pl_ns.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            truth["losses"].append(loss.item())
            return loss

        def on_before_optimizer_step(self, optimizer):
            # after backward (inside Lightning's closure), before clipping and the update
            bad = any(not torch.isfinite(p.grad).all() for p in self.parameters() if p.grad is not None)
            if bad and truth["first"] is None:
                truth["first"] = (
                    self.trainer.global_step,
                    {k: v.detach().clone() for k, v in self.state_dict().items()},
                )

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64 * 8, 8, generator=gen) * scale
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    return Regression(), torch.utils.data.DataLoader(data, batch_size=8)


def _trainer(pl_ns, callback, **kwargs):
    return pl_ns.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **kwargs,
    )


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_fit_first_nonfinite_step_and_pre_update_snapshot(tmp_path, namespace):
    pl_ns = pytest.importorskip(namespace)
    from tracemortem.integrations.lightning import TracemortemCallback

    truth: dict = {"first": None, "losses": []}
    module, loader = _lightning_module(pl_ns, lr=0.5, truth=truth)
    _trainer(pl_ns, TracemortemCallback(tmp_path, update_every=1), max_steps=40).fit(module, loader)
    assert truth["first"] is not None, "the model was meant to explode"
    first_step, before = truth["first"]

    steps = read_steps(tmp_path)
    assert steps["step"].to_list() == list(range(40))
    assert steps.filter(pl.col("nonfinite") > 0)["step"].min() == first_step
    recorded = steps["loss"].to_list()
    for got, expected in zip(recorded, truth["losses"], strict=True):
        assert (math.isnan(got) and math.isnan(expected)) or math.isclose(got, expected, rel_tol=1e-5)
    assert steps["lr"].to_list() == [0.5] * 40
    info, weights = _snapshot(tmp_path)
    assert info["step"] == first_step and info["pre_update"] is True
    for key, value in before.items():
        assert torch.equal(weights[key], value) and torch.isfinite(weights[key]).all(), key
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "closed"
    finding = next(f for f in analyze(tmp_path).findings if f.rule == "nonfinite-gradient")
    assert finding.step == first_step


def test_lightning_clipping_and_accumulation(tmp_path):
    pl_ns = pytest.importorskip("lightning.pytorch")
    from tracemortem.integrations.lightning import TracemortemCallback

    truth: dict = {"first": None, "losses": []}
    module, loader = _lightning_module(pl_ns, lr=1e-3, truth=truth, scale=1.0)
    trainer = _trainer(
        pl_ns, TracemortemCallback(tmp_path), max_steps=24, accumulate_grad_batches=2, gradient_clip_val=0.05
    )
    trainer.fit(module, loader)
    steps = read_steps(tmp_path)
    assert steps["step"].to_list() == list(range(24))  # one row per optimizer step
    assert steps["skipped"].to_list() == [False] * 24
    assert read_grads(tmp_path)["step"].n_unique() == 24
    # the row's loss is the mean of its two micro-batches' losses
    pairs = [sum(truth["losses"][2 * k : 2 * k + 2]) / 2 for k in range(24)]
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(steps["loss"].to_list(), pairs, strict=True))
    assert steps["clip_max"].to_list() == [pytest.approx(0.05)] * 24
    assert (steps["grad_norm"] <= 0.05 * (1 + 1e-4)).all()
    finding = next(f for f in analyze(tmp_path).findings if f.rule == "grad-clipping")
    assert finding.evidence["steps_with_clipping"] == 24 and finding.severity == "warning"


def test_lightning_exception_marks_the_run_crashed(tmp_path):
    pl_ns = pytest.importorskip("lightning.pytorch")
    from tracemortem.integrations.lightning import TracemortemCallback

    truth: dict = {"first": None, "losses": []}
    module, loader = _lightning_module(pl_ns, lr=1e-3, truth=truth)

    def fail_at_five(batch, batch_idx, _step=module.training_step):
        if batch_idx == 5:
            raise KeyError("boom")
        return _step(batch, batch_idx)

    module.training_step = fail_at_five
    with pytest.raises(KeyError, match="boom"):
        _trainer(pl_ns, TracemortemCallback(tmp_path), max_steps=20).fit(module, loader)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "crashed"
    assert read_steps(tmp_path)["step"].to_list() == [0, 1, 2, 3, 4]


def test_lightning_manual_optimization_with_two_optimizers(tmp_path):
    pl_ns = pytest.importorskip("lightning.pytorch")
    from tracemortem.integrations.lightning import TracemortemCallback

    expected: list[dict[str, float]] = []

    class TwoParts(pl_ns.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            x, y = batch
            row = {}
            for opt, prefix in zip(self.optimizers(), ("a.", "b.")):  # LightningOptimizer wrappers
                opt.zero_grad()
                self.manual_backward(torch.nn.functional.mse_loss(self.b(self.a(x)), y))
                row.update({n: p.grad.norm().item() for n, p in self.named_parameters() if n.startswith(prefix)})
                opt.step()
            expected.append(row)

        def configure_optimizers(self):
            return torch.optim.SGD(self.a.parameters(), lr=1e-2), torch.optim.Adam(self.b.parameters(), lr=1e-2)

    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    _trainer(pl_ns, TracemortemCallback(tmp_path), max_epochs=1).fit(TwoParts(), loader)
    grads = read_grads(tmp_path)
    meta = json.loads((tmp_path / "rank0" / "meta.json").read_text())
    names = {p["param_id"]: p["name"] for p in meta["params"]}
    assert len(meta["stepping"]["optimizers"]) == 2 and len(expected) == 8
    # two optimizer steps per batch: Lightning's global_step advances by 2, one row per batch
    assert read_steps(tmp_path)["step"].to_list() == list(range(8))
    for step, row in enumerate(expected):
        got = {names[i]: n for i, n in grads.filter(pl.col("step") == step).select("param_id", "norm").iter_rows()}
        assert got.keys() == row.keys()
        assert all(math.isclose(got[k], row[k], rel_tol=1e-4) for k in row)


# --- Hugging Face Trainer -------------------------------------------------------------------


@pytest.fixture
def hf(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    return pytest.importorskip("transformers")


def _tiny_gpt2(transformers):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def _token_data(n: int):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (n, 16), generator=gen)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def _hf_train(transformers, tmp_path, callback, truth, steps, accumulation=1, **args):
    class GroundTruth(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            # after clip_grad_norm_, before the update
            bad = any(not torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            if bad and truth["first"] is None:
                truth["first"] = (state.global_step, {k: v.detach().clone() for k, v in model.state_dict().items()})

    class Recorded(transformers.Trainer):
        def training_step(self, *a, **kw):
            loss = super().training_step(*a, **kw)
            truth["micro"].append(loss.item())
            return loss

    training_args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **args,
    )
    trainer = Recorded(
        model=_tiny_gpt2(transformers),
        args=training_args,
        train_dataset=_token_data(4 * steps * accumulation),
        callbacks=[GroundTruth(), callback],
    )
    trainer.train()
    return trainer


def test_hf_trainer_records_loss_grads_and_a_pre_update_snapshot(tmp_path, hf):
    from tracemortem.integrations.transformers import TracemortemCallback

    truth: dict = {"first": None, "micro": []}
    # plain SGD with an absurd rate: after one clipped update the weights are ~1e30 and go non-finite
    _hf_train(hf, tmp_path, TracemortemCallback(tmp_path / "run"), truth, steps=8, optim="sgd", learning_rate=1e30)
    run = tmp_path / "run"
    assert truth["first"] is not None, "the model was meant to blow up"
    first_step, before = truth["first"]
    steps = read_steps(run)
    assert steps["step"].to_list() == list(range(8))
    assert steps.filter(pl.col("nonfinite") > 0)["step"].min() == first_step
    for got, expected in zip(steps["loss"].to_list(), truth["micro"], strict=True):
        assert (math.isnan(got) and math.isnan(expected)) or math.isclose(got, expected, rel_tol=1e-5)
    # HF clips at max_grad_norm=1.0 by default, through accelerate
    assert steps["clip_max"].to_list() == [1.0] * 8 and steps["preclip_norm"].null_count() == 0
    info, weights = _snapshot(run)
    assert info["step"] == first_step and info["pre_update"] is True
    for key, value in before.items():
        assert torch.equal(weights[key], value) and torch.isfinite(weights[key]).all(), key
    batch = torch.load(run / "rank0" / "snapshot" / "batch.pt", weights_only=True)
    assert batch["input_ids"].shape == (4, 16)
    meta = json.loads((run / "rank0" / "meta.json").read_text())
    assert meta["stepping"]["optimizers"][0]["type"] == "AcceleratedOptimizer"
    assert json.loads((run / "manifest.json").read_text())["status"] == "closed"


def test_hf_trainer_with_accumulation_has_one_row_per_optimizer_step(tmp_path, hf):
    from tracemortem.integrations.transformers import TracemortemCallback

    truth: dict = {"first": None, "micro": []}
    _hf_train(hf, tmp_path, TracemortemCallback(tmp_path / "run"), truth, steps=4, accumulation=3, learning_rate=1e-3)
    steps = read_steps(tmp_path / "run")
    assert steps["step"].to_list() == [0, 1, 2, 3] and steps["skipped"].to_list() == [False] * 4
    # the Trainer's own step loss: the sum of training_step's outputs over the micro-batches
    expected = [sum(truth["micro"][3 * k : 3 * k + 3]) for k in range(4)]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(steps["loss"].to_list(), expected, strict=True))
    assert read_grads(tmp_path / "run")["step"].n_unique() == 4
