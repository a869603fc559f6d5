"""What the analyzer says about every real trace folder must be possible and true: no crash, no
negative time, no share above 100 %, the world size the traces state, device activity it does not
read named, and memory-timeline exports refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")
from torch.profiler import ProfilerActivity, profile

from cli_helpers import cli
from trace_helpers import REAL_TRACES
from tracemortem.analysis import analyze

needs_real = pytest.mark.skipif(not REAL_TRACES.is_dir(), reason="shared/real_traces not present")


def real_folders() -> list[Path]:
    if not REAL_TRACES.is_dir():
        return []
    top = [p for p in sorted(REAL_TRACES.iterdir()) if p.is_dir() and p.name != "more"]
    return top + sorted(p for p in (REAL_TRACES / "more").iterdir() if p.is_dir())


def numbers(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


@needs_real
@pytest.mark.slow
@pytest.mark.parametrize("folder", real_folders(), ids=lambda p: p.name)
def test_every_number_is_possible(folder):
    analysis = analyze(folder)
    doc = analysis.to_dict()
    for path, value in numbers(doc):
        leaf = path.rsplit(".", 1)[-1]
        if leaf.endswith(("_us", "_ms", "_ns", "_s")) and "skew" not in leaf:
            assert value >= 0, (path, value)
        if "share" in leaf or leaf.endswith("_fraction"):
            assert 0 <= value <= 1, (path, value)
    for entry in doc["run"]["ranks"]:
        gpu = entry.get("gpu")
        if gpu:
            assert gpu["idle_us"] + gpu["compute_us"] + gpu["non_compute_us"] == pytest.approx(gpu["span_us"], abs=1)
    assert analysis.kernels.is_empty() or (analysis.kernels["hta_sum_us"].fill_null(0) >= 0).all()


@needs_real
@pytest.mark.parametrize(("folder", "world_size"), [("cpu_only", 300), ("two_rank_sampled", 128), ("nccl_a100", 2)])
def test_world_size_is_the_traces_own(folder, world_size):
    assert analyze(REAL_TRACES / folder).run.to_dict()["world_size"] == world_size


@needs_real
def test_mtia_device_activity_is_named_not_skipped():
    findings = analyze(REAL_TRACES / "more" / "mtia_single_rank").findings
    [note] = [f for f in findings if f.rule == "trace-unsupported"]
    assert note.evidence["categories"] == {"mtia_ccp_events": 25_814}
    assert "mtia_ccp_events" in note.message and note.severity == "warning"


@needs_real
def test_gpu_user_annotation_step_mirrors_are_not_steps_or_gpu_work():
    """The ROCm trace marks each ProfilerStep on the GPU too (gpu_user_annotation)."""
    from tracemortem.load.traces import load_traces

    [path] = (REAL_TRACES / "more" / "amd_trace").glob("*.json*")
    traces = load_traces({path: None})
    mirrors = traces.events.filter(
        (pl.col("cat") == "gpu_user_annotation") & pl.col("name").cast(pl.String).str.starts_with("ProfilerStep#")
    )
    cpu_steps = traces.events.filter(
        (pl.col("cat") == "user_annotation") & pl.col("name").cast(pl.String).str.starts_with("ProfilerStep#")
    )
    assert mirrors.height > 0
    assert traces.profiler_steps.height == cpu_steps.height
    assert traces.profiler_steps["ts"].sort().to_list() == cpu_steps["ts"].sort().to_list()
    assert traces.gpu.filter(pl.col("name").cast(pl.String).str.starts_with("ProfilerStep#")).is_empty()


def test_memory_timeline_export_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(16, 16)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        model(torch.randn(8, 16)).sum().backward()
    for name in ("memory.json", "memory.raw.json.gz"):
        prof.export_memory_timeline(str(tmp_path / name), device="cpu")
        assert json.loads((tmp_path / "memory.json").read_text())  # a real export, read back as JSON
        result = cli("summary", str(tmp_path / name))
        assert result.code == 3
        [line] = result.stderr.strip().splitlines()
        assert "memory timeline" in line and "cut off" not in line
