"""Read a Hugging Face Trainer's `trainer_state.json` (its `log_history`) into a `Logged` run.

Each training log entry holds `step` and what the Trainer logged at it (`loss`, `grad_norm`,
`learning_rate`, `epoch`, and `eval_*` after an evaluation); the closing summary entry (with
`train_runtime`) is a whole-run average, not a step, and is left out. See docs/inputs.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from .. import format as fmt
from ..findings import Finding
from .logged import SCALAR_COLUMNS, Logged, note
from .run import _as_int

_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "total_flos")
_STATE_FACTS = ("global_step", "max_steps", "num_train_epochs", "logging_steps", "best_metric", "best_model_checkpoint")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return None


def _rows(history: list[Any]) -> tuple[list[tuple[str, int, float]], int]:
    rows: list[tuple[str, int, float]] = []
    skipped = 0
    for entry in history:
        step = _as_int(entry.get("step")) if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or step is None:
            skipped += 1
            continue
        if any(key in entry for key in _SUMMARY_KEYS):
            continue
        for key, value in entry.items():
            number = _number(value)
            if key != "step" and number is not None:
                rows.append((str(key), step, number))
    return rows, skipped


def _filtered_loss_note(scalars: pl.DataFrame) -> list[Finding]:
    """The Trainer replaces a NaN/Inf loss in its log by the running mean (logging_nan_inf_filter,
    on by default), so a divergence can show only in `grad_norm`."""
    by_step = scalars.pivot(on="tag", index="step", values="value", aggregate_function="last")
    if not {"loss", "grad_norm"} <= set(by_step.columns):
        return []
    hidden = by_step.filter(~pl.col("grad_norm").is_finite() & pl.col("loss").is_finite())
    if hidden.is_empty():
        return []
    step = int(hidden["step"].min())  # type: ignore[arg-type]
    return [
        note(
            "info",
            "the logged loss may hide the divergence",
            f"the gradient norm is non-finite from step {step} while the logged loss stays finite: the Trainer "
            "replaces NaN/Inf losses in its log by the running mean unless logging_nan_inf_filter=False",
            suggestion="Trust the gradient norm here; set logging_nan_inf_filter=False to log the real loss.",
            first_step=step,
        )
    ]


def read_state(name: str, folder: Path, state: Path) -> Logged:
    document = fmt.read_json(state, "trainer_state.json")
    history = document.get("log_history")
    notes: list[Finding] = []
    if not isinstance(history, list):
        notes.append(note("warning", "no log history", f"{state}: has no log_history list; nothing was logged"))
        history = []
    rows, skipped = _rows(history)
    if skipped:
        notes.append(
            note(
                "warning",
                "unreadable log entries",
                f"{state}: {skipped} log_history entr(ies) without a whole-number step were skipped",
                skipped=skipped,
            )
        )
    scalars = pl.DataFrame([(tag, step, value, None) for tag, step, value in rows], schema=SCALAR_COLUMNS, orient="row")
    notes += _filtered_loss_note(scalars)
    facts: dict[str, Any] = {"trainer_state": str(state)}
    for key in _STATE_FACTS:
        value = document.get(key)
        if isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value)):
            facts[f"trainer_{key}"] = value
    return Logged(folder, "hf-trainer", scalars, notes=notes, facts=facts)
