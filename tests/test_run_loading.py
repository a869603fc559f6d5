"""load_run on real recorded runs and on damaged or multi-rank run directories."""

import json
import math

import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from health_helpers import regression_batches, relu_mlp, train
from tracemortem import format as fmt
from tracemortem.errors import InputError
from tracemortem.load.discover import discover
from tracemortem.load.run import load_run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    model = relu_mlp(seed=0)
    train(
        run_dir,
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        regression_batches(30, 16, 1),
        torch.nn.functional.mse_loss,
        checkpoint_every=10,
        flush_every=10,
    )
    return run_dir


def test_facts_params_and_frames_of_a_recorded_run(recorded):
    run = load_run(discover(recorded))
    facts = run.facts
    assert facts["world_size"] == 1 and facts["status"] == "closed"
    assert facts["steps"] == {"first": 0, "last": 29, "count": 30}
    assert facts["torch_version"] == torch.__version__ and facts["devices"] == ["cpu"]
    assert {"steps", "grads", "checkpoints"} <= set(facts["recorded"])
    assert [c["step"] for c in facts["checkpoints"]] == [9, 19, 29]
    # backward order: the output layer's parameters are nearest the output
    order = dict(zip(run.params["name"], run.params["order"]))
    assert max(order["4.weight"], order["4.bias"]) < min(order["0.weight"], order["0.bias"])
    grads = run.grads.collect()
    assert grads.height == 30 * run.params.height
    assert grads.select("step", "param_id").is_duplicated().sum() == 0
    assert run.rank_summary() == [{"rank": 0, "steps": 30, "step_time_s": run.steps["duration_s"].median()}]
    assert run.notes == []


def test_corrupt_chunk_is_an_input_warning_and_the_rest_is_read(recorded, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    chunks = fmt.list_chunks(copy / "rank0" / "grads")
    assert len(chunks) >= 2
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])
    run = load_run(discover(copy))
    [note] = run.notes
    assert note.rule == "input-error" and note.severity == "warning" and chunks[0].name in note.message
    assert 0 < run.grads.collect().height < 30 * run.params.height


def test_running_manifest_without_end_is_reported_as_a_crash(recorded, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(status="running", ended=None)
    fmt.write_json_atomic(copy / "manifest.json", manifest)
    (copy / "rank0" / "meta.json").write_text("{not json")
    run = load_run(discover(copy))
    assert run.facts["status"] == "crashed"
    rules = sorted((n.title, n.severity, n.step) for n in run.notes)
    assert ("run ended without an end marker", "warning", 29) in rules
    assert ("unreadable meta.json", "warning", None) in rules
    assert run.params.height == 0 and run.steps.height == 30  # still analysable


def _grads(step, pid, norm, absmax, nonfinite, weight, update):
    return pa.table(
        {
            "step": step,
            "param_id": pid,
            "norm": norm,
            "absmax": absmax,
            "nonfinite": nonfinite,
            "weight_norm": weight,
            "update_norm": update,
        },
        schema=fmt.GRADS_SCHEMA,
    )


def _two_ranks(root, sharded):
    meta = {
        "world_size": 2,
        "grads_sharded": sharded,
        "params": [{"param_id": 0, "name": "w", "shape": [4], "numel": 4}],
    }
    for rank, (n, a, nf, u) in enumerate([(3.0, 1.0, 0, 0.5), (4.0, 2.0, 2, None)]):
        fmt.write_json_atomic(root / f"rank{rank}" / "meta.json", {**meta, "rank": rank})
        fmt.write_chunk(root / f"rank{rank}" / "grads", 0, _grads([0], [0], [n], [a], [nf], [6.0], [u]))
    fmt.write_json_atomic(root / "manifest.json", {"status": "closed", "world_size": 2})


def test_shards_merge_by_the_merge_rule(tmp_path):
    _two_ranks(tmp_path, sharded=True)
    row = load_run(discover(tmp_path)).grads.collect().row(0, named=True)
    assert row["norm"] == pytest.approx(5.0) and row["absmax"] == 2.0 and row["nonfinite"] == 2
    assert row["weight_norm"] == pytest.approx(math.hypot(6, 6)) and row["update_norm"] == pytest.approx(0.5)


def test_data_parallel_replicas_are_not_summed(tmp_path):
    _two_ranks(tmp_path, sharded=False)
    run = load_run(discover(tmp_path))
    assert run.grad_ranks == [0] and run.grads.collect()["norm"].to_list() == [3.0]


def test_directory_with_nothing_readable_is_an_input_error(tmp_path):
    (tmp_path / "rank0").mkdir()
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(InputError):
        load_run(discover(tmp_path))
