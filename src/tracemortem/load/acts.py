"""Activation statistics of a rank (`rank{R}/acts/`, docs/format.md) as one frame, module names
joined from `acts/modules.json` (untrusted: malformed entries are dropped, unnamed modules keep
their id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

ACTS_COLUMNS: dict[str, Any] = {
    "step": pl.Int64,
    "module_id": pl.Int32,
    "rms": pl.Float32,
    "absmax": pl.Float32,
    "zero_fraction": pl.Float32,
    "nonfinite": pl.Int64,
    "saturation": pl.Float32,
    "rank": pl.Int32,
    "module": pl.String,
    "module_class": pl.String,
}


def empty_acts() -> pl.DataFrame:
    return pl.DataFrame(schema=ACTS_COLUMNS)


def _module_table(modules: dict[str, Any] | None) -> pl.DataFrame:
    entries = modules.get("modules") if isinstance(modules, dict) else None
    rows = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        module_id, name, kind = entry.get("module_id"), entry.get("name"), entry.get("class")
        if isinstance(module_id, int) and not isinstance(module_id, bool) and 0 <= module_id < 2**31:
            rows.append(
                {
                    "module_id": module_id,
                    "module": name[:300] if isinstance(name, str) else None,
                    "module_class": kind[:100] if isinstance(kind, str) else None,
                }
            )
    schema = {"module_id": pl.Int32, "module": pl.String, "module_class": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").unique("module_id", keep="first")


def read_acts(paths: list[Path], modules: dict[str, Any] | None, rank: int) -> pl.DataFrame:
    frame = pl.read_parquet(paths).with_columns(pl.lit(rank, pl.Int32).alias("rank"))
    joined = frame.join(_module_table(modules), on="module_id", how="left").with_columns(
        pl.col("module").fill_null(pl.format("module {}", pl.col("module_id")))
    )
    return joined.select([pl.col(c).cast(t) for c, t in ACTS_COLUMNS.items()])
