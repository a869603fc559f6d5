"""Activation statistics (`Recorder(activations=N)`, docs/recorder.md): every N-th training
step, the output of each leaf module is reduced on its device to RMS, absmax, zero fraction,
non-finite count and, for bounded activations (tanh, sigmoid, …), the fraction at the bounds.

The reductions run in forward hooks (keeping no activation alive after its module returns);
the rows are stacked at the end of the step and copied to the host once (on CUDA without
waiting: the copy is read at the next recorded step). Chunks are written to `rank{R}/acts/`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from .. import format as fmt

# Bounded activations: (low, high) of their output; "saturation" is the share within 1 % of a bound.
BOUNDS = {"Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0), "Softsign": (-1.0, 1.0), "Sigmoid": (0.0, 1.0)}
BOUND_MARGIN = 0.01
FLUSH_STEPS = 50  # recorded steps per chunk


class ActivationStats:
    def __init__(
        self, model: torch.nn.Module, every: int, folder: Path, start_step: int, on_error: Callable[[Exception], None]
    ):
        self.every = max(1, int(every))
        self.on_error = on_error
        self.failed = False
        self.folder = folder
        self.modules = [(name, m) for name, m in model.named_modules() if not any(True for _ in m.children())]
        self.due = start_step % self.every == 0
        self._rows: list[torch.Tensor] = []
        self._ids: list[int] = []
        self._seen: set[int] = set()
        self._pending: list[tuple[int, list[int], torch.Tensor, Any]] = []  # step, ids, host rows, event
        self._host: list[tuple[int, list[int], list[list[float]]]] = []
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.modules)]

    def _hook(self, module_id: int) -> Callable[..., None]:
        bounds = BOUNDS.get(type(self.modules[module_id][1]).__name__)

        def hook(module: torch.nn.Module, _args: Any, output: Any) -> None:
            if not self.due or self.failed or not module.training or module_id in self._seen:
                return
            if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.numel() == 0:
                return
            try:
                row = _row(output.detach(), bounds)
            except Exception as exc:  # never into the training loop: stop recording activations
                self._stop(exc)
                return
            self._seen.add(module_id)
            self._ids.append(module_id)
            self._rows.append(row)

        return hook

    def _stop(self, exc: Exception) -> None:
        self.failed = True
        self._rows, self._ids = [], []
        self.on_error(exc)

    def end_step(self, step: int) -> None:
        """Hand this step's rows to the host (once), then arm the hooks for the next step."""
        if self.failed:
            return
        try:
            self._end_step(step)
        except Exception:
            self.failed = True  # the recorder warns (its "activations" part is disabled)
            raise

    def _end_step(self, step: int) -> None:
        if self._rows:
            rows = torch.stack(self._rows)
            if rows.device.type == "cuda":
                host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
                host.copy_(rows, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._pending.append((step, self._ids, host, event))
            else:
                self._pending.append((step, self._ids, rows, None))
        self._rows, self._ids, self._seen = [], [], set()
        self.due = (step + 1) % self.every == 0
        if len(self._pending) > 1:  # the earlier copies are done by now
            self._receive(keep_last=True)
        if len(self._host) >= FLUSH_STEPS:
            self.flush()

    def _receive(self, keep_last: bool) -> None:
        ready = self._pending[:-1] if keep_last else self._pending
        self._pending = self._pending[-1:] if keep_last else []
        for step, ids, host, event in ready:
            if event is not None:
                event.synchronize()
            self._host.append((step, ids, host.tolist()))

    def flush(self) -> None:
        self._receive(keep_last=False)
        if not self._host:
            return
        modules = self.folder / fmt.ACTS_MODULES
        if not modules.exists():
            names = [{"module_id": i, "name": n, "class": type(m).__name__} for i, (n, m) in enumerate(self.modules)]
            fmt.write_json_atomic(modules, {"modules": names})
        columns: dict[str, list[Any]] = {f.name: [] for f in fmt.ACTS_SCHEMA}
        for step, ids, rows in self._host:
            for module_id, (rms, absmax, zero_fraction, nonfinite, saturation) in zip(ids, rows):
                columns["step"].append(step)
                columns["module_id"].append(module_id)
                columns["rms"].append(rms)
                columns["absmax"].append(absmax)
                columns["zero_fraction"].append(zero_fraction)
                columns["nonfinite"].append(int(nonfinite))
                columns["saturation"].append(None if saturation < 0 else saturation)
        self._host = []
        fmt.write_chunk(self.folder, fmt.next_chunk_index(self.folder), pa.table(columns, schema=fmt.ACTS_SCHEMA))

    def detach(self) -> None:
        """Remove the hooks and keep nothing: a forked child's copy, which must not write."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.failed = True
        self._rows, self._ids, self._pending, self._host = [], [], [], []

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.flush()


def _row(t: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """[rms, absmax, zero fraction, non-finite count, saturation (-1: not a bounded activation)]."""
    numel = t.numel()
    norm = torch.linalg.vector_norm(t, dtype=torch.float32)
    low, high = torch.aminmax(t)
    parts = [
        norm / numel**0.5,
        torch.maximum(low.float().abs(), high.float().abs()),
        1.0 - torch.count_nonzero(t).float() / numel,
        (numel - torch.isfinite(t).sum()).float(),
    ]
    if bounds is None:
        parts.append(torch.full((), -1.0, device=t.device))
    else:
        margin = BOUND_MARGIN * (bounds[1] - bounds[0])
        parts.append(((t <= bounds[0] + margin) | (t >= bounds[1] - margin)).float().mean())
    return torch.stack(parts)
