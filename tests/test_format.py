"""The shared run-directory module: atomic chunks, skipping corrupt ones, refusing escapes."""

import json

import pyarrow as pa
import pytest

from tracemortem import format as fmt
from tracemortem.errors import InputError


def _grads(n: int) -> pa.Table:
    return pa.table(
        {
            "step": pa.array(range(n), pa.int64()),
            "param_id": pa.array([0] * n, pa.int32()),
            "norm": pa.array([1.5] * n, pa.float32()),
            "absmax": pa.array([0.5] * n, pa.float32()),
            "nonfinite": pa.array([0] * n, pa.int64()),
            "weight_norm": pa.array([2.0] * n, pa.float32()),
            "update_norm": pa.array([None] * n, pa.float32()),
        },
        schema=fmt.GRADS_SCHEMA,
    )


def test_chunks_are_numbered_written_whole_and_read_in_order(tmp_path):
    folder = tmp_path / "grads"
    assert fmt.next_chunk_index(folder) == 0
    fmt.write_chunk(folder, 0, _grads(3))
    fmt.write_chunk(folder, fmt.next_chunk_index(folder), _grads(5))
    (folder / ".part-000002.parquet.abc.tmp").write_bytes(b"half a chunk")  # a killed write
    chunks = fmt.readable_chunks(folder, fmt.GRADS_SCHEMA)
    assert [p.name for p in chunks.paths] == ["part-000000.parquet", "part-000001.parquet"]
    assert chunks.skipped == []
    assert fmt.next_chunk_index(folder) == 2


def test_corrupt_chunk_is_skipped_with_a_reason(tmp_path):
    folder = tmp_path / "grads"
    fmt.write_chunk(folder, 0, _grads(3))
    good = fmt.chunk_path(folder, 0).read_bytes()
    fmt.chunk_path(folder, 1).write_bytes(good[: len(good) // 2])  # footer cut off
    fmt.chunk_path(folder, 2).write_bytes(b"\x00" * 64)
    chunks = fmt.readable_chunks(folder, fmt.GRADS_SCHEMA)
    assert [p.name for p in chunks.paths] == ["part-000000.parquet"]
    assert [p.name for p, _ in chunks.skipped] == ["part-000001.parquet", "part-000002.parquet"]
    assert all("Parquet" in why for _, why in chunks.skipped)


def test_grads_rows_are_compact_on_disk(tmp_path):
    # Realistic values: smooth norms per parameter; the format's goal is <= 16 bytes per row.
    import numpy as np

    steps, params = 500, 100
    rng = np.random.default_rng(0)
    base = rng.lognormal(size=params).astype("float32")
    drift = np.exp(np.cumsum(rng.normal(0, 0.01, (steps, params)), axis=0)).astype("float32")
    norm = (base * drift).ravel()
    table = pa.table(
        {
            "step": np.repeat(np.arange(steps), params).astype("int64"),
            "param_id": np.tile(np.arange(params), steps).astype("int32"),
            "norm": norm,
            "absmax": norm / 7,
            "nonfinite": np.zeros(steps * params, "int64"),
            "weight_norm": np.tile(base * 10, steps),
            "update_norm": pa.nulls(steps * params, pa.float32()),
        },
        schema=fmt.GRADS_SCHEMA,
    )
    path = fmt.write_chunk(tmp_path, 0, table)
    assert path.stat().st_size / (steps * params) <= 16


def test_json_is_written_atomically_and_read_back(tmp_path):
    target = tmp_path / "manifest.json"
    fmt.write_json_atomic(target, {"status": "running", "format": 1})
    fmt.write_json_atomic(target, {"status": "closed", "format": 1})
    assert fmt.read_json(target, "manifest") == {"format": 1, "status": "closed"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b"\xff\xfe", b"[" * 100000])
def test_bad_json_is_one_input_error(tmp_path, content):
    target = tmp_path / "meta.json"
    target.write_bytes(content)
    with pytest.raises(InputError, match="meta"):
        fmt.read_json(target, "meta")


def test_oversized_json_is_refused_without_parsing(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_text(json.dumps({"x": "y" * 100}))
    monkeypatch.setenv("TRACEMORTEM_MAX_JSON_BYTES", "50")
    with pytest.raises(InputError, match="limit"):
        fmt.read_json(target, "manifest")


@pytest.mark.parametrize("relative", ["../outside", "/etc/passwd", "rank0/../../x"])
def test_paths_outside_the_run_directory_are_refused(tmp_path, relative):
    with pytest.raises(InputError, match="outside"):
        fmt.inside(tmp_path, relative)


def test_paths_inside_are_resolved(tmp_path):
    assert fmt.inside(tmp_path, "rank0/snapshot") == (tmp_path / "rank0" / "snapshot").resolve()


def test_run_and_rank_directories_are_recognised(tmp_path):
    run = fmt.RunPaths(tmp_path / "run")
    rank = run.rank(3)
    rank.steps.mkdir(parents=True)
    (run.root / "rank_notes").mkdir()
    assert run.ranks() == [3]
    assert fmt.is_run_dir(run.root) and fmt.is_rank_dir(rank.root)
    assert rank.rank == 3
    assert rank.checkpoint(12).name == "step-00000012.pt"


def test_written_files_get_the_ordinary_mode_not_private_temp_mode(tmp_path):
    import os
    import stat

    fmt.write_json_atomic(tmp_path / "manifest.json", {"a": 1})
    chunk = fmt.write_chunk(tmp_path / "grads", 0, _grads(2))
    expected = 0o666 & ~fmt._umask()
    for path in (tmp_path / "manifest.json", chunk):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected
