"""torch.profiler on a schedule, writing gzipped chrome traces atomically under rank{R}/traces/."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import format as fmt


@dataclass(frozen=True)
class ProfileSchedule:
    """torch.profiler.schedule arguments: skip `skip_first` steps, then `repeat` cycles of
    `wait` idle steps, `warmup` steps (profiled, discarded) and `active` recorded steps."""

    wait: int = 5
    warmup: int = 1
    active: int = 3
    repeat: int = 2
    skip_first: int = 10

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def resolve_schedule(profile: object) -> ProfileSchedule | None:
    if profile is None or profile is False:
        return None
    if profile is True:
        return ProfileSchedule()
    if isinstance(profile, ProfileSchedule):
        return profile
    raise TypeError(f"profile must be None, True or a ProfileSchedule, not {type(profile).__name__}")


class TraceWriter:
    """on_trace_ready handler: `{worker}.{ms}.pt.trace.json.gz`, the tensorboard_trace_handler
    naming, but written to a temp file and renamed so a killed job never leaves half a trace."""

    def __init__(self, folder: Path, rank: int):
        self.folder = folder
        host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
        self.worker = f"rank{rank}_{host}_{os.getpid()}"
        self.written: list[Path] = []

    def __call__(self, prof: torch.profiler.profile) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{self.worker}.{int(time.time() * 1000)}.pt.trace.json.gz"
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".trace.") as scratch:
            raw = os.path.join(scratch, "trace.json")
            prof.export_chrome_trace(raw)
            with (
                fmt.atomic_file(final) as packed,
                open(raw, "rb") as src,
                gzip.open(packed, "wb", compresslevel=6) as dst,
            ):
                shutil.copyfileobj(src, dst)
        self.written.append(final)


def start_profiler(schedule: ProfileSchedule, folder: Path, rank: int) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(
            wait=schedule.wait,
            warmup=schedule.warmup,
            active=schedule.active,
            repeat=schedule.repeat,
            skip_first=schedule.skip_first,
        ),
        on_trace_ready=TraceWriter(folder, rank),
        record_shapes=False,
        with_stack=False,
    )
    prof.start()
    return prof
