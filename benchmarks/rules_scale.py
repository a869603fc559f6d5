"""Scale benchmark for the performance rules: `perf.detect` on synthetic per-rank tables of
realistic shape at 128, 1,024 and 4,096 ranks. One command, prints a table:

    python benchmarks/rules_scale.py                  # 128, 1024, 4096 ranks
    python benchmarks/rules_scale.py --ranks 128 1024

Each rank has 50 profiled steps of 12 ops (a `step_ops` row per op and step), a GPU temporal
breakdown and launch statistics, and 2,000 recorder steps whose allocated memory grows. Every
rank is idle on its GPU (gpu-idle), loads data for a fifth of each step (dataloader-bound), and
has three slow steps at random steps, two explained by one op (slow-step); ranks 7, 19 and 31
are stragglers. Each N runs in a fresh subprocess; the row gives the wall time of each rule and
of the cross-rank merge that `analyze` runs after them, the total, the findings left after the
merge and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import polars as pl

STEPS, OPS, RECORDED = 50, 12, 2000
STRAGGLERS = (7, 19, 31)


def tables(ranks: int, seed: int = 0) -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    rank = np.repeat(np.arange(ranks, dtype=np.int64), STEPS)
    step = np.tile(np.arange(1, STEPS + 1, dtype=np.int64), ranks)
    duration = rng.normal(100e6, 1e6, ranks * STEPS)  # 100 ms steps
    duration[np.isin(rank, STRAGGLERS)] *= 1.3
    slow = np.zeros(ranks * STEPS, bool)
    slow_op = np.zeros(ranks * STEPS, bool)
    for r in range(ranks):  # three slow steps per rank, the first two explained by one op
        picks = rng.choice(STEPS, 3, replace=False) + r * STEPS
        slow[picks] = True
        slow_op[picks[:2]] = True
    duration[slow] += 200e6
    steps = pl.DataFrame(
        {
            "rank": rank,
            "session": np.zeros(ranks * STEPS, np.int32),
            "step": step,
            "ts_ns": step * 200_000_000,
            "duration_ns": duration.astype(np.int64),
            "total_data_loading_ns": (duration * 0.21).astype(np.int64),
            "total_host_sync_ns": (duration * 0.01).astype(np.int64),
            "data_loading_ns": (duration * 0.21).astype(np.int64),
            "host_sync_ns": (duration * 0.01).astype(np.int64),
            "other_ns": (duration * 0.5).astype(np.int64),
            "total_gpu_idle_ns": (duration * 0.6).astype(np.int64),
        }
    )
    names = [f"aten::op{i}" for i in range(OPS)]
    self_ns = np.repeat(duration / (2 * OPS), OPS).reshape(-1, OPS)
    self_ns[slow_op, 3] += 200e6  # aten::op3 takes the extra time of the explained slow steps
    step_ops = pl.DataFrame(
        {
            "rank": np.repeat(rank, OPS),
            "session": np.zeros(ranks * STEPS * OPS, np.int32),
            "step": np.repeat(step, OPS),
            "name": np.tile(names, ranks * STEPS),
            "calls": np.full(ranks * STEPS * OPS, 4, np.int64),
            "total_ns": (self_ns.ravel() * 1.2).astype(np.int64),
            "self_ns": self_ns.ravel().astype(np.int64),
        }
    )
    recorded = pl.DataFrame(
        {
            "rank": np.repeat(np.arange(ranks, dtype=np.int32), RECORDED),
            "step": np.tile(np.arange(RECORDED, dtype=np.int64), ranks),
            "duration_s": np.full(ranks * RECORDED, 0.1),
            "mem_allocated": np.tile(2**31 + np.arange(RECORDED, dtype=np.int64) * 2**20, ranks),
            "max_mem_allocated": np.tile(2**31 + np.arange(RECORDED, dtype=np.int64) * 2**20 + 2**28, ranks),
        }
    )
    return {"steps": steps, "step_ops": step_ops, "recorded": recorded}


def analyse(ranks: int) -> None:
    """Child process: the measured rules, then one JSON line."""
    from tracemortem.config import Config
    from tracemortem.detect import perf
    from tracemortem.detect.ranks import merge_across_ranks
    from tracemortem.load.run import RunData
    from tracemortem.timing import Timing

    frames = tables(ranks)
    gpu = {"idle_us": 30_000.0, "compute_us": 15_000.0, "non_compute_us": 5_000.0, "span_us": 50_000.0, "comm_us": 0}
    launch = {"launches": 1000, "launch_p50_us": 8.0, "gpu_p50_us": 20.0, "shorter_than_launch": 100}
    timing = Timing(
        ops=frames["step_ops"]
        .group_by("name")
        .agg(pl.col("calls", "total_ns", "self_ns").sum())
        .with_columns(pl.lit("cpu_op").alias("cat"), pl.lit("").alias("input_dims"), pl.lit(0).alias("gpu_ns")),
        kernels=pl.DataFrame(),
        steps=frames["steps"],
        step_ops=frames["step_ops"],
        ranks=[
            {"rank": r, "steps": STEPS, "step_time_s": 0.1, "gpu": dict(gpu), "launch": dict(launch)}
            for r in range(ranks)
        ],
    )
    run = RunData(None, None, {}, frames["recorded"], pl.LazyFrame(), pl.DataFrame(), pl.DataFrame())  # type: ignore[arg-type]
    config = Config()
    start = time.perf_counter()
    inputs = perf.PerfInputs.of(timing, run, config)
    seconds: dict[str, float] = {}
    findings = []
    for rule in perf.RULES:
        t0 = time.perf_counter()
        findings += rule(inputs, config)
        seconds[rule.__name__] = time.perf_counter() - t0
    t0 = time.perf_counter()
    findings = merge_across_ranks(findings)  # what analyze() runs after the rules
    seconds["merge"] = time.perf_counter() - t0
    total = time.perf_counter() - start
    found: dict[str, int] = {}
    for f in findings:
        found[f.rule] = found.get(f.rule, 0) + 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "total": total, "found": found, "peak_rss": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", nargs="+", type=int, default=[128, 1024, 4096])
    parser.add_argument("--analyse", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.analyse:
        analyse(args.analyse)
        return
    header = None
    for ranks in args.ranks:
        out = subprocess.run([sys.executable, __file__, "--analyse", str(ranks)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if header is None:
            header = list(res["seconds"])
            print(
                f"{'ranks':>6} "
                + " ".join(f"{name:>15}" for name in header)
                + f" {'total s':>8} {'peak RSS':>9}  findings"
            )
        found = " ".join(f"{rule}:{n}" for rule, n in sorted(res["found"].items()))
        print(
            f"{ranks:>6} "
            + " ".join(f"{res['seconds'][name]:>15.2f}" for name in header)
            + f" {res['total']:>8.2f} {res['peak_rss'] / 2**20:>7.0f}MB  {found}",
            flush=True,
        )


if __name__ == "__main__":
    main()
