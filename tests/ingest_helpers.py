"""Real training loops that log with the stacks' own writers (TensorBoard SummaryWriter, Hugging
Face Trainer, Lightning CSVLogger) and keep the ground truth they saw inside the loop."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

SPIKE_FACTOR = 20.0  # ground truth: a loss this many times the median of the previous steps is a spike
SPIKE_HISTORY = 32


@dataclass
class Truth:
    losses: dict[int, float] = field(default_factory=dict)  # logged step → loss the loop computed
    grad_norms: dict[int, float] = field(default_factory=dict)  # logged step → global grad norm, where computed

    @property
    def first_nonfinite_grad(self) -> int | None:
        return min((s for s, v in self.grad_norms.items() if not math.isfinite(v)), default=None)

    @property
    def first_nonfinite(self) -> int | None:
        return min((s for s, v in self.losses.items() if not math.isfinite(v)), default=None)

    def jumps(self, factor: float) -> set[int]:
        """Steps whose loss is at least `factor` x the median of the previous SPIKE_HISTORY finite losses."""
        steps = sorted(self.losses)
        out = set()
        for i, step in enumerate(steps):
            history = sorted(v for s in steps[max(0, i - SPIKE_HISTORY) : i] if math.isfinite(v := self.losses[s]))
            if history and self.losses[step] >= factor * history[len(history) // 2]:
                out.add(step)
        return out

    @property
    def spikes(self) -> list[int]:
        """Steps whose loss is SPIKE_FACTOR x the median of the previous SPIKE_HISTORY finite losses."""
        steps = sorted(self.losses)
        out = []
        for i, step in enumerate(steps):
            history = [self.losses[s] for s in steps[:i] if math.isfinite(self.losses[s])][-SPIKE_HISTORY:]
            if len(history) == SPIKE_HISTORY and self.losses[step] > SPIKE_FACTOR * sorted(history)[len(history) // 2]:
                out.append(step)
        return out


def tensorboard_loop(
    logdir: Path,
    steps: int = 120,
    diverge_at: int | None = None,
    bad_batches: tuple[int, ...] = (),
    histogram_every: int = 0,
    loss_tag: str = "Loss/train",
    grad_tag: str = "grad_norm",
    lr_tag: str = "lr",
    start: int = 0,
    seed: int = 0,
) -> Truth:
    """A small regression MLP trained with SGD, logged by torch's SummaryWriter. From `diverge_at`
    the learning rate is raised until the weights overflow (a real NaN/Inf); a step in
    `bad_batches` trains on a batch with targets 50x off (a real loss spike)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(256, 8)
    y = x.sum(1, keepdim=True)
    truth = Truth()
    writer = SummaryWriter(str(logdir))
    for step in range(start, start + steps):
        if diverge_at is not None and step >= diverge_at:
            for group in optimizer.param_groups:
                group["lr"] = 1e20
        index = torch.randint(0, 256, (16,))
        xb, yb = x[index], y[index] * (50.0 if step in bad_batches else 1.0)
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 if step in bad_batches else 1e30)
        truth.losses[step] = loss.item()
        writer.add_scalar(loss_tag, loss.item(), step)
        writer.add_scalar(grad_tag, grad_norm.item(), step)
        writer.add_scalar(lr_tag, optimizer.param_groups[0]["lr"], step)
        if histogram_every and step % histogram_every == 0 and math.isfinite(grad_norm.item()):
            for name, param in model.named_parameters():
                writer.add_histogram(f"{name}.grad", param.grad, step)
                writer.add_histogram(name, param, step)
        optimizer.step()
    writer.close()
    return truth


def hf_trainer_run(
    output_dir: Path,
    steps: int = 40,
    diverge_at: int | None = None,
    kick_at: int | None = None,
    nan_filter: bool = False,
    save_state: bool = False,
) -> Truth:
    """A tiny GPT-2 built from a config (no download) trained by a real `Trainer` with SGD on a
    repeated token pattern. The update before logged step `kick_at` has a 1e4x learning rate (a
    real loss spike); from `diverge_at` on the learning rate is 1e30 (a real NaN)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    batch = 8

    class Pattern(torch.utils.data.IterableDataset):
        def __iter__(self):
            pattern = torch.arange(16) % 7
            for _ in range(batch * steps):
                yield {"input_ids": pattern.clone(), "labels": pattern.clone()}

    truth = Truth()

    class Recording(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            loss = out[0] if return_outputs else out
            # The Trainer logs this step's loss under the global step it reaches after the update.
            truth.losses.setdefault(self.state.global_step + 1, loss.item())
            return out

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    # The loss logged at step N comes after N - 1 updates; the (N - 1)th uses the factor of scheduler step N - 2.
    switch, kick = (diverge_at or 10**9) - 2, (kick_at or 10**9) - 2
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1e30 if s >= switch else 1e4 if s == kick else 1.0
    )
    args = TrainingArguments(
        str(output_dir),
        max_steps=steps,
        logging_steps=1,
        per_device_train_batch_size=batch,
        report_to=[],
        save_strategy="steps",
        save_steps=max(steps // 2, 1),
        use_cpu=True,
        logging_nan_inf_filter=nan_filter,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Recording(model=model, args=args, train_dataset=Pattern(), optimizers=(optimizer, schedule))
    trainer.train()
    if save_state:
        trainer.save_state()
    return truth


def lightning_run(
    save_dir: Path, steps: int = 60, diverge_at: int | None = None, version: int | None = None, grad_norms: bool = False
) -> Truth:
    """A small MLP fitted by a real Lightning `Trainer` with `CSVLogger` (and LearningRateMonitor);
    the learning rate jumps to 1e20 from optimizer step `diverge_at` - 1, so the weights overflow.
    With `grad_norms`, Lightning's own `grad_norm` utility logs per-parameter and total norms."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import grad_norm

    torch.manual_seed(0)
    truth = Truth()
    switch = (diverge_at or 10**9) - 1

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"hidden": 32, "lr": 0.05})
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

        def training_step(self, batch, index):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            truth.losses.setdefault(self.global_step, loss.item())
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def on_before_optimizer_step(self, optimizer):
            norms = torch.stack([p.grad.norm() for p in self.parameters() if p.grad is not None])
            truth.grad_norms.setdefault(self.global_step, norms.norm().item())
            if grad_norms:
                self.log_dict(grad_norm(self, norm_type=2))

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 if s < switch else 1e20)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    x = torch.randn(512, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    trainer = L.Trainer(
        max_steps=steps,
        logger=CSVLogger(str(save_dir), version=version),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[LearningRateMonitor()],
    )
    trainer.fit(Module(), loader)
    return truth
