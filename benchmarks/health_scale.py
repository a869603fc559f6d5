"""Scale benchmark for the training-health analysis: load_run + health.detect on grads tables
of 1 M, 10 M and 100 M rows (2,000 parameters x 500 / 5,000 / 50,000 steps), written in the
repo's own run-directory format. Each size runs in a fresh subprocess so its peak RSS is its own.

    python benchmarks/health_scale.py              # all sizes
    python benchmarks/health_scale.py --sizes 1M 10M
    python benchmarks/health_scale.py --sizes 1024-replicas 1024-shards

The `1024-*` sizes are run directories of 1,024 ranks (replicas: every rank records the same 64
parameters; shards: each rank records its own 2 of 2,048 parameters), 200 steps each; their row
also counts how many times the health rules collect a lazy frame (the grads table is the only
lazy one), and how many parquet reads of grads chunks those collects make.

Data is generated once into benchmarks/.data/ (gitignored) and reused.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from tracemortem import format as fmt

DATA = Path(__file__).parent / ".data"
PARAMS = 2000
SIZES = {"1M": 500, "10M": 5_000, "100M": 50_000}  # steps for PARAMS parameters
RANK_SETS = {"1024-replicas": (1024, 64, False), "1024-shards": (1024, 2, True)}  # ranks, params per rank, sharded
RANK_STEPS = 200
CHUNK_STEPS = 500  # 1 M rows per grads chunk, like a recorder flushing every 500 steps


def steps_table(columns: dict[str, object]) -> pa.Table:
    """A steps chunk: the given columns, every other column of the schema null."""
    rows = len(next(iter(columns.values())))  # type: ignore[arg-type]
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(rows, f.type)) for f in fmt.STEPS_SCHEMA}, schema=fmt.STEPS_SCHEMA
    )


def generate(root: Path, steps: int, seed: int = 0) -> None:
    """A run with realistic structure and a few events the rules must find: a gradient spike
    at 80% of the run, NaN from 95%, one dead and one unused parameter."""
    rng = np.random.default_rng(seed)
    fmt.write_json_atomic(
        root / fmt.MANIFEST, {"format": 1, "status": "closed", "world_size": 1, "started": 0, "ended": 1}
    )
    shapes = [[256, 256] if i % 2 == 0 else [256] for i in range(PARAMS)]
    fmt.write_json_atomic(
        root / "rank0" / fmt.META,
        {
            "rank": 0,
            "world_size": 1,
            "params": [
                {
                    "param_id": i,
                    "name": f"layers.{i // 2}.{'weight' if i % 2 == 0 else 'bias'}",
                    "shape": s,
                    "numel": int(np.prod(s)),
                    "dtype": "float32",
                    "requires_grad": True,
                }
                for i, s in enumerate(shapes)
            ],
        },
    )
    base = rng.lognormal(-2, 1, PARAMS).astype(np.float32)
    weight = rng.lognormal(1, 0.5, PARAMS).astype(np.float32)
    spike, nan_from = int(steps * 0.8), int(steps * 0.95)
    dead, unused = 7, 9
    pid_all = np.tile(np.arange(PARAMS, dtype=np.int32), CHUNK_STEPS)
    rank = fmt.RankPaths(root / "rank0")
    grad_norm = np.empty(steps, np.float32)
    for c, lo in enumerate(range(0, steps, CHUNK_STEPS)):
        n = min(CHUNK_STEPS, steps - lo)
        step = np.repeat(np.arange(lo, lo + n, dtype=np.int64), PARAMS)
        norm = base * rng.lognormal(0, 0.2, (n, PARAMS)).astype(np.float32)
        norm[:, dead] = 0.0
        rows = np.arange(lo, lo + n)
        norm[rows == spike] *= 1000.0
        norm[rows >= nan_from] = np.nan
        grad_norm[lo : lo + n] = np.sqrt(np.nansum(norm.astype(np.float64) ** 2, axis=1))
        grad_norm[lo : lo + n][rows >= nan_from] = np.nan
        flat = norm.ravel()
        keep = pid_all[: n * PARAMS] != unused  # never got a gradient: no row
        nonfinite = np.where(np.isfinite(flat), 0, 65536).astype(np.int64)
        table = pa.table(
            {
                "step": step[keep],
                "param_id": pid_all[: n * PARAMS][keep],
                "norm": flat[keep],
                "absmax": (flat * 0.1)[keep],
                "nonfinite": nonfinite[keep],
                "weight_norm": np.tile(weight, n)[keep],
                "update_norm": (np.tile(weight, n) * 1e-3)[keep],
            },
            schema=fmt.GRADS_SCHEMA,
        )
        fmt.write_chunk(rank.grads, c, table)
    loss = (2.0 + rng.normal(0, 0.02, steps)).astype(np.float32)
    loss[nan_from:] = np.nan
    fmt.write_chunk(
        rank.steps,
        0,
        steps_table(
            {
                "step": np.arange(steps, dtype=np.int64),
                "time": np.arange(steps, dtype=np.float64),
                "duration_s": np.full(steps, 0.1),
                "loss": loss,
                "lr": np.full(steps, 1e-3),
                "grad_norm": grad_norm,
                "nonfinite": np.where(np.arange(steps) >= nan_from, PARAMS - 2, 0).astype(np.int64),
                "skipped": np.zeros(steps, bool),
            }
        ),
    )


def generate_ranks(root: Path, ranks: int, params: int, sharded: bool, seed: int = 0) -> None:
    """A run of `ranks` ranks, RANK_STEPS steps each, with a gradient spike at step 150 on every rank."""
    rng = np.random.default_rng(seed)
    fmt.write_json_atomic(
        root / fmt.MANIFEST, {"format": 1, "status": "closed", "world_size": ranks, "started": 0, "ended": 1}
    )
    steps = RANK_STEPS
    for rank in range(ranks):
        first = rank * params if sharded else 0
        fmt.write_json_atomic(
            root / f"rank{rank}" / fmt.META,
            {
                "rank": rank,
                "world_size": ranks,
                "grads_sharded": sharded,
                "params": [
                    {
                        "param_id": first + i,
                        "name": f"layers.{first + i}.weight",
                        "shape": [64, 64],
                        "numel": 4096,
                        "dtype": "float32",
                        "requires_grad": True,
                    }
                    for i in range(params)
                ],
            },
        )
        paths = fmt.RankPaths(root / f"rank{rank}")
        norm = (0.1 * rng.lognormal(0, 0.2, (steps, params))).astype(np.float32)
        norm[150] *= 1000.0
        fmt.write_chunk(
            paths.grads,
            0,
            pa.table(
                {
                    "step": np.repeat(np.arange(steps, dtype=np.int64), params),
                    "param_id": np.tile(np.arange(first, first + params, dtype=np.int32), steps),
                    "norm": norm.ravel(),
                    "absmax": norm.ravel() * 0.1,
                    "nonfinite": np.zeros(steps * params, np.int64),
                    "weight_norm": np.full(steps * params, 3.0, np.float32),
                    "update_norm": np.full(steps * params, 3e-3, np.float32),
                },
                schema=fmt.GRADS_SCHEMA,
            ),
        )
        grad_norm = np.sqrt((norm.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)
        fmt.write_chunk(
            paths.steps,
            0,
            steps_table(
                {
                    "step": np.arange(steps, dtype=np.int64),
                    "time": np.arange(steps, dtype=np.float64),
                    "duration_s": np.full(steps, 0.1),
                    "loss": (2.0 + rng.normal(0, 0.02, steps)).astype(np.float32),
                    "lr": np.full(steps, 1e-3),
                    "grad_norm": grad_norm,
                    "nonfinite": np.zeros(steps, np.int64),
                    "skipped": np.zeros(steps, bool),
                }
            ),
        )


def _counting_reads() -> dict[str, int]:
    """Counts LazyFrame collects and the grads chunks their plans scan (polars' plan text names
    how many files a scan reads)."""
    import polars as pl

    counts = {"collects": 0, "grads_files_read": 0}
    collect = pl.LazyFrame.collect

    def counted(self: pl.LazyFrame, *args: object, **kwargs: object) -> pl.DataFrame:
        counts["collects"] += 1
        plan = self.explain()
        counts["grads_files_read"] += sum(
            1 + int(n) for n in re.findall(r"\[.*?grads.*?\.parquet.*?\.\.\. (\d+) other", plan)
        )
        counts["grads_files_read"] += len(re.findall(r"Parquet SCAN \[[^\]]*grads[^\],]*\.parquet\]", plan))
        return collect(self, *args, **kwargs)

    pl.LazyFrame.collect = counted  # type: ignore[method-assign]
    return counts


def analyse(root: Path) -> None:
    """Child process: the measured work, then one JSON line with time and peak RSS."""
    start = time.perf_counter()
    from tracemortem.config import Config
    from tracemortem.detect import health
    from tracemortem.load.discover import discover
    from tracemortem.load.run import load_run

    counts = _counting_reads()
    run = load_run(discover(root))
    findings = health.detect(run, Config())
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "peak_rss": peak,
                "findings": sorted({f"{f.rule}:{f.severity}" for f in findings}),
                **counts,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=[*SIZES, *RANK_SETS])
    parser.add_argument("--analyse", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.analyse:
        analyse(args.analyse)
        return
    print(
        f"{'input':>14} {'rows':>12} {'steps':>7} {'on disk':>9} {'generate s':>10} {'analyse s':>10} {'s/M rows':>9} "
        f"{'peak RSS':>9} {'collects':>8} {'grads reads':>11}  findings"
    )
    for size in args.sizes:
        if size in RANK_SETS:
            ranks, params, sharded = RANK_SETS[size]
            steps, rows = RANK_STEPS, RANK_STEPS * ranks * params
            root = DATA / f"ranks-{size}"
            make = functools.partial(generate_ranks, root, ranks, params, sharded)
        else:
            steps, rows = SIZES[size], SIZES[size] * PARAMS
            root = DATA / f"grads-{PARAMS}x{steps}"
            make = functools.partial(generate, root, steps)
        gen = 0.0
        if not (root / "rank0" / "steps").is_dir():
            t0 = time.perf_counter()
            make()
            gen = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        out = subprocess.run([sys.executable, __file__, "--analyse", str(root)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{size:>14} {rows:>12,} {steps:>7} {disk / 2**20:>7.0f}MB {gen:>10.1f} {res['seconds']:>10.2f} "
            f"{res['seconds'] / rows * 1e6:>9.3f} {res['peak_rss'] / 2**20:>7.0f}MB {res['collects']:>8} "
            f"{res['grads_files_read']:>11}  {' '.join(res['findings'])}",
            flush=True,
        )


if __name__ == "__main__":
    main()
