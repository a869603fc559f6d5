"""`tracemortem replay RUN --model MODULE:FACTORY`: rebuild the model, load the snapshot, re-run
the failing step under watch, write origin.json (docs/replay.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import format as fmt
from ..errors import ConfigError
from . import rng
from .engine import LossFn, default_loss, replay_step
from .origin import build_origin, not_replayed, write_origin
from .snapshot_files import Snapshot, find_rank_dir, load_snapshot
from .usercode import resolve


def replay_run(
    path: Path, model_spec: str, loss_spec: str | None, rank: int | None, device_name: str | None, output: Path | None
) -> tuple[dict[str, Any], Path]:
    root, rank_dir = find_rank_dir(path, rank)
    snapshot = load_snapshot(root, rank_dir)
    device = _device(device_name, snapshot.recorded_device)
    factory = resolve(model_spec, "--model", root)
    loss_fn: LossFn = resolve(loss_spec, "--loss", root) if loss_spec else default_loss
    context = _context(snapshot, device, model_spec, loss_spec)
    if snapshot.batch is None:
        origin = not_replayed(
            context,
            "batch-not-captured",
            "the snapshot holds no batch (call rec.observe_batch(batch) in the training loop): the step cannot be re-run",
        )
    else:
        model = _build(factory, model_spec, snapshot, device)
        context["notes"] += rng.restore(snapshot.rng, device)
        replay = replay_step(model, _to_device(snapshot.batch, device), loss_fn)
        origin = build_origin(context, replay)
    target = output or snapshot.folder / fmt.SNAPSHOT_ORIGIN
    return origin, write_origin(target, origin)


def _device(name: str | None, recorded: str | None) -> torch.device:
    if name is None:  # where it was recorded, when this machine has it
        recorded_cuda = recorded is not None and recorded.startswith("cuda")
        name = "cuda" if recorded_cuda and torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine's torch sees no CUDA device")
    return torch.device(name)


def _context(snapshot: Snapshot, device: torch.device, model_spec: str, loss_spec: str | None) -> dict[str, Any]:
    info = snapshot.info
    names = info.get("nonfinite_params")
    return {
        "mode": "offline",
        "step": info.get("step") if isinstance(info.get("step"), int) else None,
        "rank": snapshot.rank,
        "snapshot_reason": str(info.get("reason")) if info.get("reason") is not None else None,
        "snapshot_nonfinite_params": [str(n) for n in names[:50]] if isinstance(names, list) else [],
        "device": str(device),
        "recorded_device": snapshot.recorded_device,
        "batch_captured": snapshot.batch is not None,
        "model": model_spec,
        "loss": loss_spec or "default",
        "notes": list(snapshot.notes),
    }


def _build(factory: Any, spec: str, snapshot: Snapshot, device: torch.device) -> torch.nn.Module:
    try:
        model = factory()
    except Exception as exc:
        raise ConfigError(f"--model {spec} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    state = _unwrapped(snapshot.model_state, set(model.state_dict()))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:400]
        raise ConfigError(f"the model built by {spec} does not match the snapshot's state_dict: {first}") from None
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # a model trained in bf16/fp16 weights is replayed in them, not in the factory's fp32
        model = model.to(dtype=dtypes.pop())
    return model.to(device).train()


def _unwrapped(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """The snapshot of a wrapped model (DistributedDataParallel's `module.`, torch.compile's
    `_orig_mod.`) loaded into the bare model the factory builds."""
    for prefix in ("module.", "_orig_mod."):
        if state and not set(state) & expected and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        moved = [_to_device(v, device) for v in value]
        return moved if isinstance(value, list) else tuple(moved)
    return value
