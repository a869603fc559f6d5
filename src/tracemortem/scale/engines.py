"""Where the per-rank map runs: here (`--jobs N` processes) or on a Ray cluster (`--engine ray`).

Both hand back the summaries in item order, with at most a few items per worker in flight, so the
driver holds a bounded number of summaries whatever the number of ranks (docs/scale.md).
"""

from __future__ import annotations

import os
import pickle
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import ConfigError
from ..pool import process_pool
from .items import WorkItem
from .summary import RankSummary, map_item

T = TypeVar("T")
IN_FLIGHT_PER_WORKER = 2  # items submitted ahead per worker: enough to keep it busy
CONNECT_TIMEOUT_S = 10


class Engine(Protocol):
    def map(self, items: Sequence[WorkItem]) -> Iterator[tuple[int, RankSummary]]: ...

    def call(self, function: Callable[..., T], *args: Any) -> T: ...

    def close(self) -> None: ...


def default_jobs() -> int:
    return max(os.cpu_count() or 1, 1)


def _folders(items: Sequence[WorkItem]) -> set[Path]:
    return {path.parent for item in items for _, path, _ in item.files}


class LocalEngine:
    """`jobs` worker processes (`pool.process_pool`: they import nothing from beside the input);
    with one job or one item the map runs in this process, one item at a time, and a big single
    trace keeps its chunked parallel decode."""

    def __init__(self, jobs: int | None = None):
        self.jobs = jobs if jobs is not None else default_jobs()

    def map(self, items: Sequence[WorkItem]) -> Iterator[tuple[int, RankSummary]]:
        if self.jobs <= 1 or len(items) <= 1:
            for index, item in enumerate(items):
                yield index, _detached(map_item(item, parallel_decode=True))
            return
        workers = min(self.jobs, len(items))
        with process_pool(workers, untrusted=_folders(items)) as pool:
            pending: deque[tuple[int, Future[RankSummary]]] = deque()
            queue = iter(enumerate(items))
            for index, item in queue:
                pending.append((index, pool.submit(map_item, item)))
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    break
            while pending:
                index, future = pending.popleft()
                summary = future.result()
                following = next(queue, None)
                if following is not None:
                    pending.append((following[0], pool.submit(map_item, following[1])))
                yield index, summary

    def call(self, function: Callable[..., T], *args: Any) -> T:
        return function(*args)

    def close(self) -> None:
        pass


def _detached(summary: RankSummary) -> RankSummary:
    """The summary as a worker hands it back, copied through pickle. polars' string columns are
    views into the buffers of the table they were taken from: a summary made in this process kept
    all the text of its item's events alive (19 MB per item of 28 small ranks, held until the
    next fold, and folded tables kept them for good: 581 MB at 1,024 ranks; docs/scale.md)."""
    copy: RankSummary = pickle.loads(pickle.dumps(summary, protocol=pickle.HIGHEST_PROTOCOL))  # our own object
    return copy


class RayEngine:
    """The map as Ray tasks on the cluster at `address` (None: a local Ray started for this run;
    "auto": the cluster this machine belongs to). The tasks read the trace paths where the cluster
    sees them (a shared filesystem); only the small summaries come back."""

    def __init__(self, address: str | None = None, jobs: int | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("--engine ray needs Ray: pip install 'tracemortem[ray]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address not in (None, "auto", "local"):
                _check_reachable(address)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address is None and jobs is not None:
                options["num_cpus"] = jobs
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "a local Ray"
                raise ConfigError(f"cannot connect to Ray at {where}: {str(exc).strip().splitlines()[0]}") from None
            self._started = True
        self._map = ray.remote(map_item)
        cpus = ray.cluster_resources().get("CPU", 1)  # type: ignore[no-untyped-call]
        self._in_flight = max(int(cpus), 1) * IN_FLIGHT_PER_WORKER

    def map(self, items: Sequence[WorkItem]) -> Iterator[tuple[int, RankSummary]]:
        pending: deque[tuple[int, Any]] = deque()
        queue = iter(enumerate(items))
        for index, item in queue:
            pending.append((index, self._map.remote(item)))
            if len(pending) >= self._in_flight:
                break
        while pending:
            index, ref = pending.popleft()
            summary: RankSummary = self._ray.get(ref)
            following = next(queue, None)
            if following is not None:
                pending.append((following[0], self._map.remote(following[1])))
            yield index, summary

    def call(self, function: Callable[..., T], *args: Any) -> T:
        result: T = self._ray.get(self._ray.remote(function).remote(*args))
        return result

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _check_reachable(address: str) -> None:
    """Fail in seconds on a host:port nothing listens on (Ray itself retries for minutes)."""
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected host:port, 'auto' or 'local'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def engine_from_options(engine: str, jobs: int | None, address: str | None) -> Engine:
    if engine == "ray":
        return RayEngine(address, jobs)
    if address is not None:
        raise ConfigError("--address needs --engine ray")
    return LocalEngine(jobs)
