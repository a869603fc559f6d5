"""Checkpoints every N steps (or on demand), keeping the last K, with a health sidecar that
says whether each kept checkpoint's weights are finite (HEALTH_SCHEMA, rewritten atomically)."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import format as fmt
from .gradstats import ParamTable

_CKPT = re.compile(r"^step-(\d{8})\.pt$")


class Checkpointer:
    def __init__(self, paths: fmt.RankPaths, table: ParamTable, keep: int):
        self.paths, self.table, self.keep = paths, table, max(1, int(keep))
        self._health: list[dict[str, Any]] = []
        if paths.health.is_file():  # a resumed run keeps the rows of checkpoints still on disk
            try:
                self._health = pq.read_table(paths.health).to_pylist()
            except Exception:
                self._health = []

    def save(self, step: int, state: dict[str, Any]) -> Path:
        target = self.paths.checkpoint(step)
        with fmt.atomic_file(target) as tmp:
            torch.save(state, tmp)
        rel = f"{fmt.CHECKPOINTS}/{target.name}"
        self._health = [r for r in self._health if r["path"] != rel] + self._rows(step, rel)
        self._prune()
        self._write_health()
        return target

    @torch.no_grad()
    def _rows(self, step: int, rel: str) -> list[dict[str, Any]]:
        params = [p.detach() for p in self.table.params]
        if not params:
            return []
        norms = torch.stack(torch._foreach_norm(params, 2, dtype=torch.float32)).tolist()
        absmax = torch.stack(torch._foreach_norm(params, float("inf"), dtype=torch.float32)).tolist()
        rows = []
        for pid, (p, n, a) in enumerate(zip(params, norms, absmax)):
            bad = 0 if math.isfinite(n) and math.isfinite(a) else int((~torch.isfinite(p)).sum())
            rows.append(
                {"step": step, "path": rel, "param_id": pid, "weight_norm": n, "weight_absmax": a, "nonfinite": bad}
            )
        return rows

    def _prune(self) -> None:
        found = sorted((int(m.group(1)), p) for p in self.paths.checkpoints.iterdir() if (m := _CKPT.match(p.name)))
        for _, old in found[: max(0, len(found) - self.keep)]:
            old.unlink(missing_ok=True)
        kept = {f"{fmt.CHECKPOINTS}/{p.name}" for _, p in found[-self.keep :]}
        self._health = [r for r in self._health if r["path"] in kept]

    def _write_health(self) -> None:
        table = pa.Table.from_pylist(self._health, schema=fmt.HEALTH_SCHEMA)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        fmt.write_bytes_atomic(self.paths.health, sink.getvalue())
