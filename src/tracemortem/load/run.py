"""Read a run directory (docs/format.md) into the frames the detectors work on (docs/architecture.md).

The grads table of one writer is never materialised here: it stays a LazyFrame so that the
detectors can aggregate it with polars' streaming engine; shards of several ranks are merged once. Damaged input degrades to `input-error` findings;
only a run with nothing readable at all raises `InputError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from .. import format as fmt
from ..errors import InputError
from ..findings import Finding
from ..limits import MAX_ACTS_ROWS, MAX_GRADS_ROWS, MAX_PARAMETERS, MAX_STEPS_ROWS
from ..progress import Progress, silent
from ..scalars import optional_int
from . import attempts as tries
from .acts import empty_acts, read_acts
from .discover import Inputs
from .origin import MalformedOrigin, clean_origin


def _polars_schema(schema: pa.Schema) -> dict[str, pl.DataType]:
    # Not `schema.empty_table()`: that imports pandas, a fifth of a second at every start-up.
    return dict(pl.DataFrame(pa.Table.from_batches([], schema=schema)).schema)


GRADS_COLUMNS = _polars_schema(fmt.GRADS_SCHEMA)
STEPS_COLUMNS = _polars_schema(fmt.STEPS_SCHEMA)
HEALTH_COLUMNS = _polars_schema(fmt.HEALTH_SCHEMA)
PARAM_COLUMNS = {
    "param_id": pl.Int32,
    "name": pl.String,
    "shape": pl.String,
    "numel": pl.Int64,
    "dtype": pl.String,
    "requires_grad": pl.Boolean,
    "order": pl.Int32,
}


@dataclass
class RunData:
    root: Path
    manifest: dict[str, Any] | None
    metas: dict[int, dict[str, Any]]
    steps: pl.DataFrame  # STEPS_SCHEMA + rank + user scalars; small, so eager
    grads: pl.LazyFrame  # one row per (step, param_id), merged across shards and ranks
    params: pl.DataFrame  # PARAM_COLUMNS
    health: pl.DataFrame  # HEALTH_SCHEMA + rank
    notes: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    grad_ranks: list[int] = field(default_factory=list)  # ranks whose grads were read
    # One row per (rank, attempt) on disk and what a later attempt superseded (load/attempts.py)
    attempts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=tries.LISTING_COLUMNS))
    acts: pl.DataFrame = field(default_factory=empty_acts)  # activation statistics (load/acts.py)

    def rank_summary(self) -> list[dict[str, Any]]:
        """Per rank: how many steps it recorded and its median step time."""
        if self.steps.is_empty():
            return [{"rank": r, "steps": 0, "step_time_s": None} for r in sorted(self.metas)]
        per_rank = (
            self.steps.group_by("rank")
            .agg(pl.col("step").n_unique().alias("steps"), pl.col("duration_s").median().alias("step_time_s"))
            .sort("rank")
        )
        out = {r: {"rank": r, "steps": 0, "step_time_s": None} for r in self.metas}
        for row in per_rank.iter_rows(named=True):
            out[row["rank"]] = {"rank": row["rank"], "steps": row["steps"], "step_time_s": row["step_time_s"]}
        return [out[r] for r in sorted(out)]


def _note(severity: str, title: str, message: str, rank: int | None = None, **evidence: Any) -> Finding:
    return Finding(
        "input-error",
        severity,
        title,
        message,
        rank=rank,
        evidence=evidence,
        suggestion="Check the run directory; re-copy it from the training machine if it was truncated.",
    )


# --- JSON documents -------------------------------------------------------------------------


def _read_optional_json(
    path: Path, what: str, notes: list[Finding], rank: int | None, root: Path
) -> dict[str, Any] | None:
    if not path.is_file():
        if path.exists():  # a FIFO, device or socket named like the document: never opened
            notes.append(_note("warning", f"unreadable {what}", f"{path}: not a regular file; not read", rank=rank))
        return None
    if not fmt.is_inside(root, path):
        notes.append(
            _note("warning", f"refused {what}", f"{path}: links outside the run directory; not read", rank=rank)
        )
        return None
    try:
        return fmt.read_json(path, what)
    except InputError as exc:
        notes.append(_note("warning", f"unreadable {what}", str(exc), rank=rank))
        return None


def _shape_text(shape: Any) -> str:
    if isinstance(shape, (list, tuple)):
        return "(" + ", ".join(str(s) for s in shape) + ")"
    return "" if shape is None else str(shape)


def _as_int(value: Any, bits: int = 64) -> int | None:
    """An int that fits a signed `bits`-bit column, else None (untrusted JSON: inf, 1e400, 2**70)."""
    try:
        number = int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and -(2 ** (bits - 1)) <= number < 2 ** (bits - 1) else None


def _param_table(meta: dict[str, Any]) -> list[Any]:
    table = meta.get("params") or meta.get("parameters") or []
    return table if isinstance(table, list) else []


def _too_many_params(metas: dict[int, dict[str, Any]]) -> list[Finding]:
    most = MAX_PARAMETERS.value()
    return [
        _note(
            "warning",
            "too many parameters",
            f"meta.json names {len(_param_table(meta))} parameters, over the limit of {most} "
            f"({MAX_PARAMETERS.env}); only the first {most} are named in the analysis",
            rank=rank,
            parameters=len(_param_table(meta)),
        )
        for rank, meta in sorted(metas.items())
        if len(_param_table(meta)) > most
    ]


def _param_rows(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The meta's parameter table, tolerant of missing keys; `order` from backward order if known."""
    table = _param_table(meta)[: MAX_PARAMETERS.value()]
    backward = meta.get("backward_order")
    rows: list[dict[str, Any]] = []
    for i, entry in enumerate(table):
        if not isinstance(entry, dict):
            continue
        pid = _as_int(entry.get("param_id", entry.get("id", i)), bits=32)
        if pid is None:
            continue
        shape = entry.get("shape")
        numel = _as_int(entry.get("numel"))
        if numel is None and isinstance(shape, (list, tuple)):
            numel = (
                _as_int(math.prod(shape))
                if all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
                else None
            )
        rows.append(
            {
                "param_id": pid,
                "name": str(entry.get("name", f"param{pid}")),
                "shape": _shape_text(shape),
                "numel": numel,
                "dtype": None if entry.get("dtype") is None else str(entry.get("dtype")),
                "requires_grad": bool(entry.get("requires_grad", True)),
                "backward": _as_int(entry.get("backward_order", entry.get("backward_index"))),
            }
        )
    if isinstance(backward, list):  # a list of param_ids, first = first to get its grad
        position = {_as_int(p): i for i, p in enumerate(backward)}
        for row in rows:
            if row["backward"] is None:
                row["backward"] = position.get(row["param_id"])
    return rows


def _params_frame(metas: dict[int, dict[str, Any]]) -> pl.DataFrame:
    """One row per param_id; ranks share ids (the first rank that names an id wins)."""
    merged: dict[int, dict[str, Any]] = {}
    for rank in sorted(metas):
        for row in _param_rows(metas[rank]):
            merged.setdefault(row["param_id"], row)
    rows = sorted(merged.values(), key=lambda r: r["param_id"])
    # order 0 = nearest the output: backward order where known, else reverse registration order.
    known = all(r["backward"] is not None for r in rows)
    ranked = sorted(rows, key=lambda r: r["backward"]) if known else sorted(rows, key=lambda r: -r["param_id"])
    for order, row in enumerate(ranked):
        row["order"] = order
    return pl.DataFrame([{k: r[k] for k in PARAM_COLUMNS} for r in rows], schema=PARAM_COLUMNS, orient="row")


# --- chunk tables ---------------------------------------------------------------------------

_TABLE_LIMITS = {"steps": MAX_STEPS_ROWS, "grads": MAX_GRADS_ROWS, "acts": MAX_ACTS_ROWS}


def _chunks(
    folder: Path, schema: pa.Schema, what: str, rank: int, notes: list[Finding], root: Path, rows: dict[str, int]
) -> list[Path]:
    """The readable chunks of one table of one rank; `rows` counts each table's rows across
    ranks, against the table's row limit."""
    chunks = fmt.readable_chunks(folder, schema, root, _TABLE_LIMITS[what], rows_before=rows.get(what, 0))
    rows[what] = rows.get(what, 0) + chunks.rows
    for path, why in chunks.skipped:
        notes.append(
            _note(
                "warning",
                f"skipped a {what} chunk",
                f"{path}: {why}; its rows are missing from the analysis",
                rank=rank,
                chunk=path.name,
            )
        )
    return chunks.paths


def _read_steps(paths: list[Path], rank: int, notes: list[Finding]) -> pl.DataFrame:
    frames = []
    for path in paths:  # user scalars may differ between chunks, so chunks are read one by one
        try:
            frames.append(pl.read_parquet(path))
        except Exception as exc:  # a chunk whose body is damaged behind a valid footer
            notes.append(
                _note("warning", "skipped a steps chunk", f"{path}: {type(exc).__name__}", rank=rank, chunk=path.name)
            )
    if not frames:
        return pl.DataFrame()
    frame = pl.concat(frames, how="diagonal_relaxed")
    for name, dtype in STEPS_COLUMNS.items():
        frame = frame.with_columns((pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name))
    return frame.with_columns(pl.lit(rank, pl.Int32).alias("rank"))


def _scan_grads(paths: list[Path]) -> pl.LazyFrame:
    return pl.scan_parquet(paths, schema=GRADS_COLUMNS, missing_columns="insert", extra_columns="ignore").select(
        list(GRADS_COLUMNS)
    )


def _l2(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64).pow(2).sum().sqrt().cast(pl.Float32)


def merge_grads(frames: list[pl.LazyFrame]) -> pl.LazyFrame:
    """Merge rows of one (step, param_id) from several shards or ranks (the merge rule of docs/format.md)."""
    if len(frames) == 1:
        return frames[0]  # one writer: rows are already unique, skip the costly group_by
    return (
        pl.concat(frames)
        .group_by("step", "param_id")
        .agg(
            _l2("norm").alias("norm"),
            pl.col("absmax").max(),
            pl.col("nonfinite").sum(),
            _l2("weight_norm").alias("weight_norm"),
            # all-null stays null (an update norm is only on sampled steps)
            pl.when(pl.col("update_norm").is_not_null().any()).then(_l2("update_norm")).alias("update_norm"),
        )
        .select(list(GRADS_COLUMNS))
    )


def _grads_of(frames: dict[int, pl.LazyFrame], ranks: list[int], progress: Progress) -> pl.LazyFrame:
    """The run's grads table. One writer's chunks stay a lazy scan (each rule reads only the row
    groups of its steps); several shards are merged once here, since every later query of a lazy
    merge would re-read every rank's chunks and redo the merge (docs/architecture.md, `RunData`).
    The merge holds every (step, parameter) group in memory during a query anyway, so keeping its
    result costs no more than one query did."""
    if not ranks:
        return pl.LazyFrame(schema=GRADS_COLUMNS)
    if len(ranks) == 1:
        return frames[ranks[0]]
    progress(f"merging the gradient shards of {len(ranks)} ranks")
    return merge_grads([frames[r] for r in ranks]).collect(engine="streaming").lazy()


def _grads_are_replicas(metas: dict[int, dict[str, Any]], ranks: list[int]) -> bool:
    """Data-parallel replicas (every rank holds whole gradients) must not be summed: the
    merge rule is for shards. The recorder says which in meta `grads_sharded`."""
    return len(ranks) > 1 and not any(bool(metas.get(r, {}).get("grads_sharded")) for r in ranks)


# --- facts ----------------------------------------------------------------------------------


def _checkpoints(rank_dir: Path, rank: int) -> list[dict[str, Any]]:
    found = []
    for path in sorted(fmt.RankPaths(rank_dir).checkpoints.glob("step-*.pt")):
        step = _as_int(path.stem.split("-", 1)[1])
        if step is not None:
            found.append({"rank": rank, "step": step, "path": str(path)})
    return found


def _snapshot(rank_dir: Path, rank: int, notes: list[Finding], root: Path) -> dict[str, Any] | None:
    folder = fmt.RankPaths(rank_dir).snapshot
    if not folder.is_dir():
        return None
    info = _read_optional_json(folder / fmt.SNAPSHOT_INFO, "snapshot info.json", notes, rank, root) or {}
    snapshot = {"rank": rank, "path": str(folder), "step": _as_int(info.get("step")), "info": info}
    raw_origin = _read_optional_json(folder / fmt.SNAPSHOT_ORIGIN, "replay origin.json", notes, rank, root)
    if raw_origin is not None:
        try:
            snapshot["origin"] = clean_origin(raw_origin)
        except MalformedOrigin as exc:
            notes.append(
                _note("warning", "malformed replay origin.json", f"{folder / fmt.SNAPSHOT_ORIGIN}: {exc}", rank=rank)
            )
    return snapshot


def _read_health(path: Path, rank: int, notes: list[Finding], root: Path) -> pl.DataFrame | None:
    """The checkpoint health sidecar, checked like a chunk (file type, footer, column types)."""
    if not path.exists() and not path.is_symlink():
        return None
    problem = fmt.chunk_problem(path, fmt.HEALTH_SCHEMA, root)
    if problem:
        title = "refused checkpoint health" if "outside the run" in problem else "unreadable checkpoint health"
        notes.append(_note("warning", title, f"{path}: {problem}", rank=rank))
        return None
    health = pl.read_parquet(path)
    return health.select(
        *[(pl.col(c) if c in health.columns else pl.lit(None)).cast(t).alias(c) for c, t in HEALTH_COLUMNS.items()],
        rank=pl.lit(rank, pl.Int32),
    )


def _first(values: list[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def load_run(inputs: Inputs, progress: Progress = silent) -> RunData:
    root = inputs.run_root if inputs.run_root is not None else inputs.path
    notes: list[Finding] = []
    manifest = _read_optional_json(root / fmt.MANIFEST, "manifest.json", notes, None, root)
    for path in inputs.refused:
        notes.append(_note("warning", "refused a trace", f"{path}: links outside the run directory; not read"))
    for path, why in inputs.unlisted:
        notes.append(_note("warning", "unreadable folder", f"{path}: cannot list ({why}); its traces are not read"))

    recorded: list[_Attempt] = []
    rows: dict[str, int] = {}
    unreadable: list[int] = []
    for rank, rank_dir in sorted(inputs.rank_dirs.items()):
        progress(f"reading rank {rank}")
        try:
            for number, paths in fmt.RankPaths(rank_dir).attempts():
                attempt = _Attempt(rank, number)
                recorded.append(attempt)
                _read_attempt(attempt, paths, notes, root, rows)
        except OSError as exc:  # a rank folder (or a file in it) without permission: the other ranks count
            unreadable.append(rank)
            notes.append(
                _note(
                    "warning",
                    "unreadable rank folder",
                    f"{exc.filename or rank_dir}: cannot read ({exc.strerror or exc}); the rest of rank {rank} is skipped",
                    rank=rank,
                )
            )
    table = tries.attempt_table(
        pl.DataFrame([a.listing for a in recorded], schema=tries.LISTING_COLUMNS, orient="row"),
        pl.concat([a.steps.select("rank", "attempt", "step", "nonfinite", "loss") for a in recorded if a.has_steps])
        if any(a.has_steps for a in recorded)
        else pl.DataFrame(
            schema={"rank": pl.Int32, "attempt": pl.Int32, "step": pl.Int64, "nonfinite": pl.Int64, "loss": pl.Float32}
        ),
    )
    metas: dict[int, dict[str, Any]] = {}
    steps_frames: list[pl.DataFrame] = []
    grad_frames: dict[int, pl.LazyFrame] = {}
    health_frames: list[pl.DataFrame] = []
    checkpoints: list[dict[str, Any]] = []
    snapshots: list[dict[str, Any]] = []
    acts_frames: list[pl.DataFrame] = []
    for attempt in recorded:  # the latest attempt's meta describes the rank
        rank, cutoff = attempt.rank, tries.cutoff_of(table, attempt.rank, attempt.number)
        if attempt.meta is not None or rank not in metas:
            metas[rank] = attempt.meta or {}
        if attempt.has_steps:
            steps_frames.append(tries.keep(attempt.steps, table).drop("attempt"))
        if attempt.grad_paths:
            scan = _scan_grads(attempt.grad_paths)
            scan = scan if cutoff is None else scan.filter(pl.col("step") < cutoff)
            grad_frames[rank] = scan if rank not in grad_frames else pl.concat([grad_frames[rank], scan])
        if attempt.health is not None:
            health_frames.append(attempt.health if cutoff is None else attempt.health.filter(pl.col("step") < cutoff))
        checkpoints += [c for c in attempt.checkpoints if cutoff is None or c["step"] < cutoff]
        if attempt.snapshot is not None and (cutoff is None or (attempt.snapshot["step"] or 0) < cutoff):
            snapshots.append(attempt.snapshot)
        if attempt.acts is not None:
            acts_frames.append(attempt.acts if cutoff is None else attempt.acts.filter(pl.col("step") < cutoff))
    for rank in unreadable:
        metas.setdefault(rank, {})

    if not steps_frames and not grad_frames and not any(metas.values()) and manifest is None:
        raise InputError(f"{root}: run directory has no readable manifest, meta.json, steps or grads")

    steps = (
        pl.concat(steps_frames, how="diagonal_relaxed").sort("step", "rank")
        if steps_frames
        else pl.DataFrame(schema={**STEPS_COLUMNS, "rank": pl.Int32})
    )
    grad_ranks = sorted(grad_frames)
    if _grads_are_replicas(metas, grad_ranks):
        # Replicas agree after all-reduce; the lowest rank stands for all of them.
        grad_ranks = grad_ranks[:1]
    grads = _grads_of(grad_frames, grad_ranks, progress)
    health = (
        pl.concat(health_frames, how="diagonal_relaxed")
        if health_frames
        else pl.DataFrame(schema={**HEALTH_COLUMNS, "rank": pl.Int32})
    )
    params = _params_frame(metas)
    notes += _too_many_params(metas)

    acts = pl.concat(acts_frames) if acts_frames else empty_acts()
    run = RunData(
        root, manifest, metas, steps, grads, params, health, notes, grad_ranks=grad_ranks, attempts=table, acts=acts
    )
    run.facts = _facts(run, inputs, checkpoints, snapshots, bool(grad_frames))
    run.notes.extend(_recorder_losses([(a.rank, a.number, a.meta) for a in recorded], manifest))
    return run


@dataclass
class _Attempt:
    """What one attempt of one rank holds on disk (its steps carry `rank` and `attempt`). Filled
    in by `_read_attempt` as far as it got: a file that cannot be read leaves the rest empty."""

    rank: int
    number: int
    meta: dict[str, Any] | None = None
    steps: pl.DataFrame = field(default_factory=pl.DataFrame)
    grad_paths: list[Path] = field(default_factory=list)
    health: pl.DataFrame | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    acts: pl.DataFrame | None = None
    listing: dict[str, Any] = field(default_factory=dict)

    @property
    def has_steps(self) -> bool:
        return not self.steps.is_empty()


def _read_attempt(
    attempt: _Attempt, paths: fmt.RankPaths, notes: list[Finding], root: Path, rows: dict[str, int]
) -> None:
    """Read one attempt's folder into `attempt`; `rows` counts each table's rows against its limit.
    An OSError is left to the caller, with what was read so far kept in `attempt`."""
    rank, number = attempt.rank, attempt.number
    attempt.listing = {
        "rank": rank,
        "attempt": number,
        "path": _relative(paths.root, root),
        "status": None,
        "started": None,
        "ended": None,
        "pid": None,
        "hostname": None,
        "snapshot_step": None,
    }
    meta = _read_optional_json(paths.meta, "meta.json", notes, rank, root)
    if meta is None and not paths.meta.exists():
        notes.append(
            _note("info", "missing meta.json", f"{paths.meta}: not found; parameter names are unknown", rank=rank)
        )
    attempt.meta = meta
    info = meta or {}
    attempt.listing.update(
        status=_as_text(info.get("status")),
        started=_as_text(info.get("started")),
        ended=_as_text(info.get("ended")),
        pid=_as_int(info.get("pid")),
        hostname=_as_text(info.get("hostname")),
    )
    steps = _read_steps(_chunks(paths.steps, fmt.STEPS_SCHEMA, "steps", rank, notes, root, rows), rank, notes)
    if not steps.is_empty():
        attempt.steps = steps.with_columns(pl.lit(number, pl.Int32).alias("attempt"))
    attempt.grad_paths = _chunks(paths.grads, fmt.GRADS_SCHEMA, "grads", rank, notes, root, rows)
    attempt.health = _read_health(paths.health, rank, notes, root)
    attempt.checkpoints = [{**c, "attempt": number} for c in _checkpoints(paths.root, rank)]
    if acts_paths := _chunks(paths.acts, fmt.ACTS_SCHEMA, "acts", rank, notes, root, rows):
        modules = _read_optional_json(paths.acts / fmt.ACTS_MODULES, "acts modules.json", notes, rank, root)
        attempt.acts = read_acts(acts_paths, modules, rank)
    snapshot = _snapshot(paths.root, rank, notes, root)
    if snapshot is not None:
        snapshot["attempt"] = number
        attempt.listing["snapshot_step"] = snapshot["step"]
    attempt.snapshot = snapshot


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _recorder_losses(
    metas: list[tuple[int, int, dict[str, Any] | None]], manifest: dict[str, Any] | None
) -> list[Finding]:
    """What the recorder itself says it could not keep (dropped or lost steps, its warnings), per
    rank and attempt from meta.json, else from the manifest."""
    sources: list[tuple[int | None, int, dict[str, Any]]] = [
        (rank, attempt, meta or {}) for rank, attempt, meta in metas
    ]
    sources = sources or [(None, 0, manifest or {})]
    notes = []
    for rank, attempt, source in sources:
        dropped, lost = _as_int(source.get("dropped_steps")) or 0, _as_int(source.get("lost_steps")) or 0
        problems = [str(w) for w in source.get("warnings") or [] if isinstance(w, (str, int, float))][:10]
        if not (dropped or lost or problems):
            continue
        notes.append(
            Finding(
                "input-error",
                "warning" if dropped or lost else "info",
                "the recorder reported problems",
                f"{dropped} step(s) dropped (writer queue full) and {lost} step(s) lost (write errors)"
                + (f"; its notes: {'; '.join(problems)}" if problems else ""),
                rank=rank,
                evidence={"dropped_steps": dropped, "lost_steps": lost, "notes": problems}
                | ({"attempt": attempt} if attempt else {}),
                suggestion="Dropped steps mean the disk could not keep up (raise max_queue or flush less often); "
                "lost steps mean writes failed (disk full, permissions): the missing steps are absent from every chart.",
            )
        )
    return notes


def _facts(
    run: RunData, inputs: Inputs, checkpoints: list[dict[str, Any]], snapshots: list[dict[str, Any]], has_grads: bool
) -> dict[str, Any]:
    manifest = run.manifest or {}
    metas = [run.metas[r] for r in sorted(run.metas)]
    steps = run.steps
    span: dict[str, int | None]
    if steps.is_empty():
        span = {"first": None, "last": None, "count": 0}
    else:
        numbers = steps["step"]
        span = {"first": optional_int(numbers.min()), "last": optional_int(numbers.max()), "count": numbers.n_unique()}
    world = (
        _as_int(manifest.get("world_size"))
        or _as_int(_first([m.get("world_size") for m in metas]))
        or max(len(run.metas), 1)
    )
    status = manifest.get("status")
    if status == fmt.STATUS_RUNNING and not manifest.get("ended"):
        # The recorder never closed: killed (OOM, SIGKILL, node loss) or still going.
        run.notes.append(
            Finding(
                "input-error",
                "warning",
                "run ended without an end marker",
                f"manifest says the run is still running and has no end time; it was probably killed "
                f"(or is still writing) after step {span['last']}",
                step=span["last"],
                evidence={"last_step": span["last"], "steps_recorded": span["count"]},
                suggestion="If the job is finished, look at the scheduler's log for an OOM kill or a node failure "
                "at that time; the last step per rank shows which rank stopped first.",
            )
        )
        status = "crashed"
    elif status == fmt.STATUS_CRASHED:
        run.notes.append(
            Finding(
                "input-error",
                "warning",
                "run crashed",
                f"the recorder closed the run as crashed after step {span['last']} (an exception in the training loop or "
                "a termination signal); the analysis covers the steps up to there",
                step=span["last"],
                evidence={"last_step": span["last"], "steps_recorded": span["count"]},
                suggestion="The job's own log has the exception or the signal; the recorder's notes are listed in the "
                "other input findings and in manifest.json.",
            )
        )
    recorded = ["steps"] if not steps.is_empty() else []
    recorded += ["grads"] if has_grads else []
    recorded += ["traces"] if inputs.trace_files else []
    recorded += ["checkpoints"] if checkpoints else []
    recorded += ["snapshot"] if snapshots else []
    return {
        "world_size": world,
        "steps": span,
        "status": status,
        "started": manifest.get("started"),
        "ended": manifest.get("ended"),
        "torch_version": _first([m.get("torch_version", m.get("torch")) for m in metas]),
        "cuda_version": _first([m.get("cuda_version", m.get("cuda")) for m in metas]),
        "devices": sorted({str(m["device"]) for m in metas if m.get("device") is not None}),
        "hostnames": sorted({str(m["hostname"]) for m in metas if m.get("hostname") is not None}),
        "recorded": recorded,
        "recorder": _first([m.get("recorder", m.get("settings")) for m in metas]),
        "parameters": run.params.height,
        "snapshot": snapshots[0] if snapshots else None,
        "checkpoints": [{k: c[k] for k in ("rank", "step", "path")} for c in checkpoints],
    }
