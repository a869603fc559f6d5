"""The facts of one analysed input (the JSON document's `run` section, docs/report.md), typed.

Loaders and the timing stage report what they know as plain mappings; `RunFacts.from_dict`
takes the keys of the contract into typed fields and keeps any further, input-specific facts
(recorder settings, launch statistics, attempts, ...) in `extra`, so nothing a loader adds is
lost and nothing outside the contract pretends to be part of it. `to_dict()` gives the JSON form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass(frozen=True)
class StepSpan:
    first: int | None = None
    last: int | None = None
    count: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> StepSpan:
        data = data or {}
        return cls(
            _int_or_none(data.get("first")), _int_or_none(data.get("last")), _int_or_none(data.get("count")) or 0
        )

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "count": self.count}


@dataclass(frozen=True)
class RankFacts:
    """One rank: how many steps, its median step time, and (GPU traces) Holistic Trace Analysis'
    temporal breakdown in `gpu` (idle_us, compute_us, non_compute_us, ...)."""

    rank: int
    steps: int = 0
    step_time_s: float | None = None
    gpu: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankFacts:
        known = {"rank", "steps", "step_time_s", "gpu"}
        steps = data.get("steps")
        gpu = data.get("gpu")
        return cls(
            rank=int(data["rank"]),
            steps=_int_or_none(steps) or 0,
            step_time_s=_number_or_none(data.get("step_time_s")),
            gpu=dict(gpu) if isinstance(gpu, Mapping) else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rank": self.rank, "steps": self.steps, "step_time_s": self.step_time_s}
        if self.gpu is not None:
            out["gpu"] = dict(self.gpu)
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class RunFacts:
    path: str
    kind: str  # run | rank | trace | traces (docs/report.md lists every kind)
    world_size: int
    steps: StepSpan
    ranks: tuple[RankFacts, ...] = ()
    status: str | None = None  # running | closed | crashed (run directories)
    started: str | None = None  # ISO 8601, as the manifest has it
    ended: str | None = None
    torch_version: str | None = None
    cuda_version: str | None = None
    devices: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    recorded: tuple[str, ...] = ()  # what the input held: steps, grads, traces, checkpoints, snapshot
    parameters: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # input-specific facts beyond the contract

    _TEXT = ("status", "started", "ended", "torch_version", "cuda_version")
    _LISTS = ("devices", "hostnames", "recorded")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunFacts:
        known = {"path", "kind", "world_size", "steps", "ranks", "parameters", *cls._TEXT, *cls._LISTS}
        ranks = data.get("ranks") or []
        return cls(
            path=str(data.get("path", "")),
            kind=str(data.get("kind", "")),
            world_size=max(_int_or_none(data.get("world_size")) or 1, 1),
            steps=StepSpan.from_dict(data.get("steps")),
            ranks=tuple(RankFacts.from_dict(r) for r in ranks if isinstance(r, Mapping) and "rank" in r),
            status=_text_or_none(data.get("status")),
            started=_text_or_none(data.get("started")),
            ended=_text_or_none(data.get("ended")),
            torch_version=_text_or_none(data.get("torch_version")),
            cuda_version=_text_or_none(data.get("cuda_version")),
            devices=_texts(data.get("devices")),
            hostnames=_texts(data.get("hostnames")),
            recorded=_texts(data.get("recorded")),
            parameters=_int_or_none(data.get("parameters")),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def get(self, key: str, default: Any = None) -> Any:
        """A fact by its JSON name, contract field or extra (what the templates look up)."""
        value = self.to_dict().get(key)
        return default if value is None else value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "world_size": self.world_size}
        out["steps"] = self.steps.to_dict()
        for name in self._TEXT:
            out[name] = getattr(self, name)
        for name in self._LISTS:
            out[name] = list(getattr(self, name))
        out["parameters"] = self.parameters
        out.update(self.extra)
        out["ranks"] = [r.to_dict() for r in self.ranks]
        return out


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _texts(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return ()
