"""The run facts and tables every document shows, as plain rows (label, text) so each format
only decides how to lay them out."""

from __future__ import annotations

from typing import Any

import polars as pl

from ..findings import SEVERITIES, Finding
from ..run_facts import RunFacts
from .common import Table, fmt_number, fmt_seconds, frame_table, key_time_column

TOP_OPS = 15

# `run` facts worth a line in the header, in reading order.
_FACT_LABELS = (
    ("path", "Path"),
    ("status", "Status"),
    ("world_size", "World size"),
    ("steps", "Steps"),
    ("torch_version", "PyTorch"),
    ("cuda_version", "CUDA"),
    ("devices", "Devices"),
    ("gpus", "GPU"),
    ("parameters", "Parameters"),
    ("hostnames", "Hosts"),
    ("recorded", "Recorded"),
    ("tags", "Tags used"),
    ("charts_run", "Charts show run"),
    ("snapshot", "Anomaly snapshot"),
    ("checkpoints", "Checkpoints"),
    ("started", "Started"),
    ("ended", "Ended"),
)
_INPUT_KIND = {
    "run": "run directory",
    "rank": "rank directory",
    "trace": "profiler trace",
    "traces": "profiler traces",
    "tensorboard": "TensorBoard log",
    "hf-trainer": "Hugging Face Trainer state",
    "lightning-csv": "Lightning CSV log",
}


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or "—"
    return fmt_number(value)


def run_facts(run: RunFacts) -> list[tuple[str, str]]:
    facts = []
    shown = run.to_dict()
    for key, label in _FACT_LABELS:
        value = shown.get(key)
        if value is None or value == [] or value == {}:
            continue
        if key == "steps":
            if not value.get("count"):
                continue
            text = f"{fmt_number(value.get('first'))} – {fmt_number(value.get('last'))} ({fmt_number(value.get('count'))} steps)"
        elif key == "gpus" and isinstance(value, list):
            text = gpu_text(value)
        elif key == "checkpoints" and isinstance(value, list):
            steps = [c.get("step") for c in value if isinstance(c, dict)]
            last = max((step for step in steps if isinstance(step, int)), default=None)
            text = f"{len(value)}" + (f" (last at step {fmt_number(last)})" if last is not None else "")
        elif key == "snapshot" and isinstance(value, dict) and value.get("step") is not None:
            text = f"taken at step {fmt_number(value['step'])}" + (f" ({value['path']})" if value.get("path") else "")
        else:
            text = _text(value)
        facts.append((label, text))
    if run.kind in _INPUT_KIND:
        facts.insert(1, ("Input", _INPUT_KIND[run.kind]))
    if run.ranks:
        facts.insert(2, ("Ranks", ", ".join(str(r.rank) for r in run.ranks)))
    return facts


def gpu_text(gpus: list[Any]) -> str:
    """`2 × NVIDIA A100-PG509-200 (39.4 GiB each)`, one model after another."""
    parts = []
    for gpu in gpus:
        if not isinstance(gpu, dict):
            continue
        memory = gpu.get("memory_bytes")
        count = gpu.get("count")
        text = f"{count} × {gpu.get('name')}" if isinstance(count, int) and count > 1 else str(gpu.get("name"))
        if isinstance(memory, int) and memory > 0:
            text += f" ({memory / 2**30:.1f} GiB{' each' if isinstance(count, int) and count > 1 else ''})"
        parts.append(text)
    return "; ".join(parts) or "—"


def has_gpu(run: RunFacts) -> bool:
    """Did the run use a GPU: the traces show GPU activity or devices, or the recorder saw CUDA."""
    return (
        bool(run.extra.get("gpus"))
        or any(r.gpu for r in run.ranks)
        or any(not str(d).startswith("cpu") for d in run.devices)
    )


def recorder_settings(run: RunFacts) -> list[tuple[str, str]]:
    settings = run.extra.get("recorder")
    if not isinstance(settings, dict):
        return []
    return [(str(k), _text(v)) for k, v in sorted(settings.items(), key=lambda kv: str(kv[0]))]


def severity_counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.severity == s for f in findings) for s in SEVERITIES}


def rank_table(run: RunFacts) -> Table:
    ranks = run.ranks
    gpu_keys = [k for k in ("compute_us", "non_compute_us", "idle_us") if any(k in (r.gpu or {}) for r in ranks)]
    headers = ["rank", "steps", "median step"] + [f"GPU {k[:-3].replace('_', '-')}" for k in gpu_keys]
    rows = []
    for r in ranks:
        gpu = r.gpu or {}
        rows.append(
            [fmt_number(r.rank), fmt_number(r.steps), fmt_seconds(r.step_time_s)]
            + [fmt_seconds(gpu[k] / 1e6) if isinstance(gpu.get(k), (int, float)) else "—" for k in gpu_keys]
        )
    return Table(headers, rows, [True] * len(headers))


def top_rows(frame: pl.DataFrame, top: int) -> list[dict[str, Any]]:
    """The `top` rows of a statistics frame, longest first, as plain dicts (JSON output)."""
    column = key_time_column(frame)
    frame = frame.sort(column, descending=True, nulls_last=True) if column else frame
    return frame.select(c for c in frame.columns if frame.schema[c] != pl.Null).head(top).to_dicts()


def ops_table(frame: pl.DataFrame, top: int = TOP_OPS) -> Table:
    column = key_time_column(frame)
    return frame_table(frame.sort(column, descending=True, nulls_last=True) if column else frame, top)
