"""`Recorder(..., replay=fn)`: at the first non-finite step, once the snapshot is on disk,
re-run the step on a copy of the pre-update model and write origin.json (docs/replay.md).

The live model's weights, its gradients and every random generator are left as they were; a failure
becomes origin.json's reason (or, if even that cannot be written, the recorder's one warning).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .. import format as fmt
from .engine import LossFn, replay_step
from .origin import build_origin, not_replayed, write_origin
from .rng import preserved_rng


def replay_in_process(
    model: torch.nn.Module, batch: Any, fn: LossFn, folder: Path, *, step: int, rank: int, device: torch.device
) -> Path:
    context: dict[str, Any] = {
        "mode": "in-process",
        "step": step,
        "rank": rank,
        "device": str(device),
        "recorded_device": str(device),
        "batch_captured": batch is not None,
        "loss": getattr(fn, "__qualname__", type(fn).__name__),
        "notes": [],
    }
    model = getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model
    if batch is None:
        origin = not_replayed(
            context, "batch-not-captured", "no batch was observed (call rec.observe_batch(batch) before the step)"
        )
    elif type(model).__name__ == "FullyShardedDataParallel":
        origin = not_replayed(context, "sharded", "an FSDP model's step cannot be re-run on one rank alone")
    else:
        origin = _replay(model, batch, fn, context)
    return write_origin(folder / fmt.SNAPSHOT_ORIGIN, origin)


def _replay(model: torch.nn.Module, batch: Any, fn: LossFn, context: dict[str, Any]) -> dict[str, Any]:
    # The live gradients are set aside for the whole replay: they are not copied (that would
    # double their memory), and a `fn` that uses the live model by mistake cannot add to them.
    params = list(model.parameters())
    grads = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        return _replay_copy(model, batch, fn, context)
    finally:
        for p, g in zip(params, grads):
            p.grad = g


def _replay_copy(model: torch.nn.Module, batch: Any, fn: LossFn, context: dict[str, Any]) -> dict[str, Any]:
    try:
        with torch.no_grad():
            twin = copy.deepcopy(model)
    except Exception as exc:
        return not_replayed(context, "error", f"the model could not be copied: {type(exc).__name__}: {exc}")
    try:
        with preserved_rng():
            replay = replay_step(twin, batch, fn)
    except Exception as exc:
        return not_replayed(context, "error", f"the replay failed: {type(exc).__name__}: {exc}")
    finally:
        del twin
    return build_origin(context, replay)
