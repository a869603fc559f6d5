"""The GPUs a set of traces ran on, from each trace's `deviceProperties` (docs/report.md, "Run
facts"): model, memory and how many of them the traced ranks used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from .traces import TraceSet


def _used_ids(events: pl.DataFrame) -> dict[int, set[str]]:
    """rank → device ids (as text: Kineto writes pids as numbers or strings) that ran kernels."""
    if events.is_empty() or not {"cat", "pid", "rank"} <= set(events.columns):
        return {}
    used = (
        events.filter(pl.col("cat").cast(pl.String).is_in(["kernel", "gpu_memcpy", "gpu_memset"]))
        .select("rank", pl.col("pid").cast(pl.String))
        .unique()
    )
    out: dict[int, set[str]] = {}
    for rank, pid in used.iter_rows():
        out.setdefault(rank, set()).add(pid)
    return out


def gpu_devices(traces: TraceSet) -> list[dict[str, Any]]:
    """One entry per GPU model: `name`, `memory_bytes` (per device), `count` (devices that ran
    kernels, or every device the trace lists when none did)."""
    used = _used_ids(traces.events)
    models: dict[tuple[str, int | None], set[tuple[str, str]]] = {}
    for rank, meta in traces.ranks.items():
        listed = [
            p for p in meta.get("deviceProperties") or [] if isinstance(p, dict) and isinstance(p.get("name"), str)
        ]
        mine = used.get(rank)
        for props in listed:
            device = str(props.get("id"))
            if mine and device not in mine:
                continue
            memory = props.get("totalGlobalMem")
            key = (props["name"], memory if isinstance(memory, int) and not isinstance(memory, bool) else None)
            # a device is one per host: two ranks on one machine list the same eight GPUs
            host = meta.get("hostname")
            models.setdefault(key, set()).add((host if isinstance(host, str) else f"rank {rank}", device))
    return [
        {"name": name, "memory_bytes": memory, "count": len(devices)}
        for (name, memory), devices in sorted(models.items(), key=lambda kv: kv[0][0])
    ]
