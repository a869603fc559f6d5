"""Read a Lightning `CSVLogger` run (`metrics.csv`, with `hparams.yaml` beside it) into a
`Logged` run.

CSVLogger writes one row per logging call with a `step` column and one column per metric,
empty where a metric was not logged at that row. A value that is not a number (`nan`, `NaN`,
`inf` are numbers) counts as not logged. See docs/inputs.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InputError
from ..findings import Finding
from .logged import SCALAR_COLUMNS, Logged, note

STEP_COLUMNS = ("step", "global_step", "trainer/global_step", "Step")
HPARAMS = "hparams.yaml"
MAX_CSV_BYTES = 2 * 1024**3
MAX_HPARAMS_BYTES = 1024**2


def _read_csv(path: Path) -> pl.DataFrame:
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise InputError(f"{path}: metrics.csv is {size} bytes, over the {MAX_CSV_BYTES}-byte limit")
    try:
        return pl.read_csv(path, infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot read metrics.csv: {type(exc).__name__}") from None


def _hparams(folder: Path) -> dict[str, Any] | None:
    """The top-level plain values of hparams.yaml, where PyYAML (Lightning's own dependency) is installed."""
    path = folder / HPARAMS
    try:
        import yaml
    except ImportError:
        return None
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_HPARAMS_BYTES:
            return None
        data = yaml.safe_load(path.read_text(errors="replace"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    plain = {
        str(k): v
        for k, v in data.items()
        if isinstance(v, (str, int, bool)) or (isinstance(v, float) and math.isfinite(v))  # JSON holds no NaN
    }
    return dict(list(sorted(plain.items()))[:50])


def read_metrics(name: str, folder: Path, path: Path) -> Logged:
    table = _read_csv(path)
    notes: list[Finding] = []
    step_column = next((c for c in STEP_COLUMNS if c in table.columns), None)
    if step_column is None:
        notes.append(
            note(
                "warning",
                "no step column",
                f"{path}: no step column ({', '.join(STEP_COLUMNS[:2])}); each row is taken as one step",
                suggestion="Steps are numbered by row, so step numbers in findings are row numbers.",
                columns=table.columns[:50],
            )
        )
        table = table.with_row_index("step")
        step_column = "step"
    steps = pl.col(step_column).cast(pl.Float64, strict=False)
    whole = steps.is_finite() & (steps == steps.floor())
    bad_rows = table.filter(~whole.fill_null(False)).height
    if bad_rows:
        notes.append(
            note("warning", "rows without a step", f"{path}: {bad_rows} row(s) with no whole-number step were skipped")
        )
    metrics = [c for c in table.columns if c not in (step_column, "epoch") and c.strip()]
    scalars = (
        table.filter(whole.fill_null(False))
        .with_row_index("row")
        .select(
            "row",
            steps.cast(pl.Int64).alias("step"),
            *(pl.col(c).str.strip_chars() for c in ["epoch", *metrics] if c in table.columns),
        )
        .unpivot(index=["row", "step"], variable_name="tag", value_name="text")
        .with_columns(pl.col("text").cast(pl.Float64, strict=False).alias("value"))
        .filter(pl.col("value").is_not_null())
        .sort("tag", "row")
        .select("tag", "step", "value", pl.lit(None, pl.Float64).alias("time"))
    )
    facts: dict[str, Any] = {"metrics_csv": str(path)}
    if (hparams := _hparams(folder)) is not None:
        facts["hparams"] = hparams
    return Logged(folder, "lightning-csv", scalars.select(list(SCALAR_COLUMNS)), notes=notes, facts=facts)
