"""Read TensorBoard event files (`events.out.tfevents.*`) into `Logged` runs.

The records are framed by `tfrecord` (CRC32C from `google-crc32c`) and decoded with the Event
protos the `tensorboard` package ships; both come with `pip install 'tracemortem[tensorboard]'`.
Scalars (old `simple_value` and new tensor style) and histograms (`HistogramProto` and the
tensor form) are kept; every other summary is skipped. See docs/inputs.md.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import InputError
from ..findings import Finding
from ..progress import Progress, silent
from .logged import HISTOGRAM_COLUMNS, SCALAR_COLUMNS, Logged, note
from .tfrecord import RecordReader

EXTRA_HINT = "reading TensorBoard event files needs the tensorboard extra: pip install 'tracemortem[tensorboard]'"
_TIMESTAMP = re.compile(r"tfevents\.(\d+)")


@dataclass
class _Readers:
    crc32c: Callable[[bytes], int]
    parse_event: Callable[[bytes], Any]
    make_ndarray: Callable[[Any], Any]
    decode_error: type[Exception]


def _readers(where: Path) -> _Readers:
    try:
        import google_crc32c
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.util.tensor_util import make_ndarray
    except ImportError:
        raise InputError(f"{where}: {EXTRA_HINT}") from None
    return _Readers(google_crc32c.value, Event.FromString, make_ndarray, DecodeError)


def event_file_order(path: Path) -> tuple[int, str]:
    """Files of one run in the order they were written (the writer's start time is in the name)."""
    match = _TIMESTAMP.search(path.name)
    return (int(match.group(1)) if match else 0, path.name)


@dataclass
class _Series:
    steps: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))
    times: array[float] = field(default_factory=lambda: array("d"))


_Appenders = tuple[Callable[[int], None], Callable[[float], None], Callable[[float], None]]


@dataclass
class _Sink:
    """Everything kept from one run's events, in write order per tag."""

    readers: _Readers
    scalars: dict[str, _Series] = field(default_factory=dict)
    histograms: list[tuple[str, int, float, float, int, bool]] = field(default_factory=list)
    plugins: dict[str, str] = field(default_factory=dict)  # tag → plugin named by its first value's metadata
    undecodable: int = 0
    appenders: dict[str, _Appenders] = field(default_factory=dict)  # tag → its series' bound append methods

    def new_series(self, tag: str) -> _Appenders:
        series = self.scalars[tag] = _Series()
        appenders = self.appenders[tag] = (series.steps.append, series.values.append, series.times.append)
        return appenders

    def scalar(self, tag: str, step: int, value: float, time: float) -> None:
        append = self.appenders.get(tag) or self.new_series(tag)
        append[0](step)
        append[1](value)
        append[2](time)

    def tensor(self, tag: str, step: int, time: float, value: Any) -> None:
        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
            self.plugins.setdefault(tag, value.metadata.plugin_data.plugin_name)
        plugin = self.plugins.get(tag, "")
        if plugin not in ("scalars", "histograms"):
            return
        try:
            array_value = np.asarray(self.readers.make_ndarray(value.tensor), dtype=np.float64)
        except (ValueError, TypeError):
            self.undecodable += 1
            return
        if plugin == "scalars" and array_value.size == 1:
            self.scalar(tag, step, float(array_value.reshape(-1)[0]), time)
        elif plugin == "histograms" and array_value.ndim == 2 and array_value.shape[1] == 3:
            self.histograms.append((tag, step, *_from_bins(array_value[:, 0], array_value[:, 1], array_value[:, 2])))

    def histogram(self, tag: str, step: int, histo: Any) -> None:
        absmax = max(abs(histo.min), abs(histo.max))
        # proto3 cannot tell 0 from absent: a zero sum of squares with non-zero extremes was not written.
        if histo.num == 0 or histo.sum_squares > 0 or absmax == 0 or not math.isfinite(absmax):
            norm = math.sqrt(histo.sum_squares) if histo.sum_squares >= 0 else math.nan
            self.histograms.append((tag, step, norm, absmax, int(histo.num), False))
            return
        limits = np.asarray(histo.bucket_limit, dtype=np.float64)
        counts = np.asarray(histo.bucket, dtype=np.float64)
        if limits.size == 0 or limits.size != counts.size:
            self.undecodable += 1
            return
        lefts = np.maximum(np.concatenate([[histo.min], limits[:-1]]), histo.min)
        rights = np.minimum(limits, histo.max)
        self.histograms.append((tag, step, *_from_bins(lefts, rights, counts)))


def _from_bins(lefts: Any, rights: Any, counts: Any) -> tuple[float, float, int, bool]:
    """Norm, absmax and element count estimated from bins (left edge, right edge, count)."""
    occupied = counts > 0
    if not occupied.any():
        return 0.0, 0.0, 0, True
    centres = (lefts + rights) / 2
    norm = float(np.sqrt(np.sum(counts * centres**2)))
    absmax = float(max(abs(lefts[occupied][0]), abs(rights[occupied][-1])))
    return norm, absmax, int(counts.sum()), True


def _read_file(path: Path, sink: _Sink, notes: list[Finding], run: str) -> None:
    reader = RecordReader(path, sink.readers.crc32c)
    parse, decode_error = sink.readers.parse_event, sink.readers.decode_error
    appenders = sink.appenders  # the hot path: one scalar per record, bound methods looked up once
    try:
        for data in reader:
            try:
                event = parse(data)
            except decode_error:
                sink.undecodable += 1
                continue
            step, time = event.step, event.wall_time
            for value in event.summary.value:  # empty for events that are not summaries
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    append = appenders.get(value.tag)
                    if append is None:
                        append = sink.new_series(value.tag)
                    append[0](step)
                    append[1](value.simple_value)
                    append[2](time)
                elif kind == "histo":
                    sink.histogram(value.tag, step, value.histo)
                elif kind == "tensor":
                    sink.tensor(value.tag, step, time, value)
    except OSError as exc:
        notes.append(note("warning", "unreadable event file", f"{path}: {type(exc).__name__}: {exc}", run=run))
        return
    damage = reader.damage
    if damage is None:
        return
    if damage.records == 0:
        notes.append(
            note(
                "warning",
                "not an event file",
                f"{path}: not a TensorBoard event file ({damage.detail} in its first record); skipped",
                suggestion="Remove stray files from the log directory, or point PATH at the run folder itself.",
                run=run,
                file=path.name,
            )
        )
    elif damage.reason == "truncated":
        notes.append(
            Finding(
                "trace-truncated",
                "warning",
                "event file truncated",
                f"{path}: {damage.detail} at byte {damage.offset}; the {damage.records} whole record(s) before it "
                "were read (a job killed mid-write, or a log still being written)",
                evidence={"file": path.name, "records": damage.records, "offset": damage.offset, "run": run},
                suggestion="Steps after the last whole record are missing; copy the log again once the job has ended.",
            )
        )
    else:
        notes.append(
            note(
                "warning",
                "damaged event file",
                f"{path}: {damage.detail} at byte {damage.offset}; the {damage.records} record(s) before it were "
                "read, the rest of the file was not",
                suggestion="The file was damaged after writing (a bad copy or disk); re-copy it from the training machine.",
                run=run,
                file=path.name,
                records=damage.records,
                offset=damage.offset,
            )
        )


def _scalar_frame(scalars: dict[str, _Series]) -> pl.DataFrame:
    frames = [
        pl.DataFrame(
            {
                "step": np.frombuffer(series.steps, dtype=np.int64),
                "value": np.frombuffer(series.values, dtype=np.float64),
                "time": np.frombuffer(series.times, dtype=np.float64),
            }
        ).with_columns(pl.lit(tag, pl.String).alias("tag"))
        for tag, series in scalars.items()
        if len(series.steps)
    ]
    if not frames:
        return pl.DataFrame(schema=SCALAR_COLUMNS)
    return pl.concat(frames).select(list(SCALAR_COLUMNS))


def read_run(name: str, folder: Path, files: list[Path], progress: Progress = silent) -> Logged:
    """One TensorBoard run: the event files of one folder, read in write order."""
    sink = _Sink(_readers(folder))
    notes: list[Finding] = []
    for path in sorted(files, key=event_file_order):
        progress(f"reading {path.name}")
        _read_file(path, sink, notes, name)
    if sink.undecodable:
        notes.append(
            note(
                "warning",
                "undecodable summaries",
                f"{sink.undecodable} record(s) or value(s) of run {name!r} could not be decoded and were skipped",
                run=name,
                skipped=sink.undecodable,
            )
        )
    histograms = pl.DataFrame(sink.histograms, schema=HISTOGRAM_COLUMNS, orient="row")
    facts = {"event_files": len(files), "tensorboard_run": name}
    return Logged(folder, "tensorboard", _scalar_frame(sink.scalars), histograms, notes, facts)
