"""Small real training set-ups and run-directory readers shared by the recorder tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")


# Seconds a test waits on a child process: a guard against a hang, never a judgement of speed
# (a loaded machine can make a few seconds of work take minutes).
HANG_GUARD_S = 600


def mlp(seed: int = 0, width: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, 1),
    )


def batches(n: int, seed: int = 1, scale: float = 1.0, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 8, generator=gen) * scale
        out.append((x, x.sum(dim=1, keepdim=True)))
    return out


def read_steps(run: Path, rank: int = 0) -> pl.DataFrame:
    return pl.read_parquet(run / f"rank{rank}" / "steps" / "*.parquet").sort("step")


def read_grads(run: Path, rank: int = 0) -> pl.DataFrame:
    return pl.read_parquet(run / f"rank{rank}" / "grads" / "*.parquet").sort("step", "param_id")


def check_every_file_readable(run: Path) -> dict[str, int]:
    """Open every file the way a reader would; temp files of interrupted writes are hidden
    (leading dot) and must not be mistaken for data. Returns counts by kind."""
    seen: dict[str, int] = {}
    for path in sorted(run.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(run).parts):
            continue
        name = path.name
        if name.endswith(".parquet"):
            pl.read_parquet(path)
            kind = "parquet"
        elif name.endswith(".json"):
            json.loads(path.read_text())
            kind = "json"
        elif name.endswith(".json.gz"):
            assert "traceEvents" in json.loads(gzip.decompress(path.read_bytes()))
            kind = "trace"
        elif name.endswith(".pt"):
            torch.load(path, weights_only=True)
            kind = "pt"
        else:
            raise AssertionError(f"unexpected file {path}")
        seen[kind] = seen.get(kind, 0) + 1
    return seen
