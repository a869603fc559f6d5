"""The recorder half of tracemortem (needs torch): `Recorder` and `ProfileSchedule`."""

from .profiling import ProfileSchedule
from .recorder import Recorder

__all__ = ["ProfileSchedule", "Recorder"]
