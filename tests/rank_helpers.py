"""Per-rank timing frames of many identical GPU ranks, the true input of the performance rules
and of the report's rank charts (shared by tests/test_rank_rules.py and tests/test_rank_heatmap.py)."""

from __future__ import annotations

import numpy as np
import polars as pl

from tracemortem.timing import Timing

OPS = 6


def timing_of(
    ranks: int, slow_every_rank: bool = True, stragglers: tuple[int, ...] = (), steps_per_rank: int = 30
) -> Timing:
    """`ranks` identical GPU ranks: idle GPU, a fifth of each step in the DataLoader, and (when
    `slow_every_rank`) one slow step per rank, at a step that differs by rank, explained by one op."""
    rank = np.repeat(np.arange(ranks), steps_per_rank)
    step = np.tile(np.arange(1, steps_per_rank + 1), ranks)
    duration = np.full(ranks * steps_per_rank, 100e6) + (step % 3) * 1e5
    duration[np.isin(rank, stragglers)] *= 1.3
    slow = np.zeros(ranks * steps_per_rank, bool)
    if slow_every_rank:
        slow[np.arange(ranks) * steps_per_rank + np.arange(ranks) % steps_per_rank] = True
    duration[slow] += 300e6
    steps = pl.DataFrame(
        {
            "rank": rank,
            "session": np.zeros(ranks * steps_per_rank, np.int32),
            "step": step,
            "duration_ns": duration.astype(np.int64),
            "total_data_loading_ns": (np.full(ranks * steps_per_rank, 100e6) * 0.21).astype(np.int64),
            "total_host_sync_ns": np.zeros(ranks * steps_per_rank, np.int64),
            "data_loading_ns": (np.full(ranks * steps_per_rank, 100e6) * 0.21).astype(np.int64),
            "host_sync_ns": np.zeros(ranks * steps_per_rank, np.int64),
            "other_ns": (duration * 0.5).astype(np.int64),
            "total_gpu_idle_ns": (duration * 0.6).astype(np.int64),
        }
    )
    self_ns = np.full((ranks * steps_per_rank, OPS), 100e6 / (2 * OPS))
    self_ns[slow, 2] += 300e6
    step_ops = pl.DataFrame(
        {
            "rank": np.repeat(rank, OPS),
            "session": np.zeros(ranks * steps_per_rank * OPS, np.int32),
            "step": np.repeat(step, OPS),
            "name": np.tile([f"aten::op{i}" for i in range(OPS)], ranks * steps_per_rank),
            "calls": np.ones(ranks * steps_per_rank * OPS, np.int64),
            "total_ns": self_ns.ravel().astype(np.int64),
            "self_ns": self_ns.ravel().astype(np.int64),
        }
    )
    gpu = {"idle_us": 30_000, "compute_us": 15_000, "non_compute_us": 5_000, "span_us": 50_000, "comm_us": 0}
    return Timing(
        ops=step_ops.group_by("name")
        .agg(pl.col("calls", "total_ns", "self_ns").sum())
        .with_columns(pl.lit("cpu_op").alias("cat"), pl.lit("").alias("input_dims"), pl.lit(0).alias("gpu_ns")),
        kernels=pl.DataFrame(),
        steps=steps,
        step_ops=step_ops,
        ranks=[{"rank": r, "steps": steps_per_rank, "step_time_s": 0.1, "gpu": dict(gpu)} for r in range(ranks)],
    )
