"""load_traces: real CPU traces recorded here, real GPU traces from shared/real_traces (skipped when
absent), truncation, hostile input, and a property test that only InputError ever escapes."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trace_helpers import REAL_TRACES
from tracemortem.errors import InputError
from tracemortem.load import chrome
from tracemortem.load.traces import load_traces


@pytest.fixture(scope="session")
def cpu_doc(cpu_trace) -> dict:
    return json.loads(cpu_trace.read_text())


def _complete(doc) -> list[dict]:
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    return [e for e in events if e.get("ph") == "X"]


def _write(path: Path, doc, gz: bool = False) -> Path:
    data = json.dumps(doc, indent=1).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_counts_and_ns_normalisation(cpu_trace, cpu_doc):
    ts = load_traces({cpu_trace: None})
    expected = _complete(cpu_doc)
    assert ts.events.height == len(expected)
    assert ts.events["name"].dtype == pl.Categorical and ts.events["ts"].dtype == pl.Int64
    base = cpu_doc["baseTimeNanoseconds"]
    for row, event in zip(ts.events.head(50).iter_rows(named=True), expected[:50]):
        assert row["name"] == event["name"]
        assert row["ts"] == base + round(event["ts"] * 1000)
        assert row["dur"] == round(event["dur"] * 1000)
    assert ts.ranks[0]["base_time_ns"] == base
    assert ts.ranks[0]["hostname"] == cpu_doc.get("host_name")
    assert not ts.notes
    assert ts.events.filter(pl.col("input_dims").is_not_null()).height > 0


def test_profiler_steps_and_step_assignment(cpu_trace, cpu_doc):
    ts = load_traces({cpu_trace: None})
    spans = [e for e in _complete(cpu_doc) if e["name"].startswith("ProfilerStep#")]
    assert sorted(ts.profiler_steps["step"].to_list()) == sorted(int(e["name"].split("#")[1]) for e in spans)
    ops = ts.events.filter(pl.col("name") == "aten::addmm")
    assert ops.height > 0 and ops["step"].null_count() == 0
    for row in ops.iter_rows(named=True):
        span = ts.profiler_steps.filter(pl.col("step") == row["step"]).row(0, named=True)
        assert span["ts"] <= row["ts"] < span["ts"] + span["dur"]


def test_gzip_and_small_chunks_give_the_same_frames(cpu_trace, tmp_path, monkeypatch):
    plain = load_traces({cpu_trace: None})
    gz = tmp_path / "t.json.gz"
    gz.write_bytes(gzip.compress(cpu_trace.read_bytes()))
    monkeypatch.setattr(chrome, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(chrome, "_READ_BYTES", 1000)
    chunked = load_traces({gz: None})
    assert chunked.events.equals(plain.events)
    assert chunked.profiler_steps.equals(plain.profiler_steps)


def test_rank_from_distributed_info_beats_the_file_name(cpu_doc, tmp_path):
    with_info = dict(cpu_doc, distributedInfo={"backend": "gloo", "rank": 5, "world_size": 8})
    a = _write(tmp_path / "rank-2.json", with_info)
    b = _write(tmp_path / "rank-3.json", cpu_doc)
    # distributedInfo written after traceEvents (Kineto's on-demand path)
    after = {k: v for k, v in cpu_doc.items() if k != "distributedInfo"}
    after["distributedInfo"] = {"rank": 7}
    c = _write(tmp_path / "c.json", after)
    ts = load_traces({a: 2, b: 3, c: None})
    assert set(ts.ranks) == {5, 3, 7}
    assert ts.ranks[5]["distributedInfo"]["world_size"] == 8
    assert set(ts.events["rank"].unique().to_list()) == {5, 3, 7}


def test_files_of_one_rank_are_concatenated(cpu_trace, tmp_path):
    copy = tmp_path / "second.json"
    copy.write_bytes(cpu_trace.read_bytes())
    ts = load_traces({cpu_trace: None, copy: None})
    assert set(ts.ranks) == {0} and len(ts.ranks[0]["files"]) == 2
    assert ts.events.height == 2 * load_traces({cpu_trace: None}).events.height


def test_legacy_bare_array_string_pids_and_async_flows(tmp_path):
    events = [
        {
            "ph": "X",
            "cat": "Operator",
            "name": "ProfilerStep#3",
            "pid": "CPU functions",
            "tid": "1",
            "ts": 1000,
            "dur": 100,
        },
        {
            "ph": "X",
            "cat": "Operator",
            "name": "aten::mm",
            "pid": "CPU functions",
            "tid": "1",
            "ts": 1010,
            "dur": 50,
            "args": {"external id": 9},
        },
        {
            "ph": "X",
            "cat": "Runtime",
            "name": "cudaLaunchKernel",
            "pid": "CPU functions",
            "tid": "1",
            "ts": 1020,
            "dur": 5,
            "args": {"external id": 9},
        },
        {"ph": "s", "cat": "async", "name": "async", "id": 77, "pid": "CPU functions", "tid": "1", "ts": 1020},
        {
            "ph": "X",
            "cat": "Kernel",
            "name": "gemm",
            "pid": 0,
            "tid": "stream 7",
            "ts": 1030,
            "dur": 20,
            "args": {"external id": 9},
        },
        {"ph": "f", "cat": "async", "name": "async", "id": 77, "pid": 0, "tid": "stream 7", "ts": 1030, "bp": "e"},
    ]
    ts = load_traces({_write(tmp_path / "old.json", events): None})
    assert ts.events.height == 4 and ts.events["ts"][0] == 1_000_000
    kernel = ts.gpu.row(0, named=True)
    assert kernel["kind"] == "kernel" and kernel["stream"] == 7 and kernel["correlation"] == 77
    assert kernel["launch_name"] == "cudaLaunchKernel" and kernel["op"] == "aten::mm" and kernel["step"] == 3


def test_sync_events_take_stream_from_args(tmp_path):
    events = [
        {
            "ph": "X",
            "cat": "cuda_sync",
            "name": "Stream Sync",
            "pid": 0,
            "tid": 1000007,
            "ts": 5,
            "dur": 1,
            "args": {"stream": 7},
        },
        {"ph": "X", "cat": "cuda_sync", "name": "Stream Sync", "pid": 0, "tid": 1000009, "ts": 6, "dur": 1},
    ]
    ts = load_traces({_write(tmp_path / "s.json", {"traceEvents": events}): None})
    assert ts.events["stream"].to_list() == [7, 9]


def test_op_of_a_launch_without_named_op_is_the_innermost_enclosing_one(tmp_path):
    def op(name, ts, dur, tid=1):
        return {
            "ph": "X",
            "cat": "cpu_op",
            "name": name,
            "pid": 1,
            "tid": tid,
            "ts": ts,
            "dur": dur,
            "args": {"External id": 1},
        }

    def launch(ts, corr, tid=1):
        return [
            {
                "ph": "X",
                "cat": "cuda_runtime",
                "name": "cudaLaunchKernel",
                "pid": 1,
                "tid": tid,
                "ts": ts,
                "dur": 1,
                "args": {"External id": 900 + corr, "correlation": corr},
            },
            {
                "ph": "X",
                "cat": "kernel",
                "name": f"k{corr}",
                "pid": 0,
                "tid": 7,
                "ts": ts + 5,
                "dur": 1,
                "args": {"External id": 900 + corr, "correlation": corr},
            },
        ]

    events = [
        op("outer", 0, 100),
        op("early_child", 10, 10),
        op("inner", 30, 5),
        op("other_thread", 40, 50, tid=2),
        op("tie_outer", 200, 30),
        op("tie_inner", 200, 10),
        *launch(50, 1),  # after both children ended: outer
        *launch(32, 2),  # inside inner
        *launch(205, 3),  # equal starts: the shorter one is inside
        *launch(150, 4),  # between ops: none
    ]
    ts = load_traces({_write(tmp_path / "nest.json", {"traceEvents": events}): None})
    ops = dict(ts.gpu.select(pl.col("name").cast(pl.String), pl.col("op").cast(pl.String)).iter_rows())
    assert ops == {"k1": "outer", "k2": "inner", "k3": "tie_inner", "k4": None}


# --- real GPU traces ------------------------------------------------------------------------

needs_real = pytest.mark.skipif(not REAL_TRACES.is_dir(), reason="shared/real_traces not present")


@needs_real
@pytest.mark.parametrize("folder", ["nccl_a100", "v100_single", "two_rank_sampled", "amd_mi250", "diff_control_a100"])
def test_real_gpu_traces_link_kernels_to_launches_and_ops(folder):
    files = sorted((REAL_TRACES / folder).glob("*.json.gz"))
    ts = load_traces({f: None for f in files})
    expected = sum(len(_complete(json.loads(gzip.decompress(f.read_bytes())))) for f in files)
    assert ts.events.height == expected
    assert ts.gpu.height > 0
    assert ts.gpu["launch_name"].is_not_null().mean() >= 0.99
    # Newer traces name the op through External id; the 2022 A100 trace partly needs containment.
    assert ts.gpu["op"].is_not_null().mean() >= 0.95
    assert ts.gpu["step"].is_not_null().mean() >= 0.9
    assert not ts.notes


@needs_real
def test_2022_trace_ops_found_by_containment_are_the_innermost():
    # External ids of launches there equal correlation ids, so no op is named by id: every op
    # comes from time containment on the launching thread.
    files = sorted((REAL_TRACES / "diff_test_v100").glob("*.json.gz"))
    ts = load_traces({f: None for f in files})
    launched = ts.gpu.filter(pl.col("launch_ts").is_not_null())
    assert launched.height > 0.9 * ts.gpu.height
    assert launched["op"].is_not_null().mean() >= 0.97
    ops = ts.events.filter(pl.col("cat") == "cpu_op").select(
        "pid", "tid", "ts", end=pl.col("ts") + pl.col("dur"), name=pl.col("name").cast(pl.String)
    )
    runtime = ts.events.filter(pl.col("cat") == "cuda_runtime").select("correlation", "pid", "tid")
    sample = launched.join(runtime, on="correlation").sample(300, seed=3)
    for row in sample.iter_rows(named=True):
        t = row["launch_ts"]
        enclosing = ops.filter(
            (pl.col("pid") == row["pid"]) & (pl.col("tid") == row["tid"]) & (pl.col("ts") <= t) & (pl.col("end") >= t)
        ).sort(["ts", "end"], descending=[True, False])
        assert row["op"] == (enclosing["name"][0] if enclosing.height else None)


@needs_real
def test_real_two_ranks_from_distributed_info():
    files = sorted((REAL_TRACES / "two_rank_sampled").glob("*.json.gz"))
    ts = load_traces({f: None for f in files})
    assert set(ts.ranks) == {0, 1}
    assert ts.profiler_steps.group_by("rank").len().sort("rank")["len"].to_list() == [2, 2]


# --- truncation -----------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.77, 0.999])
@pytest.mark.parametrize("gz", [False, True])
def test_truncated_trace_recovers_a_prefix(cpu_trace, tmp_path, fraction, gz):
    full = load_traces({cpu_trace: None})
    data = cpu_trace.read_bytes()
    if gz:
        packed = gzip.compress(data)
        cut = tmp_path / "cut.json.gz"
        cut.write_bytes(packed[: int(len(packed) * fraction)])
    else:
        cut = tmp_path / "cut.json"
        cut.write_bytes(data[: int(len(data) * fraction)])
    ts = load_traces({cut: None})
    n = ts.events.height
    assert 0 < n <= full.events.height
    if fraction < 0.9:  # the last events of a Kineto trace are metadata, not complete events
        assert n < full.events.height
    assert ts.events["name"].to_list() == full.events["name"].head(n).to_list()
    notes = [f for f in ts.notes if f.rule == "trace-truncated"]
    assert len(notes) == 1 and notes[0].severity == "warning"
    assert notes[0].evidence["events_recovered"] == n


def test_cut_after_the_event_list_keeps_every_event(cpu_trace, tmp_path):
    data = cpu_trace.read_bytes()
    cut = tmp_path / "cut.json"
    cut.write_bytes(data[: data.rindex(b"]") + 5])
    ts = load_traces({cut: None})
    assert ts.events.height == load_traces({cpu_trace: None}).events.height
    assert [f.rule for f in ts.notes] == ["trace-truncated"]


# --- hostile input --------------------------------------------------------------------------

HOSTILE = {
    "random.json": os.urandom(5000),
    "empty.json": b"",
    "spaces.json": b"   \n",
    "number.json": b"42",
    "events_not_list.json": b'{"traceEvents": 5}',
    "no_events.json": b'{"schemaVersion": 1}',
    "deep.json": b'{"traceEvents": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    "deep_head.json": b'{"x": ' + b"[" * 100_000,
    "random.json.gz": gzip.compress(os.urandom(3000)),
    "fake.json.gz": b"\x1f\x8b" + os.urandom(200),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_raises_only_input_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(HOSTILE[name])
    try:
        ts = load_traces({path: None})
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert ts.events.height == 0


def test_bad_events_are_skipped_with_a_warning(tmp_path):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "good", "pid": 1, "tid": 1, "ts": 10, "dur": 5},
        {"ph": "X", "cat": "cpu_op", "name": "ts-string", "pid": 1, "tid": 1, "ts": "10", "dur": 5},
        {"ph": "X", "cat": "cpu_op", "name": "no-dur", "pid": 1, "tid": 1, "ts": 10},
        {
            "ph": "X",
            "cat": "cpu_op",
            "name": "huge",
            "pid": 1,
            "tid": 1,
            "ts": 10**30,
            "dur": 1,
            "args": {"External id": 10**40},
        },
        {
            "ph": "X",
            "cat": "cpu_op",
            "name": "good2",
            "pid": 1,
            "tid": 1,
            "ts": 20,
            "dur": 5,
            "args": {"Comms Id": 10**30},
        },
    ]
    ts = load_traces({_write(tmp_path / "bad.json", {"traceEvents": events}): None})
    assert ts.events["name"].to_list() == ["good", "good2"]
    (note,) = ts.notes
    assert note.rule == "input-error" and note.evidence["events_skipped"] == 3


def test_unescaped_quote_damages_only_that_event(tmp_path):
    good = ",\n".join(
        json.dumps({"ph": "X", "cat": "cpu_op", "name": f"op{i}", "pid": 1, "tid": 1, "ts": i, "dur": 1})
        for i in range(5)
    )
    bad = '{"ph": "X", "cat": "python_function", "name": "f("x")", "pid": 1, "tid": 1, "ts": 9, "dur": 1}'
    path = tmp_path / "q.json"
    path.write_text('{"traceEvents": [' + good + ",\n" + bad + ",\n" + good + "]}")
    ts = load_traces({path: None})
    assert ts.events.height == 10
    assert any(f.rule == "input-error" for f in ts.notes)


def test_gzip_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEMORTEM_MAX_TRACE_BYTES", str(10 * 2**20))
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = z.compress(b'{"traceEvents": [' + b" " * (50 * 2**20)) + z.flush()
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(bomb)
    with pytest.raises(InputError, match="larger than"):
        load_traces({path: None})


def test_one_bad_file_among_good_ones_is_a_note(cpu_trace, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00garbage")
    ts = load_traces({cpu_trace: 0, bad: 1})
    assert ts.events.height > 0
    assert [f.rule for f in ts.notes] == ["input-error"]


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5)
)
_event = st.fixed_dictionaries(
    {},
    optional={
        "ph": st.sampled_from(["X", "s", "f", "i", "M", "B", 5]),
        "cat": st.one_of(
            st.sampled_from(["cpu_op", "kernel", "cuda_runtime", "ac2g", "gpu_memcpy", "Kernel"]), _scalar
        ),
        "name": st.one_of(st.sampled_from(["ProfilerStep#1", "ProfilerStep#x", "aten::mm", "<script>"]), _scalar),
        "pid": _scalar,
        "tid": _scalar,
        "ts": _scalar,
        "dur": _scalar,
        "id": _scalar,
        "args": st.one_of(
            _scalar,
            st.fixed_dictionaries(
                {},
                optional={
                    "External id": _scalar,
                    "correlation": _scalar,
                    "stream": _scalar,
                    "Input Dims": st.lists(st.lists(_scalar)),
                },
            ),
        ),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(st.one_of(_event, _scalar), max_size=12), wrap=st.booleans(), cut=st.integers(0, 400), base=_scalar
)
def test_property_only_input_error_escapes(tmp_path, events, wrap, cut, base):
    doc = {"baseTimeNanoseconds": base, "traceEvents": events, "distributedInfo": {"rank": base}} if wrap else events
    data = json.dumps(doc).encode()
    path = tmp_path / "p.json"
    path.write_bytes(data[: len(data) - cut] if cut < len(data) else data)
    try:
        ts = load_traces({path: None})
    except InputError:
        return
    assert ts.events.height <= sum(1 for e in events if isinstance(e, dict))


# --- parallel decoding (worker processes) ---------------------------------------------------


def _frames(files) -> tuple:
    ts = load_traces(files)
    return ts.events, ts.gpu, ts.profiler_steps, [(f.rule, f.message) for f in ts.notes]


def _same(a, b) -> bool:
    return all(x.equals(y) for x, y in zip(a[:3], b[:3])) and a[3] == b[3]


def test_parallel_and_in_process_paths_give_identical_frames(cpu_trace, tmp_path, monkeypatch):
    data = cpu_trace.read_bytes()
    gz = tmp_path / "t.json.gz"
    gz.write_bytes(gzip.compress(data))
    cut = tmp_path / "cut.json"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    # A boundary-like text inside a name, and an event that is not JSON: the workers' cuts
    # disagree with the predicted ones and those chunks are decoded in the parent.
    events = [
        {
            "ph": "X",
            "cat": "cpu_op",
            "name": f"op{i}" + ("},{" if i % 7 == 0 else ""),
            "pid": 1,
            "tid": 1,
            "ts": i,
            "dur": 1,
        }
        for i in range(3000)
    ]
    text = json.dumps({"traceEvents": events})
    tricky = tmp_path / "tricky.json"
    tricky.write_text(text.replace('"name": "op1500"', '"name": "op"1500"'))
    monkeypatch.setattr(chrome, "CHUNK_BYTES", 8192)
    monkeypatch.setattr(chrome, "_READ_BYTES", 3000)
    files = [{cpu_trace: None}, {gz: None}, {cut: None}, {tricky: None}, {cpu_trace: 0, gz: 1}]
    serial = [_frames(f) for f in files]
    monkeypatch.setattr(chrome, "PARALLEL_MIN_BYTES", 0)
    for f, expected in zip(files, serial):
        assert _same(_frames(f), expected), f
    assert serial[3][0].height == 2999


def test_workers_that_cannot_start_fall_back_to_in_process(cpu_trace, monkeypatch):
    expected = _frames({cpu_trace: None})
    monkeypatch.setattr(chrome, "CHUNK_BYTES", 8192)
    monkeypatch.setattr(chrome, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("multiprocessing.spawn._python_exe", "/nonexistent/python")  # what spawn starts
    assert _same(_frames({cpu_trace: None}), expected)


def test_rank_facts_keep_distributed_info_scalars_not_the_rank_lists(cpu_trace, tmp_path):
    # pg_config lists every rank of every process group: kept per rank, it grows with ranks².
    doc = json.loads(cpu_trace.read_bytes())
    groups = [{"pg_name": "0", "backend": "nccl", "pg_size": 4096, "ranks": list(range(4096))}]
    doc["distributedInfo"] = {"backend": "nccl", "rank": 3, "world_size": 4096, "pg_count": 1, "pg_config": groups}
    traces = load_traces({_write(tmp_path / "rank3.json", doc): None})
    info = traces.ranks[3]["distributedInfo"]
    assert info == {"backend": "nccl", "rank": 3, "world_size": 4096, "pg_count": 1}
    assert traces.events.height == load_traces({cpu_trace: 3}).events.height
