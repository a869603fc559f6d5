"""`--engine ray`: the per-rank map as tasks on a real local Ray instance (two CPUs, on 127.0.0.1,
no dashboard), compared with the local engine on a multi-rank folder of real GPU traces and on CPU
traces recorded here. Skipped where ray is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scale_helpers import GPU_TRACES, rank_folder
from trace_helpers import REAL_TRACES, record_cpu_trace
from tracemortem.analysis import analyze
from tracemortem.scale import LocalEngine, RayEngine

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # starting Ray takes tens of seconds on a loaded machine


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init installs its own and leaves it after shutdown
    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("ray")
    cpu = [record_cpu_trace(base / f"t{i}.json", steps=4 + i) for i in range(2)]
    found = [rank_folder(base / "cpu", cpu)]
    if all((REAL_TRACES / t).is_file() for t in GPU_TRACES):
        found.append(rank_folder(base / "gpu", [REAL_TRACES / t for t in GPU_TRACES]))
    return found


def test_ray_tasks_give_the_local_analysis(ray_address: str, folders: list[Path], monkeypatch):
    monkeypatch.setenv("TRACEMORTEM_BATCH_BYTES", "1")  # one task per rank
    for folder in folders:
        local = analyze(folder, engine=LocalEngine(jobs=1))
        on_ray = analyze(folder, engine=RayEngine())  # the instance this process started
        assert on_ray.to_dict() == local.to_dict()
        assert [(t.rank, t.step) for t in on_ray.timelines] == [(t.rank, t.step) for t in local.timelines]


def _report(folder: Path, *options: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "tracemortem.cli", "report", str(folder), "--format", "json", "-o", "-"]
    env = {**os.environ, "TRACEMORTEM_BATCH_BYTES": "1"}
    return subprocess.run([*command, "--fail-on", "never", *options], capture_output=True, env=env, check=False)


def test_cli_on_a_ray_address_writes_the_local_json(ray_address: str, folders: list[Path]):
    folder = folders[-1]  # the real GPU ranks where present
    local = _report(folder, "--jobs", "2")
    on_ray = _report(folder, "--engine", "ray", "--address", ray_address)
    assert local.returncode == on_ray.returncode == 0, on_ray.stderr.decode()[-2000:]
    assert on_ray.stdout == local.stdout
    doc = json.loads(on_ray.stdout)
    assert doc["run"]["world_size"] == len(doc["run"]["ranks"]) > 1


def test_an_address_nothing_listens_on_is_one_line_and_exit_2(folders: list[Path]):
    done = _report(folders[0], "--engine", "ray", "--address", "127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "tracemortem: error: cannot reach Ray at 127.0.0.1:9: Connection refused"
    ]
