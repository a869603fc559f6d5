"""The registry of named, documented thresholds (docs/thresholds.md).

Every detection rule declares its thresholds here with `threshold(...)` at import time and reads
their values through the `Thresholds` protocol; `config.Config` (defaults, config files and
`--set` overrides) is the one implementation. Rules depend on this module alone, never on
`config`, so that `config` can import every rule module to complete the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# The valid range of a number threshold unless it declares its own: no negative counts, times or
# factors, and nothing so large that arithmetic on it overflows or is meaningless.
NUMBER_RANGE = (0, 10**12)


@dataclass(frozen=True)
class Threshold:
    name: str  # "rule.param"
    default: float | int | str | bool
    doc: str
    source: str  # where the default comes from
    low: float = NUMBER_RANGE[0]  # valid range of a number threshold, both ends included
    high: float = NUMBER_RANGE[1]

    @property
    def rule(self) -> str:
        return self.name.split(".", 1)[0]


_REGISTRY: dict[str, Threshold] = {}


def threshold(
    name: str,
    default: Any,
    doc: str,
    source: str,
    low: float = NUMBER_RANGE[0],
    high: float = NUMBER_RANGE[1],
) -> Threshold:
    """Declare a threshold (module level, once); a number threshold accepts values in [low, high]."""
    if "." not in name:
        raise ValueError(f"threshold name {name!r} must be 'rule.param'")
    known = _REGISTRY.get(name)
    if known is not None and known.default != default:
        raise ValueError(f"threshold {name!r} declared twice with different defaults")
    _REGISTRY[name] = Threshold(name, default, doc, source, low, high)
    return _REGISTRY[name]


def declared() -> dict[str, Threshold]:
    """The thresholds declared so far (`config.all_thresholds()` imports every rule module first)."""
    return dict(_REGISTRY)


class Thresholds(Protocol):
    """What a rule reads its thresholds from: `config[T]` is T's value (default or override)."""

    def __getitem__(self, spec: Threshold | str) -> Any: ...
