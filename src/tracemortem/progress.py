"""Progress on stderr for long work, only when stderr is a terminal (docs/report.md)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[str], None]


def silent(message: str) -> None:
    """The default: library calls print nothing."""


class _StatusLine:
    """Rewrites one status line on stderr (a terminal: `\r` and erase-line work there)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        sys.stderr.write(f"\r\033[K[{time.monotonic() - self.start:6.1f}s] {message}")
        sys.stderr.flush()


def terminal_progress() -> Progress:
    """A reporter that rewrites one status line on stderr, or `silent` when not a terminal."""
    return _StatusLine() if sys.stderr.isatty() else silent


def finish(progress: Progress) -> None:
    """End the status line so later output starts on a clean line; other reporters wrote whole
    lines and need nothing (a pipe or log file gets no control characters)."""
    if isinstance(progress, _StatusLine):
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
