"""Multi-rank trace folders for the scale tests: copies of real traces, each stating its own rank."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from trace_helpers import REAL_TRACES

GPU_TRACES = ("nccl_a100/rank-0.json.gz", "two_rank_sampled/rank-0.json.gz", "two_rank_sampled/rank-1.json.gz")
needs_real = pytest.mark.skipif(
    not all((REAL_TRACES / t).is_file() for t in GPU_TRACES), reason="shared/real_traces not present"
)


def as_rank(trace: Path, rank: int, world: int) -> bytes:
    """The trace's JSON with its distributedInfo saying rank `rank` of `world`."""
    raw = trace.read_bytes()
    doc = json.loads(gzip.decompress(raw) if trace.name.endswith(".gz") else raw)
    doc["distributedInfo"] = {**(doc.get("distributedInfo") or {}), "rank": rank, "world_size": world}
    return json.dumps(doc).encode()


def rank_folder(folder: Path, traces: list[Path]) -> Path:
    folder.mkdir()
    for rank, trace in enumerate(traces):
        (folder / f"rank{rank}.json").write_bytes(as_rank(trace, rank, len(traces)))
    return folder
