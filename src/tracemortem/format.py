"""Run-directory format v1, shared by the recorder and the analyzer (docs/format.md).

One module owns every path, schema and version of the on-disk format, the atomic chunk
writer and the chunk reader, so the two halves cannot drift apart. No torch here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .limits import MAX_CHUNK_ROWS, MAX_JSON_BYTES, Limit

FORMAT_VERSION = 1
TOOL = "tracemortem"

MANIFEST = "manifest.json"
META = "meta.json"
STEPS = "steps"
GRADS = "grads"
TRACES = "traces"
CHECKPOINTS = "checkpoints"
HEALTH = "health.parquet"  # inside checkpoints/
SNAPSHOT = "snapshot"
SNAPSHOT_INFO = "info.json"
ATTEMPTS = "attempts"  # rank{R}/attempts/{K}/: the K-th restart on this rank (docs/format.md, "Attempts")
SNAPSHOT_ORIGIN = "origin.json"  # written by a replay (docs/replay.md)
ACTS = "acts"  # activation statistics, with Recorder(activations=N)
ACTS_MODULES = "modules.json"  # inside acts/: module_id -> name, class

STATUS_RUNNING = "running"
STATUS_CLOSED = "closed"
STATUS_CRASHED = "crashed"


_RANK_DIR = re.compile(r"^rank(\d+)$")
# Ranks are Int32 in every frame; a folder or file name with a larger number is not a rank.
MAX_RANK = 2**31 - 1
_CHUNK = re.compile(r"^part-(\d{6})\.parquet$")
_ATTEMPT_DIR = re.compile(r"^[1-9]\d{0,8}$")

# Column schemas. Nullable columns are those the recorder may not know (no CUDA, no AMP, …).
STEPS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("time", pa.float64()),
        ("duration_s", pa.float64()),
        ("loss", pa.float32()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float32()),
        ("nonfinite", pa.int64()),
        ("skipped", pa.bool_()),
        ("scale", pa.float32()),
        ("mem_allocated", pa.int64()),
        ("mem_reserved", pa.int64()),
        ("max_mem_allocated", pa.int64()),
        ("preclip_norm", pa.float32()),  # the norm clip_grad_norm_ measured, when it ran
        ("clip_max", pa.float32()),  # its max_norm
    ]
)
GRADS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("param_id", pa.int32()),
        ("norm", pa.float32()),
        ("absmax", pa.float32()),
        ("nonfinite", pa.int64()),
        ("weight_norm", pa.float32()),
        ("update_norm", pa.float32()),
    ]
)
# One row per (checkpoint, parameter): the sidecar that says whether a checkpoint is healthy.
HEALTH_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("path", pa.string()),
        ("param_id", pa.int32()),
        ("weight_norm", pa.float32()),
        ("weight_absmax", pa.float32()),
        ("nonfinite", pa.int64()),
    ]
)
# One row per (recorded step, module): statistics of the module's output (Recorder(activations=N)).
ACTS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("module_id", pa.int32()),
        ("rms", pa.float32()),
        ("absmax", pa.float32()),
        ("zero_fraction", pa.float32()),
        ("nonfinite", pa.int64()),
        ("saturation", pa.float32()),
    ]
)
# Float columns whose bytes compress better split by byte position (Parquet BYTE_STREAM_SPLIT).
_BYTE_SPLIT = {"norm", "absmax", "weight_norm", "update_norm", "loss", "grad_norm"}


@dataclass(frozen=True)
class RunPaths:
    """Every path inside a run directory, in one place."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def rank(self, rank: int) -> RankPaths:
        return RankPaths(self.root / f"rank{int(rank)}")

    def ranks(self) -> list[int]:
        """Ranks present on disk (rank{R} folders), sorted."""
        found = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                match = _RANK_DIR.match(child.name)
                if match and int(match.group(1)) <= MAX_RANK and child.is_dir():
                    found.append(int(match.group(1)))
        return sorted(found)


@dataclass(frozen=True)
class RankPaths:
    root: Path

    @property
    def rank(self) -> int:
        folder = self.root.parent.parent if self.root.parent.name == ATTEMPTS else self.root
        match = _RANK_DIR.match(folder.name)
        return int(match.group(1)) if match else 0

    def attempt(self, number: int) -> RankPaths:
        """The folder of attempt `number` of this rank: the rank folder itself for attempt 0."""
        return self if number == 0 else RankPaths(self.root / ATTEMPTS / str(int(number)))

    def holds_data(self) -> bool:
        """Whether a recording already lives here: its meta.json, or any chunk."""
        return self.meta.exists() or bool(list_chunks(self.steps)) or bool(list_chunks(self.grads))

    def attempts(self) -> list[tuple[int, RankPaths]]:
        """The attempts recorded in this rank folder, in the order they were started. Attempt 0
        (the rank folder itself) is listed when it holds data or when there is no other."""
        numbers = sorted(
            int(p.name) for p in _iter_dir(self.root / ATTEMPTS) if _ATTEMPT_DIR.match(p.name) and p.is_dir()
        )
        first = [0] if self.holds_data() or not numbers else []
        return [(n, self.attempt(n)) for n in first + numbers]

    @property
    def meta(self) -> Path:
        return self.root / META

    @property
    def steps(self) -> Path:
        return self.root / STEPS

    @property
    def grads(self) -> Path:
        return self.root / GRADS

    @property
    def traces(self) -> Path:
        return self.root / TRACES

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def health(self) -> Path:
        return self.root / CHECKPOINTS / HEALTH

    @property
    def snapshot(self) -> Path:
        return self.root / SNAPSHOT

    @property
    def acts(self) -> Path:
        return self.root / ACTS

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{int(step):08d}.pt"


def is_run_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or bool(RunPaths(path).ranks())


def is_rank_dir(path: Path) -> bool:
    match = _RANK_DIR.match(path.name)
    if match is None or int(match.group(1)) > MAX_RANK:
        return False
    return (path / META).is_file() or (path / STEPS).is_dir()


# --- writing ----------------------------------------------------------------------------


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Files are created 0600 by mkstemp; give them the mode an ordinary open() would (shared run
# directories must stay readable by the team).
_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """Yield a temp path next to `path`; on success it is renamed over `path`, so readers (and a
    job killed mid-write) see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def json_bytes(obj: Any) -> bytes:
    """`obj` as indented JSON with sorted keys. Encoded by json's C encoder (json.dump and any
    indent use the pure-Python one: seconds for a meta.json of 20,000 parameters, on every
    status write) and indented by msgspec; a document holding NaN/Inf, which is not JSON that
    msgspec accepts, stays on one line."""
    text = json.dumps(obj, sort_keys=True, default=str).encode()
    try:
        return msgspec.json.format(text, indent=1)
    except msgspec.DecodeError:
        return text


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def write_json_exclusive(path: Path, obj: Any) -> bool:
    """Create `path` holding `obj` unless it exists; False if it did. The whole file appears at
    once (hard link of a complete temp file), so of two processes racing, one wins and no reader
    sees a torn file. Where hard links are refused, an exclusive create, then the content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json_bytes(obj)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _FILE_MODE)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem
            try:
                with open(path, "xb") as fh:
                    fh.write(data)
            except FileExistsError:
                return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def chunk_path(folder: Path, index: int) -> Path:
    return folder / f"part-{int(index):06d}.parquet"


def next_chunk_index(folder: Path) -> int:
    """First free chunk number in `folder` (a resumed run appends after what is there)."""
    indices = [int(m.group(1)) for p in _iter_dir(folder) if (m := _CHUNK.match(p.name))]
    return max(indices, default=-1) + 1


def write_chunk(folder: Path, index: int, table: pa.Table) -> Path:
    """Write one Parquet chunk atomically: a killed job leaves only whole chunks."""
    path = chunk_path(folder, index)
    split = [name for name in table.column_names if name in _BYTE_SPLIT]
    with atomic_file(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=9,
            use_dictionary=[n for n in table.column_names if n not in _BYTE_SPLIT],
            use_byte_stream_split=split or False,
            write_statistics=["step"] if "step" in table.column_names else False,
        )
    return path


# --- reading ----------------------------------------------------------------------------


def _iter_dir(folder: Path) -> Iterable[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def list_chunks(folder: Path) -> list[Path]:
    """Whole chunks only (temp files of an interrupted write are ignored), in order."""
    return sorted((p for p in _iter_dir(folder) if _CHUNK.match(p.name)), key=lambda p: p.name)


@dataclass(frozen=True)
class ChunkSet:
    """Readable chunks of one table and the ones that had to be skipped (with why)."""

    paths: list[Path]
    skipped: list[tuple[Path, str]]
    rows: int = 0  # rows of the readable chunks, from their footers


def _listed_chunks(folder: Path) -> tuple[list[Path], str]:
    """The folder's chunk names, or why it cannot be listed (a missing folder holds none)."""
    try:
        return sorted((p for p in folder.iterdir() if _CHUNK.match(p.name)), key=lambda p: p.name), ""
    except FileNotFoundError:
        return [], ""
    except OSError as exc:
        return [], f"cannot list this folder ({exc.strerror or exc})"


def chunk_problem(
    path: Path, schema: pa.Schema, root: Path | None = None, rows_left: int = 0, table_limit: Limit | None = None
) -> str:
    """Why the Parquet file at `path` cannot be read with the format's `schema`, or "" when it can.
    The footer is read first: a FIFO or device is never opened, a chunk over a row limit never
    decoded; then every page is decoded once (bounded memory, ~5 % of an analysis), since a
    chunk damaged behind an intact footer would otherwise fail a lazy scan inside the detectors."""
    required = {f.name: f.type for f in schema}
    if not path.is_file():  # also False for a broken link or a link loop
        return "not a regular file (a FIFO, device, socket, folder or broken link); not read"
    if root is not None and not is_inside(root, path):
        return "links outside the run directory; not read"
    try:
        metadata = pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises several types for corrupt footers
        return f"unreadable Parquet ({type(exc).__name__})"
    file_schema = metadata.schema.to_arrow_schema()
    if "step" in required and "step" not in file_schema.names:
        return "missing column(s) step"
    if len(set(file_schema.names)) != len(file_schema.names):
        twice = sorted({n for n in file_schema.names if file_schema.names.count(n) > 1})
        return f"duplicate column(s) {', '.join(twice)}"
    # The readers scan with the format's types; a column of another type cannot be read with them.
    wrong = [
        f"{f.name} is {f.type}, not {required[f.name]}"
        for f in file_schema
        if f.name in required and f.type != required[f.name]
    ]
    if wrong:
        return f"foreign column type(s): {'; '.join(wrong)}"
    chunk_rows = MAX_CHUNK_ROWS.value()
    if metadata.num_rows > chunk_rows:
        return f"{metadata.num_rows} rows, over the {chunk_rows}-row limit of one chunk ({MAX_CHUNK_ROWS.env})"
    if table_limit is not None and metadata.num_rows > rows_left:
        return (
            f"{metadata.num_rows} more rows would pass the table's {table_limit.value()}-row limit ({table_limit.env})"
        )
    try:
        for _ in pq.ParquetFile(path).iter_batches(batch_size=2**20):
            pass
    except Exception as exc:
        return f"damaged Parquet data ({type(exc).__name__})"
    return ""


def readable_chunks(
    folder: Path, schema: pa.Schema, root: Path | None = None, table_limit: Limit | None = None, rows_before: int = 0
) -> ChunkSet:
    """Check each chunk (`chunk_problem`); corrupt, foreign or oversized chunks are skipped, not
    fatal. With `root`, a chunk that is a link to a file outside `root` is skipped unread; with
    `table_limit`, chunks are taken in order while the table (`rows_before` rows from other
    folders, plus these) stays within it."""
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    paths, unlisted = _listed_chunks(folder)
    if unlisted:
        return ChunkSet([], [(folder, unlisted)])
    rows, most = 0, table_limit.value() if table_limit is not None else 0
    for path in paths:
        problem = chunk_problem(path, schema, root, most - rows_before - rows, table_limit)
        if problem:
            bad.append((path, problem))
            continue
        good.append(path)
        rows += pq.read_metadata(path).num_rows
    return ChunkSet(good, bad, rows)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a small JSON object from a run directory, with a one-line InputError on failure."""
    try:
        size, most = path.stat().st_size, MAX_JSON_BYTES.value()
        if size > most:
            raise InputError(f"{path}: {what} is {size} bytes, over the {most}-byte limit ({MAX_JSON_BYTES.env})")
        data = json.loads(path.read_bytes())
    except InputError:
        raise
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: {what} must be a JSON object")
    return data


def inside(root: Path, relative: str) -> Path:
    """Resolve a path named by a (untrusted) manifest, refusing anything outside the run directory."""
    target = (root.resolve() / relative).resolve()
    if not is_inside(root, target):
        raise InputError(f"{root}: refusing path outside the run directory: {relative!r}")
    return target


def is_inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside `root`. A run directory from someone else
    (a tarball keeps symlinks) must not make the analyzer copy local files into a report."""
    try:
        base = root.resolve()
        target = path.resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13) leads nowhere inside
        return False
    return target == base or base in target.parents
