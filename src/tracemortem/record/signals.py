"""Signals and forks around a Recorder (docs/recorder.md, "Signals, forks and cluster jobs").

Three things go wrong in real jobs without this module:
- Slurm and torchrun send SIGTERM to the whole process group, so forked DataLoader workers die
  with the trainer, and PyTorch's SIGCHLD handler raises "DataLoader worker ... is killed by
  signal" in the main thread, wherever it is: in the middle of the recorder's final flush, which
  then never finishes. While a recorder closes, SIGCHLD, SIGTERM and SIGINT are therefore held
  (their Python handlers replaced by one that notes them) and re-raised once the close is done,
  as if they had arrived just then.
- A second SIGTERM (the agent forwarding one after the group's) is held the same way instead of
  ending the process half-way through the flush.
- A forked child (DataLoader worker, `os.fork`) inherits the recorder's Python state, SIGTERM
  handler and atexit hook. `os.register_at_fork` switches every live recorder off in the child:
  the parent alone owns the run directory. SIGTERM stays blocked from just before the fork until
  the child has its own handler back: while a Python handler is installed, a SIGTERM reaching the
  child in between (a parent ending a child it has just forked) is caught by Python's C-level
  handler and then discarded with the pending signals CPython clears after a fork, so the child
  would never end. Blocked, it stays pending in the kernel and is delivered once the child's own
  handler is back.
"""

from __future__ import annotations

import os
import signal
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGCHLD", "SIGTERM", "SIGINT") if hasattr(signal, name))

Handler = Callable[[int, FrameType | None], Any] | int | None


class ForkAware(Protocol):
    def forget_in_child(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def track(owner: ForkAware) -> None:
    """Have `owner.forget_in_child()` called in every child forked from now on while it lives."""
    _live.add(owner)


def untrack(owner: ForkAware) -> None:
    _live.discard(owner)


_fork_mask = threading.local()  # per forking thread: whether SIGTERM was blocked by us


def _block_sigterm_before_fork() -> None:
    _fork_mask.blocked = False
    if _live and hasattr(signal, "pthread_sigmask"):
        try:
            _fork_mask.blocked = signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        except (ValueError, OSError):
            pass


def _unblock_sigterm_after_fork() -> None:
    """A SIGTERM that arrived meanwhile is delivered now, to the handler now in place."""
    if getattr(_fork_mask, "blocked", False):
        _fork_mask.blocked = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _after_fork_in_child() -> None:
    try:
        for owner in list(_live):
            try:
                owner.forget_in_child()
            except Exception:  # a child must start whatever happens here
                pass
        _live.clear()
    finally:
        _unblock_sigterm_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_block_sigterm_before_fork,
        after_in_parent=_unblock_sigterm_after_fork,
        after_in_child=_after_fork_in_child,
    )


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass
class Held:
    """Signals that arrived while held, and the handlers to put back when the hold ends."""

    restore: dict[int, Handler] = field(default_factory=dict)
    caught: list[int] = field(default_factory=list)


def hold() -> Held:
    """Replace the Python handlers of HELD_SIGNALS with one that only notes the signal. Python
    runs signal handlers in the main thread only, so elsewhere nothing can interrupt and
    nothing is held."""
    held = Held()
    if not in_main_thread():
        return held

    def note(signum: int, _frame: FrameType | None) -> None:
        held.caught.append(signum)

    for signum in HELD_SIGNALS:
        try:
            held.restore[signum] = signal.signal(signum, note)
        except (ValueError, OSError):
            pass
    return held


def release(held: Held, drop_errors: bool = False) -> None:
    """Put the handlers back, then raise each held signal again, once: its handler (or default
    action) runs now. With `drop_errors`, an exception raised by a handler is dropped (used
    while another exception is already propagating, which must reach the user unchanged)."""
    for signum, handler in held.restore.items():
        try:
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        except (ValueError, OSError, TypeError):
            pass
    held.restore = {}
    caught, held.caught = list(dict.fromkeys(held.caught)), []
    for signum in caught:
        try:
            signal.raise_signal(signum)
        except Exception:
            if not drop_errors:
                raise


def install_sigterm(handler: Callable[[int, FrameType | None], None]) -> tuple[bool, Handler]:
    """Install `handler` for SIGTERM; returns (installed, the handler it replaced)."""
    if not in_main_thread():
        return False, None
    try:
        return True, signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return False, None


def restore_sigterm(ours: Callable[[int, FrameType | None], None], previous: Handler, held: Held | None) -> None:
    """Put the replaced SIGTERM handler back, unless someone installed another one after ours.
    During a hold, the handler is put back when the hold ends."""
    wanted = previous if previous is not None else signal.SIG_DFL
    if held is not None and signal.SIGTERM in held.restore:
        if held.restore[signal.SIGTERM] == ours:
            held.restore[signal.SIGTERM] = wanted
        return
    if not in_main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) == ours:
            signal.signal(signal.SIGTERM, wanted)
    except (ValueError, OSError, TypeError):
        pass


def forward(signum: int, frame: FrameType | None, previous: Handler) -> None:
    """Do what `previous` would have done with the signal: call it, ignore it, or (the default
    action) end the process by the same signal, as if the recorder had never been there."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
