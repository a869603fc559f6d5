"""`analyze(path)`: discover → load → summarise → detect. Each stage lives in its own package;
this module only wires them together and assembles the run facts (DESIGN §4, §6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from . import __version__
from .config import Config
from .findings import Finding, sort_findings
from .format import FORMAT_VERSION, TOOL
from .load.discover import Inputs, discover
from .progress import Progress, silent


@dataclass
class Analysis:
    path: Path
    kind: str  # run | rank | trace | traces
    findings: list[Finding]
    run: dict[str, Any]  # the facts of DESIGN §6 `run`
    steps: pl.DataFrame  # recorder steps, every rank (`rank` column); empty without a run directory
    grads: pl.LazyFrame  # per (step, param_id), merged across shards and ranks
    params: pl.DataFrame  # param_id, name, shape, numel, dtype, order (0 = nearest the output)
    ops: pl.DataFrame  # per op: calls, cpu total/self time, attributed GPU time
    kernels: pl.DataFrame  # per GPU kernel: calls, total, mean, max
    step_times: pl.DataFrame  # per (rank, step) from profiler traces, with the time breakdown
    extras: dict[str, Any] = field(default_factory=dict)  # anything a reporter may use

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": TOOL,
            "version": __version__,
            "format": FORMAT_VERSION,
            "run": self.run,
            "findings": [f.to_dict() for f in self.findings],
        }


def analyze(path: str | Path, config: Config | None = None, progress: Progress = silent) -> Analysis:
    from .detect import health, perf
    from .detect.ranks import merge_across_ranks
    from .load.run import load_run
    from .load.traces import load_traces
    from .timing import summarize

    config = config or Config()
    inputs = discover(path)
    run = load_run(inputs, progress=progress) if inputs.run_root is not None else None
    traces = load_traces(inputs.trace_files, progress=progress) if inputs.trace_files else None
    timing = summarize(traces, config, progress=progress) if traces is not None else None

    findings: list[Finding] = []
    if run is not None:
        findings += run.notes + health.detect(run, config)
    if traces is not None:
        findings += traces.notes
    findings += perf.detect(timing, run, config)
    findings = merge_across_ranks(findings)  # one finding per cause, not per rank

    empty_lazy = pl.LazyFrame()
    return Analysis(
        path=inputs.path,
        kind=inputs.kind,
        findings=sort_findings(findings),
        run=run_facts(inputs, run, timing),
        steps=run.steps if run is not None else pl.DataFrame(),
        grads=run.grads if run is not None else empty_lazy,
        params=run.params if run is not None else pl.DataFrame(),
        ops=timing.ops if timing is not None else pl.DataFrame(),
        kernels=timing.kernels if timing is not None else pl.DataFrame(),
        step_times=timing.steps if timing is not None else pl.DataFrame(),
        extras={"run_data": run, "traces": traces, "timing": timing},
    )


def run_facts(inputs: Inputs, run: Any, timing: Any) -> dict[str, Any]:
    """DESIGN §6 `run`: path, world_size, steps {first, last, count}, ranks [...], plus what
    the report header shows (torch version, devices, status, what was recorded)."""
    facts: dict[str, Any] = {"path": str(inputs.path), "kind": inputs.kind}
    if run is not None:
        facts.update(run.facts)
    ranks: dict[int, dict[str, Any]] = {}
    if run is not None:
        for entry in run.rank_summary():
            ranks[entry["rank"]] = dict(entry)
    if timing is not None:
        for entry in timing.ranks:
            merged = ranks.setdefault(entry["rank"], {"rank": entry["rank"]})
            for key, value in entry.items():
                merged.setdefault(key, value)
    facts["ranks"] = [ranks[r] for r in sorted(ranks)]
    if timing is not None and timing.world_size is not None:
        facts.setdefault("world_size", timing.world_size)  # the traces' distributedInfo
    facts.setdefault("world_size", max(len(ranks), 1))
    if "steps" not in facts:
        facts["steps"] = timing.step_span() if timing is not None else {"first": None, "last": None, "count": 0}
    return facts
