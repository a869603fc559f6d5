"""`analyze(path)`: discover → load → summarise → detect. Each stage lives in its own package;
this module only wires them together and assembles the run facts (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .config import Config
from .detect import health, perf
from .detect.ranks import merge_across_ranks
from .errors import InputError
from .findings import Finding, cap_per_rule, sort_findings
from .format import FORMAT_VERSION, TOOL
from .ingest import load_logs
from .limits import MAX_FINDINGS_PER_RULE
from .load.discover import Inputs, discover
from .load.run import RunData, load_run
from .progress import Progress, silent
from .run_facts import RunFacts
from .scale import Engine, LocalEngine, ScaledTraces, analyze_traces
from .timing import Timing
from .timing.step_events import StepTimeline, TraceOrigin
from .version import __version__


@dataclass
class Analysis:
    path: Path
    kind: str  # run | rank | trace | traces | tensorboard | hf-trainer | lightning-csv
    findings: list[Finding]
    run: RunFacts  # the JSON document's `run` section (docs/report.md)
    steps: pl.DataFrame  # recorder steps, every rank (`rank` column); empty without a run directory
    grads: pl.LazyFrame  # per (step, param_id), merged across shards and ranks
    params: pl.DataFrame  # param_id, name, shape, numel, dtype, order (0 = nearest the output)
    ops: pl.DataFrame  # per op: calls, cpu total/self time, attributed GPU time
    kernels: pl.DataFrame  # per GPU kernel: calls, total, mean, max
    step_times: pl.DataFrame  # per (rank, step) from profiler traces, with the time breakdown
    timelines: list[StepTimeline] = field(default_factory=list)  # the slowest and first anomalous step
    trace_origins: dict[int, TraceOrigin] = field(default_factory=dict)  # rank → its trace files

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": TOOL,
            "version": __version__,
            "format": FORMAT_VERSION,
            "run": self.run.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
        }


def analyze(
    path: str | Path, config: Config | None = None, progress: Progress = silent, engine: Engine | None = None
) -> Analysis:
    """`engine` runs the per-rank map of the traces (docs/scale.md); default: in this process, one rank at a time."""
    config = config or Config()
    inputs = discover(path)
    run = load_run(inputs, progress=progress) if inputs.run_root is not None else None
    logs = load_logs(inputs, config, progress) if inputs.logs else None  # another tool's log
    run = logs.primary if logs is not None else run
    traces = _traces_or_note(inputs, run, engine or LocalEngine(jobs=1), progress)
    timing = traces.timing if traces is not None else None

    findings: list[Finding] = []
    if logs is not None:
        findings += logs.findings(config)
    elif run is not None:
        findings += run.notes + health.detect(run, config)
    if traces is not None:
        findings += traces.notes
    findings += perf.detect(timing, run, config)
    findings = merge_across_ranks(findings)  # one finding per cause, not per rank
    findings = sort_findings(cap_per_rule(sort_findings(findings), MAX_FINDINGS_PER_RULE.value()))

    return Analysis(
        path=inputs.path,
        kind=inputs.kind,
        findings=findings,
        run=run_facts(inputs, run, timing, traces),
        steps=run.steps if run is not None else pl.DataFrame(),
        grads=run.grads if run is not None else pl.LazyFrame(),
        params=run.params if run is not None else pl.DataFrame(),
        ops=timing.ops if timing is not None else pl.DataFrame(),
        kernels=timing.kernels if timing is not None else pl.DataFrame(),
        step_times=timing.steps if timing is not None else pl.DataFrame(),
        timelines=traces.timelines(findings) if traces is not None else [],
        trace_origins=traces.origins() if traces is not None else {},
    )


def _traces_or_note(inputs: Inputs, run: RunData | None, engine: Engine, progress: Progress) -> ScaledTraces | None:
    """The traces; in a run directory, traces that are all unreadable are a note on the run (whose
    steps and grads are still analysed), not the end of the analysis."""
    if not inputs.trace_files:
        return None
    try:
        return analyze_traces(inputs.trace_files, engine, progress)
    except InputError as exc:
        if run is None:
            raise
        run.notes.append(
            Finding(
                "input-error",
                "warning",
                "Unreadable trace file skipped",
                str(exc),
                suggestion="Check that the file is a torch.profiler chrome trace (.json or .json.gz).",
            )
        )
        return None


def run_facts(
    inputs: Inputs, run: RunData | None, timing: Timing | None, traces: ScaledTraces | None = None
) -> RunFacts:
    """The `run` section: path, world_size, steps {first, last, count}, ranks [...], plus what
    the report header shows (torch version, devices, status, what was recorded); docs/report.md."""
    facts: dict[str, Any] = {"path": str(inputs.path), "kind": inputs.kind}
    if run is not None:
        facts.update(run.facts)
    elif timing is not None:
        facts["recorded"] = ["traces"]
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
    if traces is not None and (gpus := traces.gpus):
        facts["gpus"] = gpus  # input-specific: kept in RunFacts.extra
    if "steps" not in facts:
        facts["steps"] = timing.step_span() if timing is not None else {"first": None, "last": None, "count": 0}
    return RunFacts.from_dict(facts)
