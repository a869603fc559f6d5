"""Progress on stderr for long work, only when stderr is a terminal (docs/report.md)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[str], None]


def silent(message: str) -> None:
    """The default: library calls print nothing."""


def terminal_progress() -> Progress:
    """A reporter that rewrites one status line on stderr, or `silent` when not a terminal."""
    if not sys.stderr.isatty():
        return silent
    start = time.monotonic()

    def report(message: str) -> None:
        sys.stderr.write(f"\r\033[K[{time.monotonic() - start:6.1f}s] {message}")
        sys.stderr.flush()

    return report


def finish(progress: Progress) -> None:
    """End the status line so later output starts on a clean line."""
    if progress is not silent:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
