"""Background writer: a bounded queue of recorded steps, turned into Parquet chunks off the
training thread. The training thread only appends to the queue; when the queue is full the
oldest unwritten step is dropped and counted, so recording never blocks or grows without bound.

The training thread takes no Python lock here: the SIGTERM handler (which runs in the training
thread, between any two bytecodes) closes the recorder, and a lock held by the code it
interrupted would stall that close. Steps go through a deque (append and popleft are atomic) and
wake-ups through a `queue.SimpleQueue`, whose put is reentrant.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .. import format as fmt


@dataclass
class StepItem:
    """One step as the training thread hands it over; no host sync was needed to build it."""

    step: int
    values: dict[str, Any]  # steps columns already known on the host
    # column -> index into the vector of the two float32 words that hold its float64 bits
    tensor_cols: dict[str, int] = field(default_factory=dict)
    ids: list[int] | None = None  # grads rows (param ids), None when grads were not recorded
    has_update: bool = False
    counts: dict[int, int] | None = None
    vec: torch.Tensor | None = None  # host (CPU) vector, or None when it is in `slot`
    slot: int | None = None
    length: int = 0


class HostRing:
    """Pinned host buffers for non-blocking device->host copies (CUDA only).

    The training thread enqueues a copy and records an event; only the writer thread waits on
    that event. A slot still unread by the writer is never overwritten: the step is dropped."""

    def __init__(self, slots: int, length: int):
        self.length = length
        self.buffers = [torch.empty(length, dtype=torch.float32, pin_memory=True) for _ in range(slots)]
        self.events = [torch.cuda.Event() for _ in range(slots)]
        self.free = [True] * slots
        self._next = 0

    def send(self, vec: torch.Tensor) -> int | None:
        slot = self._next
        if vec.numel() > self.length or not self.free[slot]:
            return None
        self.free[slot] = False
        self.buffers[slot][: vec.numel()].copy_(vec, non_blocking=True)
        self.events[slot].record()
        self._next = (slot + 1) % len(self.buffers)
        return slot

    def receive(self, slot: int, length: int) -> np.ndarray:
        self.events[slot].synchronize()
        out = self.buffers[slot][:length].numpy().copy()
        self.free[slot] = True
        return out

    def release(self, slot: int) -> None:
        self.free[slot] = True


class ChunkWriter(threading.Thread):
    def __init__(
        self,
        steps_dir: Path,
        grads_dir: Path,
        flush_every: int,
        flush_seconds: float,
        max_queue: int,
        warn: Callable[[str], None],
        ring: HostRing | None = None,
        after_flush: Callable[[], None] | None = None,
    ):
        super().__init__(name="tracemortem-writer", daemon=True)
        self.steps_dir, self.grads_dir = steps_dir, grads_dir
        self.flush_every, self.flush_seconds, self.max_queue = flush_every, flush_seconds, max_queue
        self.ring = ring
        self.after_flush = after_flush
        self.warn = warn
        self.dropped_steps = 0
        self.lost_steps = 0  # converted but whose chunk could not be written
        self.written_steps = 0
        self.errors: list[str] = []
        self._queue: deque[StepItem] = deque()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stopping = False
        self._status_due = False
        self._woken = False
        self._steps_rows: list[dict[str, Any]] = []
        self._grads_parts: list[dict[str, np.ndarray]] = []
        self._last_flush = time.monotonic()
        self._index = {"steps": fmt.next_chunk_index(steps_dir), "grads": fmt.next_chunk_index(grads_dir)}

    # --- training thread -------------------------------------------------------------------

    def put(self, item: StepItem) -> None:
        self._queue.append(item)
        while len(self._queue) > self.max_queue:
            try:
                old = self._queue.popleft()
            except IndexError:  # the writer took them meanwhile
                break
            if old.slot is not None and self.ring is not None:
                self.ring.release(old.slot)
            self.dropped_steps += 1
        if len(self._queue) >= self.flush_every and not self._woken:
            self._woken = True  # one wake-up per batch: a stalled writer must not pile them up
            self._wake.put(None)

    def request_status(self) -> None:
        """Have the status files rewritten on this thread: the training thread never waits for
        a file write (a stalled disk would stall training)."""
        self._status_due = True
        self._wake.put(None)

    def stop(self, timeout: float) -> None:
        self._stopping = True
        self._wake.put(None)
        self.join(timeout)

    # --- writer thread ---------------------------------------------------------------------

    def run(self) -> None:
        while True:
            if not self._stopping:
                try:
                    self._wake.get(timeout=min(self.flush_seconds, 1.0))
                except queue.Empty:
                    pass
            self._woken = False
            stopping = self._stopping  # read before draining: nothing put before stop() is missed
            items = []
            while True:
                try:
                    items.append(self._queue.popleft())
                except IndexError:
                    break
            for item in items:
                try:
                    self._convert(item)
                except Exception as exc:  # one bad step must not end the writer
                    self._error(f"step {item.step} could not be converted: {exc!r}")
                    self.lost_steps += 1
                # Chunks of exactly `flush_every` steps, however many steps one wake-up drained.
                if len(self._steps_rows) >= self.flush_every:
                    self.flush()
            due = time.monotonic() - self._last_flush >= self.flush_seconds
            if stopping or due:
                self.flush(status=not stopping)  # the closing recorder writes the final status itself
            if self._status_due:
                self._write_status()
            if stopping:
                return

    def _error(self, message: str) -> None:
        self.warn(f"{message}; this data is lost, recording continues")
        if len(self.errors) < 20:
            self.errors.append(message)

    def _convert(self, item: StepItem) -> None:
        if item.slot is not None and self.ring is not None:
            vec = self.ring.receive(item.slot, item.length)
        elif item.vec is not None:
            vec = item.vec.numpy()
        else:
            vec = np.empty(0, np.float32)
        row = dict(item.values)
        for col, index in item.tensor_cols.items():
            row[col] = float(vec[index : index + 2].view(np.float64)[0])
        if item.ids is not None:
            n = len(item.ids)
            matrix = vec[: 3 * n].reshape(3, n)
            norm, absmax, weight = matrix[0], matrix[1], matrix[2]
            bad = ~np.isfinite(absmax)  # an element is NaN/Inf (the norm may overflow alone)
            ids = np.asarray(item.ids, dtype=np.int32)
            if item.counts is None:  # guard off: exact counts unknown for non-finite grads
                nonfinite = np.zeros(n, np.int64)
                mask = bad
            else:
                nonfinite = (
                    np.array([item.counts.get(int(i), 0) for i in ids], np.int64)
                    if bad.any()
                    else np.zeros(n, np.int64)
                )
                mask = None
            part = {
                "param_id": ids,
                "norm": norm.astype(np.float32, copy=True),
                "absmax": absmax.astype(np.float32, copy=True),
                "nonfinite": nonfinite,
                "nonfinite_mask": mask,
                "weight_norm": weight.astype(np.float32, copy=True),
                "update_norm": vec[3 * n : 4 * n].astype(np.float32, copy=True) if item.has_update else None,
                "step": item.step,
            }
            self._grads_parts.append(part)
            with np.errstate(over="ignore", invalid="ignore"):
                row["grad_norm"] = float(math.sqrt(float(np.sum(norm.astype(np.float64) ** 2))))
            row["nonfinite"] = int(bad.sum())
        self._steps_rows.append(row)

    def flush(self, status: bool = True) -> None:
        self._last_flush = time.monotonic()
        rows, parts = self._steps_rows, self._grads_parts
        self._steps_rows, self._grads_parts = [], []
        if not rows and not parts:
            return
        # Each table on its own: a broken grads folder must not cost the steps table its rows.
        incomplete = False
        for name, folder, table, data in (
            ("grads", self.grads_dir, _grads_table, parts),
            ("steps", self.steps_dir, _steps_table, rows),
        ):
            if not data:
                continue
            try:
                self._write(name, folder, table(data))
                if name == "steps":
                    self.written_steps += len(rows)
            except Exception as exc:
                incomplete = True
                self._error(f"could not write a {name} chunk of {len(rows)} steps: {exc!r}")
        if incomplete:
            self.lost_steps += len(rows)
        if status:
            self._write_status()

    def _write_status(self) -> None:
        self._status_due = False
        if self.after_flush is not None:
            self.after_flush()

    def _write(self, name: str, folder: Path, table: pa.Table) -> None:
        fmt.write_chunk(folder, self._index[name], table)
        self._index[name] += 1


def _steps_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for field_ in fmt.STEPS_SCHEMA:
        columns[field_.name] = pa.array([r.get(field_.name) for r in rows], type=field_.type)
    extra = sorted({k for r in rows for k in r} - set(columns))
    for name in extra:  # user scalars
        columns[name] = pa.array([_as_float(r.get(name)) for r in rows], type=pa.float64())
    return pa.table(columns)


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _grads_table(parts: list[dict[str, Any]]) -> pa.Table:
    sizes = [len(p["param_id"]) for p in parts]
    step = np.repeat(np.array([p["step"] for p in parts], np.int64), sizes)
    nonfinite = np.concatenate([p["nonfinite"] for p in parts])
    masks = [
        p["nonfinite_mask"] if p["nonfinite_mask"] is not None else np.zeros(len(p["param_id"]), bool) for p in parts
    ]
    mask = np.concatenate(masks)
    updates = [
        p["update_norm"] if p["update_norm"] is not None else np.full(len(p["param_id"]), np.nan, np.float32)
        for p in parts
    ]
    update_mask = np.concatenate([np.full(n, p["update_norm"] is None) for n, p in zip(sizes, parts)])
    return pa.table(
        {
            "step": pa.array(step, pa.int64()),
            "param_id": pa.array(np.concatenate([p["param_id"] for p in parts]), pa.int32()),
            "norm": pa.array(np.concatenate([p["norm"] for p in parts]), pa.float32()),
            "absmax": pa.array(np.concatenate([p["absmax"] for p in parts]), pa.float32()),
            "nonfinite": pa.array(nonfinite, pa.int64(), mask=mask if mask.any() else None),
            "weight_norm": pa.array(np.concatenate([p["weight_norm"] for p in parts]), pa.float32()),
            "update_norm": pa.array(np.concatenate(updates), pa.float32(), mask=update_mask),
        },
        schema=fmt.GRADS_SCHEMA,
    )
