"""Finite-state and range of tensors, as float64 rows of `FIELDS` on the tensor's device;
`row_dict` turns a host row into the JSON object origin.json holds (docs/format.md).

One `aminmax` pass tells whether a tensor is finite (NaN and Inf reach the min or max); only a
non-finite tensor pays for the full count of NaN, +Inf and -Inf and the finite-only range. That
test reads one flag back per tensor: a replay runs once, and most of its tensors are finite.
"""

from __future__ import annotations

from typing import Any

import torch

FIELDS = ("numel", "nan", "posinf", "neginf", "min", "max", "absmin", "nonpositive")
WIDTH = len(FIELDS)


def is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0


def is_finite(tensor: torch.Tensor) -> bool:
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def stats_row(tensor: torch.Tensor) -> torch.Tensor:
    """FIELDS of one floating-point tensor as a float64 row on its device."""
    t = tensor.detach()
    low, high = torch.aminmax(t)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        zero = torch.zeros((), device=t.device)
        count = torch.tensor(float(t.numel()), device=t.device)
        parts = [count, zero, zero, zero, low, high, t.abs().amin(), (t <= 0).sum()]
        return torch.stack([p.double() for p in parts])
    finite = torch.isfinite(t)
    wide = t.float()
    inf = torch.tensor(float("inf"), device=t.device)
    parts = [
        torch.tensor(float(t.numel()), device=t.device),
        torch.isnan(t).sum(),
        (t == float("inf")).sum(),
        (t == float("-inf")).sum(),
        torch.where(finite, wide, inf).amin(),
        torch.where(finite, wide, -inf).amax(),
        torch.where(finite, wide.abs(), inf).amin(),
        (t <= 0).sum(),
    ]
    return torch.stack([p.double() for p in parts])


def row_dict(row: list[float]) -> dict[str, Any]:
    """A host row as JSON-safe numbers; ranges are over the finite elements (null if none)."""
    values = dict(zip(FIELDS, row))
    out: dict[str, Any] = {k: int(values[k]) for k in ("numel", "nan", "posinf", "neginf", "nonpositive")}
    for key in ("min", "max", "absmin"):
        value = values[key]
        out[key] = float(value) if abs(value) != float("inf") else None
    out["finite"] = out["nan"] + out["posinf"] + out["neginf"] == 0
    return out


def flat_tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
    """Tensors inside nested containers (op arguments and outputs, batches, model outputs)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 8:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    elif hasattr(value, "to_tuple") and callable(value.to_tuple):  # transformers ModelOutput
        value = list(value.to_tuple())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in flat_tensors(item, depth + 1)]
    return []
