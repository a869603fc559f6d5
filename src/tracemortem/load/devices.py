"""The GPUs a set of traces ran on, from each trace's `deviceProperties` (docs/report.md, "Run
facts"): model, memory and how many of them the traced ranks used."""

from __future__ import annotations

from typing import Any

import polars as pl


def used_devices(events: pl.DataFrame) -> pl.DataFrame:
    """rank, pid: the device ids (as text: Kineto writes pids as numbers or strings) that ran
    kernels (the rows of several sets of files can be concatenated)."""
    if events.is_empty() or not {"cat", "pid", "rank"} <= set(events.columns):
        return pl.DataFrame(schema={"rank": pl.Int32, "pid": pl.String})
    return (
        events.filter(pl.col("cat").is_in(["kernel", "gpu_memcpy", "gpu_memset"]))
        .select(pl.col("rank").cast(pl.Int32), pl.col("pid").cast(pl.String))
        .unique()
    )


def gpu_devices(ranks: dict[int, dict[str, Any]], used_rows: pl.DataFrame) -> list[dict[str, Any]]:
    """One entry per GPU model: `name`, `memory_bytes` (per device), `count` (devices that ran
    kernels, or every device the trace lists when none did); `ranks` is `TraceSet.ranks`,
    `used_rows` is `used_devices` of the events."""
    used: dict[int, set[str]] = {}
    for rank, pid in used_rows.unique().iter_rows():
        used.setdefault(rank, set()).add(pid)
    models: dict[tuple[str, int | None], set[tuple[str, str]]] = {}
    for rank, meta in ranks.items():
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
