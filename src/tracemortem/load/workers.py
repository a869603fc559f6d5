"""Worker processes that decode trace chunks into columns (`chrome.decode_chunk`) for the parent.

Each worker is `python -m tracemortem.load.workers`, talking over its stdin/stdout: the parent
sends a chunk's bytes, the worker answers with where it cut the chunk, its malformed-event count
and problems, and the columns as Arrow IPC (categories dictionary-encoded). A plain subprocess,
not multiprocessing: nothing is forked (polars' thread pool may be running), and the caller's
`__main__` is not re-imported in the worker, as multiprocessing's spawn/forkserver would do to a
script without an `if __name__ == "__main__"` guard.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import polars as pl

_LEN = 8


class WorkerFailed(Exception):
    """A worker could not be started, died, or answered garbage: decode in-process instead."""


class Workers:
    """`count` workers, started on the first `start()` and shared by the files of one load;
    chunks go to them round-robin and their answers are read back in the same order."""

    def __init__(self, count: int = 2):
        self.count = count
        self.failed = False
        self._procs: list[subprocess.Popen] = []
        # One writer thread per worker: a chunk is sent while the worker is still busy with the
        # previous one, and the main thread stays free to read answers (no pipe deadlock).
        self._writers: list[ThreadPoolExecutor] = []
        self._sent: list[Future] = []
        self._next_send = 0
        self._next_read = 0

    def start(self) -> bool:
        if self._procs or self.failed:
            return not self.failed
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), POLARS_MAX_THREADS="1")
        try:
            for _ in range(self.count):
                self._procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "tracemortem.load.workers"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        env=env,
                    )
                )
                self._writers.append(ThreadPoolExecutor(1, thread_name_prefix="tracemortem-send"))
        except (OSError, ValueError, RuntimeError):  # no executable, no fork allowed, no threads
            self.close()
            self.failed = True
        return not self.failed

    def submit(self, data: bytes) -> None:
        i = self._next_send % self.count
        self._next_send += 1
        self._sent.append(self._writers[i].submit(_send, self._procs[i].stdin, data))

    def result(self) -> tuple[pl.DataFrame | None, int | None, int, list[str]]:
        """The answer to the oldest chunk not yet read: (frame, cut, skipped, problems); frame and
        cut are None when the worker found no verified boundary or its decode raised."""
        i = self._next_read % self.count
        self._next_read += 1
        sent = self._sent.pop(0)
        try:
            stdout = self._procs[i].stdout
            head = pickle.loads(_read(stdout, int.from_bytes(_read(stdout, _LEN), "little")))
            ipc = _read(stdout, head[3]) if head[3] else b""
            sent.result()
        except (OSError, EOFError, ValueError, IndexError, TypeError, pickle.UnpicklingError) as exc:
            self.fail()
            raise WorkerFailed(str(exc)) from None
        cut, skipped, problems, _ = head
        return (pl.read_ipc(io.BytesIO(ipc)) if ipc else None), cut, skipped, problems

    def pending(self) -> int:
        return len(self._sent)

    def drain(self) -> None:
        """Read and drop every outstanding answer (their chunks are being decoded again)."""
        while self._sent:
            try:
                self.result()
            except WorkerFailed:
                return

    def fail(self) -> None:
        self.close()
        self.failed = True

    def close(self) -> None:
        for proc in self._procs:
            try:
                proc.stdin.close()  # the worker exits at end of input
            except OSError:
                pass
        for writer in self._writers:
            writer.shutdown(wait=False, cancel_futures=True)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._procs, self._writers, self._sent = [], [], []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _send(stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(_LEN, "little"))
    stream.write(data)
    stream.flush()


def _read(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("worker ended")
    return data


def main() -> None:
    from . import chrome

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print in the worker must not corrupt the answers
    stdin = sys.stdin.buffer
    while len(head := stdin.read(_LEN)) == _LEN:
        data = _read(stdin, int.from_bytes(head, "little"))
        try:
            frame, cut, skipped, problems = chrome.decode_chunk(data)
            ipc = frame.write_ipc(None, compression="uncompressed").getvalue() if frame is not None else b""
        except Exception:
            cut, skipped, problems, ipc = None, 0, [], b""
        reply = pickle.dumps((cut, skipped, problems, len(ipc)))
        out.write(len(reply).to_bytes(_LEN, "little") + reply)
        out.write(ipc)
        out.flush()


if __name__ == "__main__":
    main()
