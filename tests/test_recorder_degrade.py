"""Inputs that used to make the Recorder raise or go quiet: each one now degrades (a value
dropped and counted, a parameter measured the slow way or listed as unmeasured) and training
is never touched. Real modules, real dtypes, a real unusable directory."""

from __future__ import annotations

import json
import math
import warnings

import polars as pl
import pytest
import torch

from recording_helpers import batches, mlp, read_grads, read_steps
from tracemortem.record import Recorder

RTOL = 1e-4


def _close(a: float, b: float, rtol: float = RTOL) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-7)


def _meta(run) -> dict:
    return json.loads((run / "rank0" / "meta.json").read_text())


def test_lazy_module_is_recorded_once_materialised(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)  # torch allows lazy params in an optimizer
    expected = []
    with Recorder(tmp_path, model, opt) as rec:  # before the first forward: shapes unknown
        for x, y in batches(4):
            torch.nn.functional.mse_loss(model(x), y).backward()
            expected.append([p.grad.norm().item() for p in model.parameters()])
            opt.step()
            opt.zero_grad()
            rec.step()
    grads = read_grads(tmp_path)
    for step, row in enumerate(expected):
        got = grads.filter(pl.col("step") == step)["norm"].to_list()
        assert all(_close(a, b) for a, b in zip(got, row, strict=True))
    params = _meta(tmp_path)["params"]
    assert params[0]["shape"] == [8, 8] and params[0]["numel"] == 64


@pytest.mark.parametrize("where", ["under-a-file", "read-only-fs"])
def test_unusable_run_directory_never_stops_training(tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("not a folder")
        run = tmp_path / "a-file" / "run"
    else:
        run = pytest.importorskip("pathlib").Path("/sys/tracemortem-test-run")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(run, model, opt, flush_every=2, checkpoint_every=2) as rec:
            for x, y in batches(6):
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
                rec.step()
    assert rec._step == 6
    assert rec.writer.lost_steps == 6
    assert len([w for w in caught if "tracemortem" in str(w.message)]) == 1
    assert not run.exists()


def test_a_bad_user_scalar_is_dropped_counted_and_warned_once(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    accs = [0.5, 0.6, "n/a", 0.7, ["x"], 0.8]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path, model, opt) as rec:
            for (x, y), acc in zip(batches(6), accs):
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                rec.step(loss=loss, acc=acc, tokens=128)
    steps = read_steps(tmp_path)
    assert steps["acc"].to_list() == [0.5, 0.6, None, 0.7, None, 0.8]
    assert steps["tokens"].to_list() == [128.0] * 6 and steps["loss"].null_count() == 0
    assert read_grads(tmp_path)["step"].n_unique() == 6  # recording went on
    assert _meta(tmp_path)["dropped_scalars"] == {"acc": 2}
    assert len([w for w in caught if "tracemortem" in str(w.message)]) == 1


def test_tensor_scalars_keep_float64_precision(tmp_path):
    model = mlp()
    values = [1 / 3, 1e-300, 2.0**53 - 1, -123456.789012345678]
    with Recorder(tmp_path, model) as rec:
        for v in values:
            rec.step(
                exact=torch.tensor(v, dtype=torch.float64),
                count=torch.tensor(2**40 + 1),
                vector=torch.tensor([v, v], dtype=torch.float64),
            )
    steps = read_steps(tmp_path)
    assert steps["exact"].to_list() == values
    assert steps["vector"].to_list() == values
    assert steps["count"].to_list() == [float(2**40 + 1)] * len(values)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_floating_dtypes_get_every_statistic(tmp_path, dtype):
    model = mlp().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    params = list(model.parameters())
    expected = []
    with Recorder(tmp_path, model, opt, update_every=1) as rec:
        for x, y in batches(3):
            torch.nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()
            before = [p.detach().clone() for p in params]
            stats = [(p.grad.double().norm().item(), p.grad.double().abs().max().item()) for p in params]
            opt.step()
            expected += [
                (n, a, (p.detach().double() - b.double()).norm().item()) for (n, a), p, b in zip(stats, params, before)
            ]
            opt.zero_grad()
            rec.step()
    grads = read_grads(tmp_path)
    rtol = 1e-4 if dtype == torch.float64 else 2e-2
    assert grads.height == len(expected)
    for row, (n, a, u) in zip(grads.iter_rows(named=True), expected):
        assert _close(row["norm"], n, rtol) and _close(row["absmax"], a, rtol) and _close(row["update_norm"], u, rtol)
        assert row["update_norm"] > 0


def test_complex_parameters_are_measured(tmp_path):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.complex64))
    model = torch.nn.ParameterList([weight])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    expected = []
    with Recorder(tmp_path, model, opt, update_every=1) as rec:
        for _ in range(3):
            (weight.abs() ** 2).sum().backward()
            before = weight.detach().clone()
            expected.append((weight.grad.norm().item(), weight.grad.abs().max().item()))
            opt.step()
            expected[-1] += ((weight.detach() - before).norm().item(),)
            opt.zero_grad()
            rec.step()
    grads = read_grads(tmp_path)
    for row, (n, a, u) in zip(grads.iter_rows(named=True), expected, strict=True):
        assert _close(row["norm"], n) and _close(row["absmax"], a) and _close(row["update_norm"], u)
    assert _meta(tmp_path)["unmeasured_params"] == {}


def test_sparse_gradients_are_measured(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(50, 8, sparse=True), "out": torch.nn.Linear(8, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=1e-1)
    expected = []
    with Recorder(tmp_path, model, opt) as rec:
        for step in range(4):
            ids = torch.tensor([step, step, 7, 11])  # a repeated index: uncoalesced sparse grad
            model["out"](model["emb"](ids)).sum().backward()
            dense = [p.grad.to_dense() for p in model.parameters()]
            expected.append([(g.norm().item(), g.abs().max().item()) for g in dense])
            opt.step()
            opt.zero_grad()
            rec.step()
    grads = read_grads(tmp_path)
    assert grads.height == 4 * 3
    for step, row in enumerate(expected):
        got = grads.filter(pl.col("step") == step).sort("param_id")
        for (n, a), gn, ga in zip(row, got["norm"], got["absmax"], strict=True):
            assert _close(gn, n) and _close(ga, a)
