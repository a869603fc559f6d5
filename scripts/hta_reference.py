"""Reference numbers from Holistic Trace Analysis for tests/data/hta_launch_reference.json.

Run in an environment with `pip install holistictraceanalysis==0.5.0` (not a tracemortem
dependency): `python scripts/hta_reference.py FOLDER... > out.json`, one trace folder per argument.
Prints, per folder and rank, HTA's get_cuda_kernel_launch_stats summarised the way tracemortem
reports it (counts and medians of HTA's per-event frame), and get_temporal_breakdown.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

RUNTIME_CUTOFF_US, LAUNCH_DELAY_CUTOFF_US = 50, 100  # HTA's defaults
TEMPORAL = ["rank", "idle_time(us)", "compute_time(us)", "non_compute_time(us)", "kernel_time(us)"]


def launch_summary(frame: Any) -> dict[str, Any]:
    cpu, gpu, delay = frame["cpu_duration"], frame["gpu_duration"], frame["launch_delay"]
    empty = len(frame) == 0
    return {
        "launches": len(frame),
        "delay_p50_us": None if empty else float(delay.median()),
        "launch_p50_us": None if empty else float(cpu.median()),
        "gpu_p50_us": None if empty else float(gpu.median()),
        "shorter_than_launch": int(((cpu <= RUNTIME_CUTOFF_US) & (gpu < cpu)).sum()),
        "launch_outliers": int((cpu > RUNTIME_CUTOFF_US).sum()),
        "delay_outliers": int((delay > LAUNCH_DELAY_CUTOFF_US).sum()),
    }


def main(folders: list[str]) -> None:
    logging.disable(logging.CRITICAL)
    from hta.trace_analysis import TraceAnalysis

    out: dict[str, Any] = {}
    for folder in folders:
        analysis = TraceAnalysis(trace_dir=folder)
        ranks = sorted(analysis.t.traces)
        stats = analysis.get_cuda_kernel_launch_stats(ranks=ranks, visualize=False)
        temporal = analysis.get_temporal_breakdown(visualize=False)
        out[Path(folder).name] = {
            "launch": {str(rank): launch_summary(frame) for rank, frame in stats.items()},
            "temporal": temporal[TEMPORAL].to_dict("records"),
        }
    print(json.dumps(out, indent=1, sort_keys=True, default=int))


if __name__ == "__main__":
    main(sys.argv[1:])
