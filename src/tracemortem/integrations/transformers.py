"""Hugging Face Trainer: `Trainer(..., callbacks=[TracemortemCallback("runs/exp1")])`.

The Trainer hands callbacks an accelerate `AcceleratedOptimizer`; the Recorder hooks the torch
optimizer inside it (and accelerate's GradScaler, for skipped fp16 steps). Callbacks never see
the loss, so the callback reads it where the model reports it: a forward hook on the model keeps
the `loss` of each training forward pass (a `ModelOutput`/dict with a `loss` entry, i.e. when the
batch has labels). A step's loss is the one the Trainer logs: the mean of its micro-batches'
losses, or their sum when the model normalised each by the whole step's token count
(`num_items_in_batch`). The forward pre-hook also keeps the batch for the snapshot. With a custom
`compute_loss` that computes the loss outside the model, the loss column stays empty.
One row per optimizer step (`state.global_step`). See docs/integrations.md.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from .. import format as fmt
from ..record import Recorder


def _loss_of(output: Any) -> torch.Tensor | None:
    loss = output.get("loss") if hasattr(output, "get") else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


class TracemortemCallback(TrainerCallback):
    """Records `trainer.train()` into `run_dir`; `recorder_options` are `tracemortem.Recorder`'s
    (grad_every, profile, checkpoint_every, ...)."""

    def __init__(self, run_dir: str, **recorder_options: Any):
        self.run_dir = run_dir
        self.recorder_options = recorder_options
        self.recorder: Recorder | None = None
        self._losses: list[tuple[torch.Tensor, bool]] = []  # (loss, normalised by the step's items)
        self._handles: list[Any] = []

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kw: Any
    ) -> None:
        if self.recorder is not None or model is None:
            return
        options = {"start_step": state.global_step, **self.recorder_options}
        scaler = getattr(optimizer, "scaler", None)
        self.recorder = Recorder(self.run_dir, model, optimizer, scaler=scaler, **options)
        self._handles = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, with_kwargs=True),
        ]

    def _before_forward(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if self.recorder is not None and module.training and torch.is_grad_enabled():
            self.recorder.observe_batch(kwargs if kwargs else args)

    def _after_forward(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self.recorder is None or not module.training or not torch.is_grad_enabled():
            return
        try:
            loss = _loss_of(output)
        except Exception:
            return
        if loss is not None:
            self._losses.append((loss.detach(), kwargs.get("num_items_in_batch") is not None))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.recorder is None:
            return
        losses, self._losses = self._losses, []
        loss = None
        if losses:
            stacked = torch.stack([value.float().reshape(()) for value, _ in losses])
            loss = stacked.sum() if all(normalised for _, normalised in losses) else stacked.mean()
        self.recorder.step(loss=loss)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.recorder is not None:
            self.recorder.close(status=fmt.STATUS_CLOSED)
            self.recorder = None
