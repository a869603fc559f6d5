"""Values handed to `rec.step(loss=..., **scalars)`, turned into steps-table columns.

A number is stored as given; a tensor rides along in the step's one device-to-host copy (no
`.item()`), as float64 so nothing is lost on the way; anything else (a string, a list, an object) is
dropped and counted, and recording goes on.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch


def tensor_value(value: torch.Tensor) -> torch.Tensor:
    """A 0-dim float64 tensor on the value's device: the mean of a non-scalar tensor, the real
    part of a complex one."""
    t = value.detach()
    if t.is_complex():
        t = t.real
    t = t.to(torch.float64)
    return t if t.dim() == 0 else t.mean()


class StepValues:
    """Collects one step's columns: `values` known on the host, `tensors` still on the device."""

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self.tensors: dict[str, torch.Tensor] = {}
        self.rejected: list[tuple[str, str]] = []  # (column, why)

    def put(self, name: str, value: Any) -> None:
        if value is None:
            return
        try:
            if isinstance(value, torch.Tensor):
                self.tensors[name] = tensor_value(value)
            elif isinstance(value, (bool, numbers.Real)) or _numpy_number(value):
                self.values[name] = float(value)
            else:
                self.rejected.append((name, f"a {type(value).__name__} is not a number"))
        except Exception as exc:
            self.rejected.append((name, f"{type(exc).__name__}: {exc}"[:200]))


def _numpy_number(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0
