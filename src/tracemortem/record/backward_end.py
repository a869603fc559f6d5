"""End of each backward pass, for loops without an optimizer to hook.

A manual update (`p -= lr * p.grad`) runs between `loss.backward()` and `rec.step()`, so
gradients read in `rec.step()` are the right ones but the weights are already updated: a
snapshot taken then is not the state before the bad update. Parameters' post-accumulate-grad
hooks fire during backward; the first one of a pass queues an autograd engine callback, which
runs once the whole pass has finished, before any user code sees the gradients.
See docs/recorder.md, "Stepping styles".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Hooks kept after the first pass: those of the parameters whose gradients were ready first
# (nearest the output), and an evenly spaced sample of all of them, so that a pass through only
# part of the model (one of several heads) still fires one; one firing queues the callback.
# Each hook is a Python call per pass: a few hundred cost well under a millisecond.
KEEP_FIRST = 8
KEEP_SPREAD = 256


class BackwardEnd:
    def __init__(self, params: list[torch.Tensor], on_end: Callable[[], None]):
        self._on_end = on_end
        self._queued = False
        self._first_pass: list[int] | None = []
        self.passes = 0
        self._handles: dict[int, Any] = {}
        for pid, p in enumerate(params):
            if p.requires_grad:
                self._handles[pid] = p.register_post_accumulate_grad_hook(self._hook(pid))

    def _hook(self, pid: int) -> Callable[[torch.Tensor], None]:
        def hook(_param: torch.Tensor) -> None:
            if self._first_pass is not None:
                self._first_pass.append(pid)
            if self._queued:
                return
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._end)
                self._queued = True
            except Exception:
                pass

        return hook

    def _end(self) -> None:
        self._queued = False
        self.passes += 1
        if self._first_pass is not None:
            pids = list(self._handles)
            keep = set(self._first_pass[:KEEP_FIRST]) | set(pids[:: max(1, len(pids) // KEEP_SPREAD)])
            for pid in [pid for pid in pids if pid not in keep]:
                self._handles.pop(pid).remove()
            self._first_pass = None
        self._on_end()

    def remove(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
