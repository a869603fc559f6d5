"""tracemortem: post-mortem analysis of PyTorch training runs.

`import tracemortem` never imports torch: the analyzer (`analyze`) works without it, and the
recorder (`Recorder`, `ProfileSchedule`, which need torch) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

_LAZY = {
    "Recorder": "tracemortem.record",
    "ProfileSchedule": "tracemortem.record",
    "analyze": "tracemortem.analysis",
    "Analysis": "tracemortem.analysis",
    "Finding": "tracemortem.findings",
    "Config": "tracemortem.config",
}

__all__ = ["Analysis", "Config", "Finding", "ProfileSchedule", "Recorder", "__version__", "analyze"]

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import Analysis, analyze
    from .config import Config
    from .findings import Finding
    from .record import ProfileSchedule, Recorder


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tracemortem' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
