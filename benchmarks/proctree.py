"""Process-tree measurement shared by the benchmarks (Linux: reads /proc).

`status_mb` reads one memory field of a process; `run_measured` runs a command and reports its
wall time, the CPU time of the child and of every descendant it waited for, and the peak RSS of
the whole tree (the child plus its worker processes, sampled, never less than the largest single
process's own peak).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_EVERY_S = 0.05


def status_mb(field: str, pid: int | str = "self") -> int:
    """A memory field of /proc/PID/status (VmRSS: now, VmHWM: peak), in MB."""
    match = re.search(rf"{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) // 1024 if match else 0


# Linux with CONFIG_PROC_CHILDREN lists each thread's children: a sample then reads a few files
# instead of the stat of every process (0.1 ms instead of 1.5 ms here).
_HAS_CHILDREN = Path(f"/proc/self/task/{os.getpid()}/children").exists()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:  # ended while we looked
        pass
    return found


def descendants(root: int) -> list[int]:
    """The live processes below `root` (children, their children, ...)."""
    if not _HAS_CHILDREN:
        return _descendants_by_scan(root)
    found, frontier = [], [root]
    while frontier:
        frontier = [child for pid in frontier for child in _children(pid)]
        found += frontier
    return found


def _descendants_by_scan(root: int) -> list[int]:
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        # The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
        parent_of[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parent_of.items() if parent in frontier]
        found += children
        frontier = children
    return found


def tree_rss_mb(root: int) -> int:
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            total += status_mb("VmRSS", pid)
        except OSError:
            continue
    return total


@dataclass
class Measured:
    returncode: int
    stdout: bytes
    stderr: bytes
    wall_s: float
    cpu_s: float  # user + sys of the child and of the descendants it waited for
    peak_rss_mb: int  # of the process tree


def run_measured(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `command`, sampling its process tree's RSS until it ends; output goes to temporary
    files so a large stdout never blocks the child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(SAMPLE_EVERY_S)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return Measured(
            returncode=proc.returncode,
            stdout=out.read(),
            stderr=err.read(),
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            # ru_maxrss (KB): the largest single process of the tree, a floor the sampling may miss.
            peak_rss_mb=max(peak, usage.ru_maxrss // 1024),
        )
