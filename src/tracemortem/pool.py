"""Worker processes that never import code from beside the input (docs/robustness.md, "Worker processes").

`process_pool(n)` is a standard `concurrent.futures.ProcessPoolExecutor` on the spawn start method
(nothing is forked while polars' threads may be running). Plain spawn would let an input's
neighbourhood run code in the workers: the child interpreter starts as `python -c …`, which puts
the current directory first on `sys.path` before multiprocessing imports `pickle`, `socket`, …;
the parent's `sys.path` (with the current directory in place of `''`) is then copied into the
child; and the parent's `__main__` script is re-run there. The resource tracker multiprocessing
starts for the pool's locks is a `python -c` process too. So each of them is started with
`PYTHONSAFEPATH=1` and in isolated mode (`-I`: no directory is prepended; Python 3.10 has no
PYTHONSAFEPATH), with the parent's `sys.path` minus the current directory and the given input
folders, and without re-running `__main__`.
"""

from __future__ import annotations

import multiprocessing.context
import os
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import resource_tracker, util
from pathlib import Path
from typing import Any

from . import allocator

# Process-wide state (the environment, sys.path, __main__) is swapped only while a worker is being
# started, one start at a time.
_STARTING = threading.Lock()
# What `spawn` sees as `__main__` while a worker starts: no file and no module name, so the child
# re-runs nothing (a caller's script without an `if __name__ == "__main__"` guard stays safe).
_NO_MAIN = types.ModuleType("__main__")
_CHILD_ENV = {"PYTHONSAFEPATH": "1", "POLARS_MAX_THREADS": "1"}
# The interpreter flags multiprocessing gives its children (the workers and the resource tracker).
_parent_flags = util._args_from_interpreter_flags  # type: ignore[attr-defined]


def _isolated_flags() -> list[str]:
    return [*_parent_flags(), "-I"]


def _resolved(entry: str) -> str:
    try:
        return str(Path(entry or os.curdir).resolve())
    except (OSError, RuntimeError):
        return entry


def safe_sys_path(path: Iterable[str], untrusted: Iterable[Path]) -> list[str]:
    """`path` without `''`, the current directory and the `untrusted` folders (however spelled)."""
    banned = {_resolved(os.curdir), *(_resolved(str(folder)) for folder in untrusted)}
    return [entry for entry in path if entry and _resolved(entry) not in banned]


@contextmanager
def _starting_worker(untrusted: tuple[Path, ...]) -> Iterator[None]:
    with _STARTING:
        saved_env = {name: os.environ.get(name) for name in (*_CHILD_ENV, allocator.CONF)}
        saved_path, saved_main = sys.path, sys.modules["__main__"]
        os.environ.update(_CHILD_ENV)
        os.environ[allocator.CONF] = allocator.worker_options(saved_env[allocator.CONF])
        sys.path = safe_sys_path(saved_path, untrusted)
        sys.modules["__main__"] = _NO_MAIN
        util._args_from_interpreter_flags = _isolated_flags  # type: ignore[attr-defined]
        try:
            yield
        finally:
            util._args_from_interpreter_flags = _parent_flags  # type: ignore[attr-defined]
            sys.modules["__main__"] = saved_main
            sys.path = saved_path
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class _SafeSpawnProcess(multiprocessing.context.SpawnProcess):
    untrusted: tuple[Path, ...] = ()

    def start(self) -> None:
        with _starting_worker(self.untrusted):
            super().start()


class _SafeSpawnContext(multiprocessing.context.SpawnContext):
    def __init__(self, untrusted: tuple[Path, ...]):
        self.untrusted = untrusted

    def Process(self, *args: Any, **kwargs: Any) -> _SafeSpawnProcess:  # type: ignore[override]
        process = _SafeSpawnProcess(*args, **kwargs)
        process.untrusted = self.untrusted
        return process


def _init_worker(untrusted: tuple[Path, ...]) -> None:
    # Again in the child, for anything imported lazily later.
    sys.path[:] = safe_sys_path(sys.path, untrusted)


def process_pool(workers: int, untrusted: Iterable[Path] = ()) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes that import nothing from the current directory or
    from the `untrusted` folders (the inputs' folders). Workers start on demand, as tasks arrive."""
    folders = tuple(Path(folder) for folder in untrusted)
    # multiprocessing's resource tracker is one more `python -c` process, started by the pool's
    # first lock: start it here, the same way as the workers.
    with _starting_worker(folders):
        resource_tracker.ensure_running()
    return ProcessPoolExecutor(
        workers, mp_context=_SafeSpawnContext(folders), initializer=_init_worker, initargs=(folders,)
    )
