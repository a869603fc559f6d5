"""origin.json (docs/format.md): what a replay of the failing step found, read as untrusted
input. Only the known fields survive, each type-checked and bounded; anything else about the
document is a reason to skip it with an `input-error` note, never to fail the analysis."""

from __future__ import annotations

import math
from typing import Any

PHASES = ("forward", "backward")
CAUSES = ("batch-not-captured", "different-device", "non-determinism", "error", "sharded")
_NUMBERS = ("numel", "nan", "posinf", "neginf", "nonpositive", "min", "max", "absmin")
MAX_TEXT = 300
MAX_ENTRIES = 16


class MalformedOrigin(ValueError):
    """origin.json does not have the schema of docs/format.md."""


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedOrigin(f"expected a string, got {type(value).__name__}")
    return value[:limit]


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tensor_facts(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise MalformedOrigin("an inputs/params entry is not an object")
    out: dict[str, Any] = {key: _number(entry.get(key)) for key in _NUMBERS}
    out["finite"] = entry.get("finite") if isinstance(entry.get("finite"), bool) else None
    for key in ("what", "name", "dtype"):
        out[key] = _text(entry.get(key)) if isinstance(entry.get(key), str) else None
    shape = entry.get("shape")
    ok_shape = isinstance(shape, list) and len(shape) <= 16 and all(isinstance(s, int) for s in shape)
    out["shape"] = list(shape) if ok_shape and isinstance(shape, list) else None
    return out


def _entries(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedOrigin("inputs/params must be lists")
    return [_tensor_facts(e) for e in value[:MAX_ENTRIES]]


def _names(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v[:MAX_TEXT] for v in value[:MAX_ENTRIES] if isinstance(v, str)]


def clean_origin(raw: dict[str, Any]) -> dict[str, Any]:
    """The fields the analyzer uses, validated; raises MalformedOrigin."""
    reproduced = raw.get("reproduced")
    if not isinstance(reproduced, bool):
        raise MalformedOrigin("'reproduced' must be true or false")
    phase = raw.get("phase")
    if phase is not None and phase not in PHASES:
        raise MalformedOrigin(f"'phase' must be forward, backward or null, not {str(phase)[:40]!r}")
    step = raw.get("step")
    given = raw.get("replay")
    replay: dict[str, Any] = given if isinstance(given, dict) else {}
    batch_nonfinite = replay.get("batch_nonfinite")
    return {
        "reproduced": reproduced,
        "phase": phase,
        "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
        "mode": _text(raw.get("mode")),
        "module": _text(raw.get("module")),
        "module_class": _text(raw.get("module_class")),
        "op": _text(raw.get("op")),
        "backward_op": _text(raw.get("backward_op")),
        "dtype": _text(raw.get("dtype")),
        "device": _text(raw.get("device")),
        "reason": _text(raw.get("reason"), 1000),
        "causes": [c for c in _names(raw.get("causes")) if c in CAUSES],
        "inputs": _entries(raw.get("inputs")),
        "params": _entries(raw.get("params")),
        "snapshot_nonfinite_params": _names(raw.get("snapshot_nonfinite_params")),
        "batch_nonfinite": batch_nonfinite if isinstance(batch_nonfinite, int) and batch_nonfinite >= 0 else 0,
        "params_nonfinite": _names(replay.get("params_nonfinite")),
        "anomaly": _text(replay.get("anomaly")) if isinstance(replay.get("anomaly"), str) else None,
    }
