"""Analyse another tool's log (TensorBoard, Hugging Face Trainer, Lightning CSV): every logged
run is read into `RunData` and checked by the health rules on its own (docs/inputs.md).

With several runs in one folder, each finding names its run (`evidence.run`, and `subject` when
the finding had none) and the charts show the run with the most logged steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .errors import InputError
from .findings import Finding
from .load import hf_trainer, lightning_csv, tensorboard
from .load.discover import Inputs
from .load.logged import Logged, build_run, note
from .load.run import RunData
from .load.tags import TagMap
from .progress import Progress

Reader = Callable[[str, Path, list[Path], Progress], Logged]
READERS: dict[str, Reader] = {
    "tensorboard": tensorboard.read_run,
    "hf-trainer": lambda name, folder, files, progress: hf_trainer.read_state(name, folder, files[0]),
    "lightning-csv": lambda name, folder, files, progress: lightning_csv.read_metrics(name, folder, files[0]),
}


@dataclass
class Ingested:
    runs: dict[str, RunData]  # run name → its data, sorted by name
    notes: list[Finding]  # about the folder as a whole (files refused, runs that could not be read)

    @property
    def primary_name(self) -> str:
        """The run the charts show: the one with the most logged steps (the first by name of those)."""
        return max(self.runs, key=lambda name: self.runs[name].steps.height)

    @property
    def primary(self) -> RunData:
        return self.runs[self.primary_name]

    def findings(self, config: Config) -> list[Finding]:
        from .detect import health

        out = list(self.notes)
        for name, run in self.runs.items():
            found = run.notes + health.detect(run, config)
            out += found if len(self.runs) == 1 else [_labelled(f, name) for f in found]
        return out


def _labelled(finding: Finding, run: str) -> Finding:
    return dataclasses.replace(
        finding,
        message=f"run {run}: {finding.message}",
        subject=finding.subject or run,
        evidence={**finding.evidence, "run": run},
    )


def load_logs(inputs: Inputs, config: Config, progress: Progress) -> Ingested:
    tags = TagMap.from_options(config.options)
    reader = READERS[inputs.kind]
    notes = [
        note("warning", "refused a file", f"{path}: links outside {inputs.path} or is not a regular file; not read")
        for path in inputs.refused
    ]
    runs: dict[str, RunData] = {}
    failures: list[InputError] = []
    for name, files in sorted(inputs.logs.items()):
        progress(f"reading {inputs.kind} run {name}")
        try:
            runs[name] = build_run(reader(name, files[0].parent, files, progress), tags)  # a run is one folder
        except InputError as exc:
            failures.append(exc)
            notes.append(note("warning", "unreadable run", str(exc), run=name))
    if not runs:
        raise failures[0] if failures else InputError(f"{inputs.path}: no {inputs.kind} run could be read")
    ingested = Ingested(runs, notes)
    if len(runs) > 1:
        summary = [{"name": name, "steps": run.facts["steps"], "tags": run.facts["tags"]} for name, run in runs.items()]
        ingested.primary.facts.update(runs=summary, charts_run=ingested.primary_name)
    return ingested
