"""The per-rank map and the reduce: merged summaries give what one process reading every rank
gives, the summaries hold no events, and the map reads one work item at a time.

Multi-rank folders are built from the real GPU traces of shared/real_traces (skipped when absent)
and from CPU traces recorded here; each copy states its own rank in `distributedInfo`, as every
rank's profiler writes it."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from scale_helpers import GPU_TRACES, as_rank, needs_real, rank_folder
from trace_helpers import REAL_TRACES, record_cpu_trace
from tracemortem.analysis import analyze
from tracemortem.load.discover import discover
from tracemortem.scale import LocalEngine, map_item, work_items
from tracemortem.scale.reduce import analyze_traces
from tracemortem.timing import quantiles


@pytest.fixture(scope="module")
def gpu_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four ranks of three different real GPU traces (one repeated)."""
    if not all((REAL_TRACES / t).is_file() for t in GPU_TRACES):
        pytest.skip("shared/real_traces not present")
    traces = [REAL_TRACES / t for t in GPU_TRACES]
    return rank_folder(tmp_path_factory.mktemp("gpu") / "run", [*traces, traces[1]])


@pytest.fixture(scope="module")
def cpu_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three ranks of CPU training traces recorded here (different step counts)."""
    base = tmp_path_factory.mktemp("cpu")
    traces = [record_cpu_trace(base / f"t{i}.json", steps=4 + i) for i in range(3)]
    return rank_folder(base / "run", traces)


def by_op(ops: pl.DataFrame) -> pl.DataFrame:
    """The op table in name order (its own order ties ops of equal self time)."""
    return ops.sort(pl.col("name").cast(pl.String), "input_dims", nulls_last=True)


def per_item(folder: Path, batch_bytes: int):
    items = work_items(discover(folder).trace_files, batch_bytes=batch_bytes)
    return items, [map_item(item) for item in items]


@needs_real
def test_one_rank_per_item_gives_the_tables_of_one_item_for_all(gpu_ranks: Path, monkeypatch):
    together = analyze(gpu_ranks)  # default budget: the four ranks are one item
    monkeypatch.setenv("TRACEMORTEM_BATCH_BYTES", "1")  # every rank its own item, then merged
    assert len(work_items(discover(gpu_ranks).trace_files)) == 4
    apart = analyze(gpu_ranks)
    assert apart.to_dict() == together.to_dict()
    assert_frame_equal(by_op(apart.ops), by_op(together.ops))
    assert_frame_equal(apart.kernels, together.kernels)
    assert_frame_equal(apart.step_times, together.step_times)
    assert [(t.rank, t.step, t.events.height) for t in apart.timelines] == [
        (t.rank, t.step, t.events.height) for t in together.timelines
    ]
    assert together.run.world_size == 4 and len(together.run.ranks) == 4


@needs_real
def test_one_rank_read_in_two_items_adds_its_launch_counts(tmp_path: Path, monkeypatch):
    """Files whose paths name no rank are items of their own: two sessions of one rank, read
    apart, give that rank's launch quantiles as when read together."""
    folder = tmp_path / "sessions"
    folder.mkdir()
    for name, trace in zip(("a.json", "b.json"), GPU_TRACES[1:]):
        (folder / name).write_bytes(as_rank(REAL_TRACES / trace, 0, 1))
    together = analyze(folder)
    monkeypatch.setenv("TRACEMORTEM_BATCH_BYTES", "1")
    assert len(work_items(discover(folder).trace_files)) == 2
    apart = analyze(folder)
    [rank] = together.to_dict()["run"]["ranks"]
    assert rank["launch"]["delay_p95_us"] is not None  # the counts were there to add
    assert apart.to_dict() == together.to_dict()


def test_cpu_ranks_merge_like_one_item(cpu_ranks: Path, monkeypatch):
    together = analyze(cpu_ranks)
    monkeypatch.setenv("TRACEMORTEM_BATCH_BYTES", "1")
    apart = analyze(cpu_ranks)
    assert apart.to_dict() == together.to_dict()
    assert_frame_equal(by_op(apart.ops), by_op(together.ops))
    assert [r["steps"] for r in together.to_dict()["run"]["ranks"]] == [2, 3, 4]


def test_summaries_hold_no_events(gpu_ranks: Path):
    _, summaries = per_item(gpu_ranks, batch_bytes=1)
    for summary in summaries:
        events = sum(summary.events.values())
        assert events > 1000
        tables = {name: value for name, value in vars(summary.timing).items() if isinstance(value, pl.DataFrame)}
        frames = [*tables.values(), summary.sessions, summary.unread, summary.devices]
        assert summary.slowest is not None and summary.slowest.events.height <= events
        for frame in frames:
            assert not {"ts", "pid", "tid"} <= set(frame.columns)  # no event table
        # the durations are counts (at most one row per call), the rest fewer rows than events
        durations = tables.pop("op_durations")
        assert durations.height <= durations["n"].sum() == summary.timing.ops["calls"].sum()
        rest = [*tables.values(), summary.sessions, summary.unread, summary.devices]
        assert sum(frame.height for frame in rest) < events / 1.5


def test_merged_quantiles_equal_polars_on_all_values():
    rng = random.Random(7)
    rows = [(rng.choice("abc"), rng.choice([None, "[1]"]), int(rng.lognormvariate(8, 2))) for _ in range(5000)]
    whole = pl.DataFrame(rows, schema={"name": pl.String, "dims": pl.String, "dur": pl.Int64}, orient="row")
    keys = ["name", "dims"]
    parts = [whole.slice(start, 700) for start in range(0, whole.height, 700)]
    counts = quantiles.add_counts(pl.concat([quantiles.value_counts(p, keys, "dur") for p in parts]), keys, "dur")
    expected = whole.group_by(keys).agg(
        pl.col("dur").median().alias("p50"),
        pl.col("dur").quantile(0.95, "nearest").alias("p95"),
        pl.col("dur").quantile(0.95, "linear").alias("p95_linear"),
    )
    merged = (
        quantiles.median(counts, keys, "dur", "p50")
        .join(quantiles.quantile(counts, keys, "dur", 0.95, "nearest", "p95"), on=keys, nulls_equal=True)
        .join(quantiles.quantile(counts, keys, "dur", 0.95, "linear", "p95_linear"), on=keys, nulls_equal=True)
    )
    assert_frame_equal(merged.sort(keys, nulls_last=True), expected.sort(keys, nulls_last=True))


def test_sketched_counts_stay_small_and_close():
    rng = random.Random(3)
    values = pl.DataFrame({"op": ["mm"] * 200_000, "dur": [int(rng.lognormvariate(10, 1.5)) for _ in range(200_000)]})
    counts = quantiles.value_counts(values, ["op"], "dur")
    assert counts.height > 50_000  # nanosecond durations: mostly distinct
    sketched = quantiles.sketch(counts, ["op"], "dur")
    assert sketched.height < 1_500 and sketched["n"].sum() == 200_000
    assert_frame_equal(quantiles.sketch(sketched, ["op"], "dur").sort("dur"), sketched.sort("dur"))
    for q in (0.5, 0.95):
        exact = values["dur"].quantile(q, "nearest")
        approx = quantiles.quantile(sketched, ["op"], "dur", q, "nearest", "q")["q"][0]
        assert abs(approx - exact) <= quantiles.RELATIVE_ACCURACY * exact + 1


def test_jobs_one_reads_one_item_at_a_time(cpu_ranks: Path, monkeypatch):
    """The map runs in this process in item order, each summary reduced before the next is read."""
    monkeypatch.setenv("TRACEMORTEM_BATCH_BYTES", "1")
    seen: list[str] = []
    analyze_traces(discover(cpu_ranks).trace_files, LocalEngine(jobs=1), progress=seen.append)
    assert seen[:3] == ["rank 1/3 read (rank 0)", "rank 2/3 read (rank 1)", "rank 3/3 read (rank 2)"]


def test_gzipped_ranks_are_batched_by_the_text_they_hold(cpu_ranks: Path, tmp_path: Path):
    """A .json.gz counts its uncompressed size: by its size on disk, all three ranks (each several
    times smaller gzipped) would be read as one item, holding several times the budget."""
    folder = tmp_path / "gz"
    folder.mkdir()
    texts = {path.name: path.read_bytes() for path in sorted(cpu_ranks.glob("rank*.json"))}
    for name, text in texts.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(text))
    largest = max(map(len, texts.values()))
    on_disk = sum(path.stat().st_size for path in folder.iterdir())
    assert on_disk < largest  # the three together on disk are less than one rank's text
    items = work_items(discover(folder).trace_files, batch_bytes=largest)
    assert [item.ranks for item in items] == [1, 1, 1]
    # what the items read is the same: one item or three, the JSON is the same
    env = {**os.environ, "TRACEMORTEM_BATCH_BYTES": str(largest)}
    assert _report(folder, "--jobs", "1", env=env).stdout == _report(folder, "--jobs", "1").stdout


def test_sizing_items_never_opens_a_fifo_for_reading(tmp_path: Path):
    """A FIFO named like a trace is sized 0 without blocking (reading it reports it)."""
    fifo = tmp_path / "rank0.json.gz"
    os.mkfifo(fifo)
    plain = tmp_path / "rank1.json"
    plain.write_bytes(b"{}")
    items = work_items({fifo: 0, plain: 1}, batch_bytes=1)
    assert [item.label for item in items] == ["rank 0", "rank 1"]


def _report(path: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "tracemortem.cli", "-v", "report", str(path), "--format", "json", "-o", "-"]
    return subprocess.run([*command, "--fail-on", "never", *options], capture_output=True, env=env, check=False)


def test_jobs_two_gives_the_json_of_jobs_one(cpu_ranks: Path):
    env = {**os.environ, "TRACEMORTEM_BATCH_BYTES": "1"}
    one, two = _report(cpu_ranks, "--jobs", "1", env=env), _report(cpu_ranks, "--jobs", "2", env=env)
    assert one.returncode == two.returncode == 0, two.stderr
    assert one.stdout == two.stdout
    progress = [line for line in two.stderr.decode().splitlines() if " read (rank " in line]
    assert [line.split(" read")[0] for line in progress] == [
        "tracemortem: rank 1/3",
        "tracemortem: rank 2/3",
        "tracemortem: rank 3/3",
    ]


def test_ranks_cut_off_alike_are_one_warning_with_their_ranks(cpu_ranks: Path, tmp_path: Path):
    """A job killed while every rank wrote its trace: one trace-truncated warning, not one per rank."""
    folder = tmp_path / "killed"
    folder.mkdir()
    for trace in sorted(cpu_ranks.iterdir()):
        text = trace.read_bytes()
        (folder / trace.name).write_bytes(text[: len(text) * 3 // 4])
    done = _report(folder, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    [cut] = [f for f in json.loads(done.stdout)["findings"] if f["rule"] == "trace-truncated"]
    assert cut["rank"] is None and cut["evidence"]["ranks"] == [0, 1, 2]
    assert cut["evidence"]["events_recovered"] > 0 and cut["evidence"]["file"].startswith("rank")


def test_an_unreadable_rank_is_a_note_not_the_end(cpu_ranks: Path, tmp_path: Path):
    folder = tmp_path / "run"
    folder.mkdir()
    for trace in sorted(cpu_ranks.iterdir()):
        (folder / trace.name).write_bytes(trace.read_bytes())
    (folder / "rank3.json").write_bytes(b'{"traceEvents": [{"ph": "X", "name": ')  # cut off at once
    (folder / "rank4.json").write_bytes(b"\x00\x01 not json")
    done = _report(folder, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    skipped = [f for f in doc["findings"] if f["rule"] == "input-error"]
    assert {"rank3.json", "rank4.json"} <= {Path(f["message"].split(":")[0]).name for f in skipped}
    ranks = [r["rank"] for r in doc["run"]["ranks"]]
    assert ranks[:3] == [0, 1, 2] and 4 not in ranks  # a cut-off file's rank is still listed


def test_no_readable_rank_is_exit_3(tmp_path: Path):
    for rank in range(2):
        (tmp_path / f"rank{rank}.json").write_bytes(b"garbage")
    done = _report(tmp_path, "--jobs", "2")
    assert done.returncode == 3
    assert "tracemortem: error: no readable trace among 2 files" in done.stderr.decode().strip().splitlines()[-1]


def test_engine_ray_without_ray_installed_is_one_line_and_exit_2(cpu_ranks: Path):
    """Ray missing from the interpreter (its import made to fail, as on a machine without it)."""
    hide_ray = "import sys; sys.modules['ray'] = None; from tracemortem.cli import main; main()"
    command = [sys.executable, "-c", hide_ray, "report", str(cpu_ranks), "--format", "json", "-o", "-"]
    done = subprocess.run([*command, "--engine", "ray"], capture_output=True, check=False)
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "tracemortem: error: --engine ray needs Ray: pip install 'tracemortem[ray]'"
    ]
