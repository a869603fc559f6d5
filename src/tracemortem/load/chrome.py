"""Read one Kineto chrome trace (`.json` / `.json.gz`) into polars columns, chunk by chunk.

The `traceEvents` array is cut at event boundaries into chunks of about `CHUNK_BYTES`, and each
chunk is decoded by msgspec into typed Structs holding only the fields the analyzer uses, so peak
memory is the columns plus one chunk, whatever the file size. Everything around the array (the
"envelope": deviceProperties, distributedInfo before or after the events, baseTimeNanoseconds) is
decoded separately. A file cut off mid-write is read up to its last complete event.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from ..errors import InputError
from ..limits import MAX_GZIP_RATIO, MAX_TRACE_BYTES
from ..pool import process_pool
from . import gzip_stream
from .gzip_stream import GzipStream

# Events are decoded in chunks of about this many bytes: large enough that per-chunk overhead
# vanishes, small enough that the chunk's Python objects stay a small fraction of the columns.
# 8 MiB loaded a 300 MB trace ~10 % faster than 32 MiB: the chunk's buffer and Structs stay
# closer to the cache, and its buffer is below glibc's largest mmap threshold, so it is reused
# instead of being mapped and faulted in afresh for every chunk.
CHUNK_BYTES = 8 * 2**20
_READ_BYTES = 4 * 2**20
# A plain file up to this size is read in one go into the buffer its events are decoded from:
# every copy of a few MB lands in freshly mapped memory and faults its pages in, which cost more
# than the copy itself (three copies made 9,400 page faults per 9.8 MB rank; docs/scale.md).
_WHOLE_BYTES = 2 * CHUNK_BYTES
# Traces larger than this (uncompressed) are decoded by worker processes when the caller passes
# them: below it, starting the workers (~0.3 s) costs more than they save. Tests set it to 0.
PARALLEL_MIN_BYTES = 64 * 2**20
# A gzip's inflation ratio is judged once this much is inflated (a small bomb costs little).
_RATIO_CHECKED_FROM = 32 * 2**20
# No Kineto event comes near this, nor the metadata before the event list near the head limit:
# text without an event boundary (or without a traceEvents key) for this long is damage or an
# attack, and is not read further.
_MAX_UNBROKEN_BYTES = 64 * 2**20
_MAX_HEAD_BYTES = 16 * 2**20
# How many candidate boundaries to try before treating a chunk as damaged.
_SPLIT_TRIES = 4
# Absolute µs beyond this cannot be an epoch time in int64 ns (year 2096); relative times are
# far smaller. Durations beyond ~11.5 days are not real events either.
_MAX_TS_US = 4e15
_MAX_DUR_US = 1e12

# An event boundary inside the array: "}" "," "{" with optional whitespace. It can also occur
# inside a string or a list of objects; every candidate is verified by decoding.
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_TRACE_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*')
_ARRAY_CLOSE = re.compile(rb"\}\s*\]")
_LAST_COMMA = re.compile(rb"\}\s*,")
_AFTER_CLOSE = re.compile(rb"\s*(?:[,}]|\Z)")
_EMPTY_REST = re.compile(rb"\s*\]")
_LEADING = re.compile(rb"[\xef\xbb\xbf \t\r\n]*")  # a BOM and whitespace before the JSON
_NESTED_ARRAY = re.compile(rb"\[\s*\[")


class Args(msgspec.Struct, gc=False, frozen=True):
    external_id: int | None = msgspec.field(name="External id", default=None)
    external_id_legacy: int | None = msgspec.field(name="external id", default=None)
    correlation: int | None = None
    stream: int | str | None = None
    input_dims: msgspec.Raw = msgspec.field(name="Input Dims", default=msgspec.Raw())


_NO_ARGS = Args()


class Event(msgspec.Struct, gc=False):
    ph: str = ""
    cat: str = ""
    name: str = ""
    pid: int | str = ""
    tid: int | str = ""
    ts: float | None = None
    dur: float | None = None
    id: int | str | None = None  # flow events: the correlation id for ac2g
    args: Args = _NO_ARGS


_EVENTS = msgspec.json.Decoder(list[Event])
_EVENT = msgspec.json.Decoder(Event)
_ANY = msgspec.json.Decoder()


@dataclass
class RawTrace:
    """One file, decoded: every event as a row (all phases), plus what surrounds the array."""

    path: Path
    frame: pl.DataFrame
    envelope: dict[str, Any]
    bytes_read: int = 0  # decompressed bytes
    truncated: bool = False
    truncated_detail: str = ""
    skipped: int = 0  # events dropped as malformed
    problems: list[str] = field(default_factory=list)


class _Source:
    """Plain or gzip bytes, decompressed incrementally with a hard size limit."""

    def __init__(self, path: Path, limit: int):
        self.path = path
        self.limit = limit
        self.file = open(path, "rb")  # noqa: SIM115 — closed by close()
        self.gzip = self.file.read(2) == gzip_stream.MAGIC
        self.file.seek(0)
        self._gz = GzipStream(self.file, _READ_BYTES) if self.gzip else None
        # Uncompressed size, to decide on parallel decoding up front. A gzip trailer's size is
        # the sender's claim (300 KB can claim 4 GiB), so a gzip decides on the bytes it inflates.
        self.expected = 0 if self.gzip else os.fstat(self.file.fileno()).st_size
        self.produced = 0

    @property
    def damaged(self) -> str:
        """Why the gzip stream ended early or failed its checksum, if it did."""
        return self._gz.problem if self._gz is not None else ""

    def position(self) -> int:
        return self.file.tell()

    def read(self) -> bytes | bytearray:
        data = self._gz.read() if self._gz is not None else self._read_plain()
        self.produced += len(data)
        if self.produced > self.limit:
            raise InputError(
                f"{self.path}: trace is larger than {self.limit} bytes uncompressed; refusing to read it "
                f"({MAX_TRACE_BYTES.env})"
            )
        if self._gz is not None and self.produced > _RATIO_CHECKED_FROM:
            ratio = MAX_GZIP_RATIO.value()
            if self.produced > ratio * max(self._gz.consumed, 1):
                raise InputError(
                    f"{self.path}: gzip inflates more than {ratio}:1 (real traces: 9-30:1); refusing to read a "
                    f"decompression bomb ({MAX_GZIP_RATIO.env})"
                )
        return data

    def _read_plain(self) -> bytearray:
        left = self.expected - self.produced
        data = bytearray(left if 0 < left <= _WHOLE_BYTES else _READ_BYTES)
        del data[self.file.readinto(data) or 0 :]
        return data

    def close(self) -> None:
        self.file.close()


class WorkerFailed(Exception):
    """A worker could not be started, died, or raised: decode in-process instead."""


class Decoders:
    """Worker processes (`pool.process_pool`) that decode chunks for the parent, started on the
    first big trace and shared by the files of one load; answers are read in submission order."""

    def __init__(self, count: int = 2, untrusted: Iterable[Path] = ()):
        self.count = count
        self.untrusted = tuple(untrusted)
        self.failed = False
        self._pool: ProcessPoolExecutor | None = None
        self._sent: list[Future[tuple[bytes, int | None, int, list[str]]]] = []

    def start(self) -> bool:
        if self._pool is None and not self.failed:
            try:
                self._pool = process_pool(self.count, self.untrusted)
            except Exception:  # no processes or threads allowed here, no interpreter to start: in-process
                self.failed = True
        return not self.failed

    def submit(self, data: bytes) -> None:
        assert self._pool is not None
        try:
            sent = self._pool.submit(_decode_chunk_ipc, data)
        except Exception as exc:  # no worker could start, or one died: `result` reports it in turn
            sent = Future()
            sent.set_exception(exc)
        self._sent.append(sent)

    def result(self) -> tuple[pl.DataFrame | None, int | None, int, list[str]]:
        """The answer to the oldest chunk not yet read: (frame, cut, skipped, problems); frame and
        cut are None when the worker found no verified boundary or its decode raised."""
        try:
            ipc, cut, skipped, problems = self._sent.pop(0).result()
        except Exception as exc:  # BrokenProcessPool, a worker that could not start
            self.fail()
            raise WorkerFailed(str(exc)) from None
        return (pl.read_ipc(io.BytesIO(ipc)) if ipc else None), cut, skipped, problems

    def pending(self) -> int:
        return len(self._sent)

    def drain(self) -> None:
        """Drop every outstanding answer (their chunks are being decoded again)."""
        for sent in self._sent:
            sent.cancel()
        self._sent.clear()

    def fail(self) -> None:
        self.close()
        self.failed = True

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Decoders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode_chunk_ipc(data: bytes) -> tuple[bytes, int | None, int, list[str]]:
    """In a worker: `decode_chunk`, with the columns as Arrow IPC (categories dictionary-encoded)."""
    try:
        frame, cut, skipped, problems = decode_chunk(data)
    except Exception:  # the parent decodes this chunk itself
        return b"", None, 0, []
    ipc = frame.write_ipc(None, compression="uncompressed").getvalue() if frame is not None else b""
    return ipc, cut, skipped, problems


def read_trace(
    path: Path, progress: Callable[[int, int], None] | None = None, workers: Decoders | None = None
) -> RawTrace:
    """Decode one trace file. Raises InputError when nothing usable can be read. With `workers`,
    a trace over PARALLEL_MIN_BYTES (uncompressed) has its chunks decoded by them."""
    source = _Source(path, MAX_TRACE_BYTES.value())
    total = path.stat().st_size
    try:
        return _read(source, path, total, progress, workers)
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be a chrome trace") from None
    except MemoryError:
        raise InputError(f"{path}: not enough memory to read this trace") from None
    finally:
        source.close()
        if workers is not None:
            workers.drain()  # answers left by an error must not be read as the next file's


def _read(
    source: _Source, path: Path, total: int, progress: Callable[[int, int], None] | None, workers: Decoders | None
) -> RawTrace:
    opening: bytes | bytearray = b""
    # 1. The head: everything up to the opening "[" of traceEvents (or of a bare array).
    start = -1
    head = b""
    while True:
        data = source.read()
        opening = opening + data if opening else data  # the first read is not copied
        lead = _LEADING.match(opening).end()  # type: ignore[union-attr]  # it matches the empty text
        first = opening[lead : lead + 1]
        if _NESTED_ARRAY.match(opening, lead):
            # An array of arrays: torch.profiler's export_memory_timeline (times and sizes, or raw
            # allocation records), not events.
            raise InputError(
                f"{path}: a memory timeline (torch.profiler export_memory_timeline), not a chrome trace; "
                "tracemortem reads the profiler's chrome trace (export_chrome_trace / tensorboard_trace_handler)"
            )
        if first == b"[":  # legacy autograd profiler: a bare array of events
            start = lead + 1
            head = b""
            break
        if first and first != b"{":
            raise InputError(f"{path}: not a chrome trace (expected a JSON object or array)")
        match = _TRACE_EVENTS_KEY.search(opening, max(0, len(opening) - len(data) - 64))  # the new text only
        if match and match.start() <= _MAX_HEAD_BYTES:  # a read can run past the limit
            after = opening[match.end() : match.end() + 1]
            if after == b"[":
                start = match.end() + 1
                head = bytes(opening[: match.end()]).removeprefix(b"\xef\xbb\xbf")  # a BOM is not JSON
                break
            if after:
                raise InputError(f"{path}: traceEvents is not a list")
        if len(opening) > _MAX_HEAD_BYTES:
            raise InputError(f"{path}: no traceEvents list in the first {_MAX_HEAD_BYTES} bytes; not a chrome trace")
        if not data:
            break
    if start < 0:
        if not opening.strip():
            raise InputError(f"{path}: empty file" + (f" ({source.damaged})" if source.damaged else ""))
        try:
            doc = _ANY.decode(opening)
        except (msgspec.DecodeError, RecursionError):
            doc = None
        if isinstance(doc, dict):
            raise InputError(f"{path}: JSON object without a traceEvents list; not a chrome trace")
        raise InputError(
            f"{path}: not a chrome trace (no traceEvents found{'; ' + source.damaged if source.damaged else ''})"
        )

    # A bytearray, so chunks are cut and bracketed in place instead of copied; buf[0] is always
    # the separator byte before the next event (the "[" at first), overwritten with "[". Cutting
    # a bytearray's front moves its start, without a copy.
    buf = bytearray(opening) if isinstance(opening, bytes) else opening
    del buf[: start - 1], opening
    frames: list[pl.DataFrame] = []
    trace = RawTrace(path, pl.DataFrame(), {})
    eof = gave_up = False
    pool = None
    inflight: list[tuple[bytes, int]] = []  # chunks at the workers: (bytes, predicted cut)
    serial = False  # decode the next chunk here: a worker's cut differed from the predicted one
    # 2. Full chunks, cut at verified event boundaries. Past the eof test only when the buffer was
    # rebuilt from chunks a worker gave back (see _collect).
    while True:
        # Joined once per chunk: appending each read to the bytearray reallocated and copied
        # the whole chunk again and again.
        pieces: list[bytes | bytearray] = [buf]
        size = len(buf)
        while not eof and size < CHUNK_BYTES:
            data = source.read()
            if not data:
                eof = True
            pieces.append(data)
            size += len(data)
        if len(pieces) > 1:
            buf = bytearray().join(pieces)
        del pieces
        if pool is None and workers is not None and max(source.expected, source.produced) > PARALLEL_MIN_BYTES:
            pool = workers if workers.start() else None
        if eof and inflight:
            # The tail is decoded here while the workers finish; kept only if none gives its chunk back.
            scratch = RawTrace(path, pl.DataFrame(), {})
            tail_frames: list[pl.DataFrame] = []
            tail = _decode_last(buf, scratch, tail_frames)
            assert pool is not None  # chunks are in flight only while the pool works
            while inflight and not serial:
                buf, serial = _collect(pool, inflight, buf, trace, frames)
            if not serial:
                frames += tail_frames
                _merge(trace, scratch.skipped, scratch.problems)
                break
            pool = None if pool.failed else pool
            continue
        if eof and len(buf) <= 2 * CHUNK_BYTES:
            tail = _decode_last(buf, trace, frames)
            break
        if pool is not None and not serial and (candidates := _candidates(buf)):
            # Sent off before it is verified: the worker checks that its decode ends at this cut.
            predicted = candidates[-1].end() - 2
            chunk = bytes(buf)
            pool.submit(chunk)
            inflight.append((chunk, predicted))
            del buf[:predicted]
            if len(inflight) > pool.count:
                buf, serial = _collect(pool, inflight, buf, trace, frames)
                pool = None if pool.failed else pool
        else:
            cut = _decode_prefix(buf, trace, frames)
            if cut is None:  # no boundary in this chunk (one huge event, or damage): read more
                gave_up = len(buf) > _MAX_UNBROKEN_BYTES
                data = b"" if eof or gave_up else source.read()
                if not data:
                    eof = True
                    tail = _decode_last(buf, trace, frames)
                    break
                buf += data
                continue
            del buf[:cut]
            serial = False
        if progress is not None:
            progress(source.position(), total)

    # 3. The rest (decoded above by _decode_last): the last events, the closing "]" and the
    # envelope tail, or None for a cut-off file.
    trace.bytes_read = source.produced
    if gave_up:
        trace.truncated_detail = f"no event boundary in {len(buf)} bytes; the rest of the file is not read"
    if tail is None or gave_up:
        trace.truncated = True
        trace.truncated_detail = source.damaged or trace.truncated_detail or "file ends inside the traceEvents list"
        envelope_text = head + b"[]}" if head else b"[]"
    else:
        envelope_text = head + b"[]" + tail if head else b"[]" + tail
        if source.damaged:
            trace.truncated, trace.truncated_detail = True, source.damaged
    if head:
        envelope = _decode_envelope(envelope_text)
        if envelope is None:
            # The events were read; what follows them is cut off or malformed. Keep what the head has.
            envelope = _decode_envelope(head + b"[]}") or {}
            if tail is not None and not trace.truncated:
                trace.truncated = True
                trace.truncated_detail = "file ends after the traceEvents list, inside the metadata that follows it"
        trace.envelope = envelope if isinstance(envelope, dict) else {}
        trace.envelope.pop("traceEvents", None)
    if progress is not None:
        progress(total, total)
    trace.frame = pl.concat(frames, how="vertical") if frames else _columns([], trace)
    return trace


def _collect(
    pool: Decoders, inflight: list[tuple[bytes, int]], buf: bytearray, trace: RawTrace, frames: list[pl.DataFrame]
) -> tuple[bytearray, bool]:
    """Take the oldest chunk's columns from the workers. When the worker cut it elsewhere than
    predicted (a boundary inside a string, damage) or failed, the chunks sent after it start at the
    wrong place: drop their answers and return the text from the worker's cut on, to be decoded
    here, with True."""
    chunk, predicted = inflight.pop(0)
    try:
        frame, cut, skipped, problems = pool.result()
    except WorkerFailed:
        frame, cut = None, None
    if frame is not None:
        frames.append(frame)
        _merge(trace, skipped, problems)
    if cut == predicted:
        return buf, False
    rest = bytearray(chunk[cut or 0 : predicted])
    for data, end in inflight:
        rest += data[:end]
    rest += buf
    inflight.clear()
    pool.drain()
    return rest, True


def _merge(trace: RawTrace, skipped: int, problems: list[str]) -> None:
    trace.skipped += skipped
    trace.problems += problems[: max(0, 3 - len(trace.problems))]


def _decode_envelope(text: bytes) -> Any:
    """The JSON around the event list, or None when it is not valid JSON. msgspec refuses numbers
    beyond a double (1e400) that Python's json reads as inf: a whole file is not "cut off" for that."""
    try:
        return _ANY.decode(text)
    except RecursionError:
        return None
    except msgspec.DecodeError:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return None


def _decode_prefix(buf: bytearray, trace: RawTrace, frames: list[pl.DataFrame]) -> int | None:
    """Decode the events of `buf` up to its last verified boundary; return where the rest starts
    (keeping one separator byte before the next event)."""
    candidates = _candidates(buf)
    for match in reversed(candidates[-_SPLIT_TRIES:]):
        end = match.start() + 1  # the byte after "}": whitespace or ","
        saved = buf[end]
        buf[0], buf[end] = 0x5B, 0x5D  # "[" ... "]"
        frame = _decode_view(buf, end + 1, trace)
        if frame is not None:
            frames.append(frame)
            return match.end() - 2
        buf[end] = saved
    if candidates and len(buf) > 4 * CHUNK_BYTES:
        # Many MB without a boundary that decodes: damaged text. Salvage event by event.
        match = candidates[-1]
        frames.append(_columns(_salvage(bytes(buf[1 : match.start() + 1]), trace), trace))
        return match.end() - 2
    return None


def _candidates(buf: bytearray) -> list[re.Match[bytes]]:
    """Candidate event boundaries near the end of `buf`, in order."""
    window = max(1, len(buf) - 2**18)  # hundreds of boundaries in real traces; widened when none
    candidates: list[re.Match[bytes]] = []
    while not candidates:
        candidates = list(_BOUNDARY.finditer(buf, window))
        if window == 1:
            break
        window = max(1, window - 8 * 2**20)
    return candidates


def decode_chunk(data: bytes) -> tuple[pl.DataFrame | None, int | None, int, list[str]]:
    """In a worker: what `_decode_prefix` makes of one chunk, as (frame, cut, skipped, problems)."""
    stats = RawTrace(Path(), pl.DataFrame(), {})
    frames: list[pl.DataFrame] = []
    cut = _decode_prefix(bytearray(data), stats, frames)
    return (frames[0] if frames else None), cut, stats.skipped, stats.problems


def _decode_view(buf: bytearray, end: int, trace: RawTrace) -> pl.DataFrame | None:
    """Decode buf[:end] in place. Raw fields point into the buffer, so the columns are built and
    the Structs dropped before the view is released."""
    with memoryview(buf) as view, view[:end] as text:
        events: list[Event] | None
        try:
            events = _EVENTS.decode(text)
        except msgspec.ValidationError:
            events = _try_decode(bytes(text[1:-1]), trace)
        except msgspec.DecodeError:
            return None
        frame = _columns(events, trace) if events is not None else None
        del events
        return frame


def _decode_last(buf: bytearray, trace: RawTrace, frames: list[pl.DataFrame]) -> bytes | None:
    """Decode the final events of `buf` (buf[0] is the separator byte before them, left as it
    was); return the bytes after the closing "]", or None when cut off."""
    saved = buf[0]
    try:
        return _decode_last_events(buf, trace, frames)
    finally:
        buf[0] = saved


def _decode_last_events(buf: bytearray, trace: RawTrace, frames: list[pl.DataFrame]) -> bytes | None:
    empty = _EMPTY_REST.match(buf, 1)
    if empty:  # empty array, or a boundary right before the close
        return bytes(buf[empty.end() :])
    # Each wrong close costs a decode of everything before it, so the closes followed by what can
    # follow the array (more envelope, or the end) are tried first, from the end; at most one
    # close can give valid JSON, so the order changes only the cost.
    likely = [
        m
        for m in reversed(list(_ARRAY_CLOSE.finditer(buf, max(1, len(buf) - 2**20))))
        if _AFTER_CLOSE.match(buf, m.end())
    ]
    tried = {m.start() for m in likely[:_SPLIT_TRIES]}
    first = [m for m in itertools.islice(_ARRAY_CLOSE.finditer(buf, 1), _SPLIT_TRIES * 4) if m.start() not in tried]
    buf[0] = 0x5B  # "[": each candidate decodes in place as buf[: close + 1]
    for match in likely[:_SPLIT_TRIES] + first:
        frame = _decode_view(buf, match.end(), trace)
        if frame is not None:
            frames.append(frame)
            return bytes(buf[match.end() :])
    text = bytes(buf[1:])
    # Damaged text before a closing bracket whose remainder is valid: salvage up to it.
    for n, match in enumerate(_ARRAY_CLOSE.finditer(text)):
        if n >= 64:
            break
        rest = text[match.end() :]
        try:
            whole = isinstance(_ANY.decode(b'{"x":[]' + rest), dict)
        except (msgspec.DecodeError, RecursionError):
            whole = False
        if whole:
            frames.append(_columns(_salvage(text[: match.start() + 1], trace), trace))
            return rest
    # No closing bracket that works: the file was cut off. Keep every complete event.
    ends = [len(text.rstrip())] + [
        m.start() + 1 for m in reversed(list(_LAST_COMMA.finditer(text, max(0, len(text) - 2**20))))
    ]
    for end in ends[: _SPLIT_TRIES + 1]:
        events = _try_decode(text[:end], trace)
        if events is not None:
            frames.append(_columns(events, trace))
            return None
    frames.append(_columns(_salvage(text, trace), trace))
    return None


def _try_decode(body: bytes, trace: RawTrace) -> list[Event] | None:
    """Decode `[body]`; None when it is not valid JSON (a wrong cut), salvage when types are off."""
    text = b"[" + body + b"]"
    try:
        return _EVENTS.decode(text)
    except msgspec.ValidationError:
        pass  # valid JSON with some malformed events: keep the good ones
    except msgspec.DecodeError:
        return None
    try:
        items = _ANY.decode(text)
    except msgspec.DecodeError:
        return None
    events = []
    for item in items:
        try:
            events.append(msgspec.convert(item, Event))
        except msgspec.ValidationError as exc:
            trace.skipped += 1
            if len(trace.problems) < 3:
                trace.problems.append(str(exc))
    return events


def _salvage(body: bytes, trace: RawTrace) -> list[Event]:
    """Damaged text (unescaped quotes, stray bytes): decode event by event, skipping the bad ones."""
    starts = [0] + [m.end() - 1 for m in _BOUNDARY.finditer(body)]
    ends = [m.start() + 1 for m in _BOUNDARY.finditer(body)] + [len(body)]
    events: list[Event] = []
    i = 0
    while i < len(starts):
        for j in range(i, min(i + 16, len(starts))):
            piece = body[starts[i] : ends[j]].strip().lstrip(b",")
            try:
                events.append(_EVENT.decode(piece))
            except msgspec.ValidationError as exc:
                trace.skipped += 1
                if len(trace.problems) < 3:
                    trace.problems.append(str(exc))
            except msgspec.DecodeError:
                continue
            i = j + 1
            break
        else:
            trace.skipped += 1
            if len(trace.problems) < 3:
                trace.problems.append("malformed JSON event")
            i += 1
    return events


def _strings(values: list[int | str | None]) -> pl.Series:
    """pid/tid/stream: ints almost always, strings sometimes ("Spans", "stream 7"); as text.
    A trace has few distinct values, so convert those once and gather by code: per-value
    conversion of mixed int/str lists in polars costs several times more."""
    codes = {v: i for i, v in enumerate(dict.fromkeys(values))}
    text = pl.Series([None if v is None else str(v) for v in codes], dtype=pl.String)
    return text.gather(pl.Series(list(map(codes.__getitem__, values)), dtype=pl.UInt32))


def _ints(values: list[int | str | None]) -> pl.Series:
    try:
        return pl.Series(values, dtype=pl.Int64)
    except (TypeError, OverflowError, pl.exceptions.PolarsError):  # beyond int64: unusable as an id
        return pl.Series([v if isinstance(v, int) and -(2**63) <= v < 2**63 else None for v in values], dtype=pl.Int64)


# One C-level attribute getter per field: map(attrgetter) over a chunk costs about a third of a
# list comprehension, and this extraction is the main cost of loading after msgspec's decode.
_GET = {name: attrgetter(name) for name in ("ph", "cat", "name", "pid", "tid", "ts", "dur", "id", "args")}
_GET_ARG = {name: attrgetter(name) for name in ("external_id", "correlation", "stream", "input_dims")}
_GET_LEGACY_EXT = attrgetter("external_id_legacy")
# Fields are extracted a batch of events at a time: one pass per field over a whole chunk misses
# the cache on every Struct, which made extraction about a third slower.
_BATCH = 1024


def _columns(events: list[Event], trace: RawTrace) -> pl.DataFrame:
    """One chunk of Structs → columns (all phases; the caller filters)."""
    n = len(events)
    cols: dict[str, list[Any]] = {name: [] for name in (*_GET, *_GET_ARG)}
    fields = [(cols[name].extend, getter) for name, getter in _GET.items()]
    arg_fields = [(cols[name].extend, getter) for name, getter in _GET_ARG.items()]
    get_args = _GET["args"]
    for start in range(0, n, _BATCH):
        part = events[start : start + _BATCH]
        for extend, getter in fields:
            extend(map(getter, part))
        args = list(map(get_args, part))
        for extend, getter in arg_fields:
            extend(map(getter, args))
    ext = cols["external_id"]
    if ext.count(None) == n:
        ext = list(map(_GET_LEGACY_EXT, cols["args"]))
    # Raw JSON text of the shapes; an empty Raw (not recorded) becomes null. Joined and split in
    # polars, which costs a fraction of one bytes object per event (JSON text never holds a NUL).
    dims = cols["input_dims"]
    if any(dims):
        # Decoded here, not cast in polars: msgspec keeps Raw bytes as they are, and invalid
        # UTF-8 inside a string must become U+FFFD, not fail the chunk.
        joined = b"\x00".join(dims).decode("utf-8", "replace")
        text = pl.Series([joined], dtype=pl.String).str.split("\x00").explode()
        dims_col = pl.select(pl.when(text != "").then(text)).to_series()
    else:
        dims_col = pl.Series([None] * n, dtype=pl.String)
    return pl.DataFrame(
        {
            "ph": pl.Series(cols["ph"], dtype=pl.Categorical),
            "cat": pl.Series(cols["cat"], dtype=pl.Categorical),
            "name": pl.Series(cols["name"], dtype=pl.Categorical),
            "pid": _strings(cols["pid"]),
            "tid": _strings(cols["tid"]),
            "ts_us": pl.Series(cols["ts"], dtype=pl.Float64),
            "dur_us": pl.Series(cols["dur"], dtype=pl.Float64),
            "flow_id": _ints(cols["id"]),
            "arg_stream": _strings(cols["stream"]),
            "correlation": _ints(cols["correlation"]),
            "external_id": _ints(ext),
            "input_dims": dims_col.alias("input_dims"),
        }
    )
