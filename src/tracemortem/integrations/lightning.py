"""PyTorch Lightning: `Trainer(callbacks=[TracemortemCallback("runs/exp1")])`.

Lightning runs forward and backward inside `optimizer.step(closure)`; the Recorder wraps that
closure, so the gradients it records are those of the step being applied. One row of the steps
table per optimizer step (Lightning's `global_step`): under `accumulate_grad_batches` the
micro-batches of one step make one row, whose loss is the sum of Lightning's normalised
micro-batch losses (their mean). Works with the `lightning` and the `pytorch_lightning`
packages, whichever the Trainer comes from. See docs/integrations.md.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from .. import format as fmt
from ..record import Recorder


def _callback_bases() -> tuple[type, ...]:
    """Lightning's Callback class of each installed namespace: the Trainer checks isinstance."""
    bases = []
    for module in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(module).Callback)
        except ImportError:
            continue
    if not bases:
        raise ImportError("tracemortem.integrations.lightning needs lightning: pip install 'tracemortem[lightning]'")
    return tuple(dict.fromkeys(bases))


def _loss_of(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss if isinstance(loss, torch.Tensor) else None


class TracemortemCallback(*_callback_bases()):  # type: ignore[misc]
    """Records the fit into `run_dir`; `recorder_options` are `tracemortem.Recorder`'s
    (grad_every, profile, checkpoint_every, ...)."""

    def __init__(self, run_dir: str, **recorder_options: Any):
        super().__init__()
        self.run_dir = run_dir
        self.recorder_options = recorder_options
        self.recorder: Recorder | None = None
        self._losses: list[torch.Tensor] = []
        self._global_step = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is not None:
            return
        options = {"start_step": trainer.global_step, **self.recorder_options}
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        self.recorder = Recorder(self.run_dir, pl_module, list(trainer.optimizers), scaler=scaler, **options)
        self._global_step = trainer.global_step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.recorder is not None:
            self.recorder.observe_batch(batch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.recorder is None:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            self._losses.append(loss.detach())
        if trainer.global_step == self._global_step:
            return  # a micro-batch of gradient accumulation: the optimizer has not stepped yet
        self._global_step = trainer.global_step
        losses, self._losses = self._losses, []
        self.recorder.step(loss=torch.stack(losses).sum() if losses else None)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close(fmt.STATUS_CLOSED)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close(fmt.STATUS_CRASHED)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close(fmt.STATUS_CLOSED)

    def _close(self, status: str) -> None:
        if self.recorder is not None:
            self.recorder.close(status=status)
            self.recorder = None
