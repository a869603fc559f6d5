"""The Recorder in every stepping style a training loop uses: hooks, `optimizer.step(closure)`,
no optimizer (a manual update), framework wrappers, several optimizers, param groups added
later and gradient accumulation. Ground truth (the first non-finite step, the weights before
its update, the gradients applied) is computed inside each loop, independently of the Recorder."""

from __future__ import annotations

import json
import math
import warnings

import polars as pl
import pytest

torch = pytest.importorskip("torch")

from recording_helpers import batches, mlp, read_grads, read_steps
from tracemortem.record import Recorder

RTOL = 1e-4


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-7)


def _exploding_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))


def _nonfinite(model: torch.nn.Module) -> bool:
    return any(p.grad is not None and not torch.isfinite(p.grad).all() for p in model.parameters())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _snapshot(run) -> tuple[dict, dict[str, torch.Tensor]]:
    snap = run / "rank0" / "snapshot"
    return json.loads((snap / "info.json").read_text()), torch.load(snap / "model.pt", weights_only=True)


def _assert_pre_update_snapshot(run, first_step: int, weights_before: dict[str, torch.Tensor]) -> None:
    info, weights = _snapshot(run)
    assert info["step"] == first_step and info["pre_update"] is True
    for key, value in weights_before.items():
        assert torch.equal(weights[key], value), key
        assert torch.isfinite(weights[key]).all(), key
    first_recorded = read_steps(run).filter(pl.col("nonfinite") > 0)["step"].min()
    assert first_recorded == first_step


def _train_exploding(rec, model, opt, backward=None, zero_grad=None) -> tuple | None:
    """Train on the exploding batches, the Recorder stepped after each update; returns (step,
    weights) just before the update of the first step whose gradients are non-finite."""
    first = None
    for step, (x, y) in enumerate(batches(60, scale=3.0)):
        loss = torch.nn.functional.mse_loss(model(x), y)
        (backward or torch.Tensor.backward)(loss)
        if first is None and _nonfinite(model):
            first = (step, _state(model))
        opt.step()
        (zero_grad or opt.zero_grad)()
        rec.step(loss=loss)
    return first


def test_closure_step_records_the_gradients_the_update_applies(tmp_path):
    # optimizer.step(closure): forward and backward run inside the step, after its pre-hook.
    model = _exploding_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    truth: dict = {"first": None, "norms": []}
    with Recorder(tmp_path, model, opt, update_every=1) as rec:
        for step, (x, y) in enumerate(batches(60, scale=3.0)):

            def closure(x=x, y=y, step=step):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                truth["norms"].append([p.grad.norm().item() for p in model.parameters()])
                if truth["first"] is None and _nonfinite(model):
                    truth["first"] = (step, _state(model))
                return loss

            loss = opt.step(closure)
            rec.step(loss=loss)
    assert truth["first"] is not None, "the model was meant to explode"
    first_step, before = truth["first"]
    _assert_pre_update_snapshot(tmp_path, first_step, before)
    grads = read_grads(tmp_path)
    for step in range(3):  # the gradients of that very step, not the previous one's
        got = grads.filter(pl.col("step") == step)["norm"].to_list()
        assert all(_close(a, b) for a, b in zip(got, truth["norms"][step], strict=True))


def test_lbfgs_closure_called_many_times_is_measured_once_per_step(tmp_path):
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4)
    first_grads = []
    with Recorder(tmp_path, model, opt) as rec:
        for x, y in batches(3):
            calls = []

            def closure(x=x, y=y, calls=calls):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                if not calls:
                    first_grads.append([p.grad.norm().item() for p in model.parameters()])
                calls.append(1)
                return loss

            opt.step(closure)
            assert len(calls) > 1
            rec.step()
    grads = read_grads(tmp_path)
    assert grads.height == 3 * len(list(model.parameters()))
    for step, expected in enumerate(first_grads):
        got = grads.filter(pl.col("step") == step)["norm"].to_list()
        assert all(_close(a, b) for a, b in zip(got, expected, strict=True))


def test_manual_update_without_optimizer_snapshots_before_the_update(tmp_path):
    # pytorch/examples word_language_model style: p.data.add_(p.grad, alpha=-lr), no optimizer.
    model = _exploding_model()
    first = None
    with Recorder(tmp_path, model) as rec:
        for step, (x, y) in enumerate(batches(60, scale=3.0)):
            model.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            if first is None and _nonfinite(model):
                first = (step, _state(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e30)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-0.5)
            rec.step(loss=loss)
    assert first is not None
    _assert_pre_update_snapshot(tmp_path, *first)
    meta = json.loads((tmp_path / "rank0" / "meta.json").read_text())
    assert meta["stepping"]["mode"] == "end-of-backward"


def test_grads_read_only_in_step_say_the_snapshot_is_after_the_update(tmp_path):
    # torch.autograd.grad accumulates nothing: no end-of-backward callback, grads are read in step().
    model = _exploding_model()
    params = list(model.parameters())
    with Recorder(tmp_path, model) as rec:
        for x, y in batches(60, scale=3.0):
            loss = torch.nn.functional.mse_loss(model(x), y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.grad = g
                    p.add_(g, alpha=-0.5)
            rec.step(loss=loss)
    info, _ = _snapshot(tmp_path)
    assert info["pre_update"] is False and "do not replay" in info["note"]
    from tracemortem import analyze

    finding = next(f for f in analyze(tmp_path).findings if f.rule == "nonfinite-gradient")
    assert "replay the failing step" not in finding.suggestion and "from the snapshot" not in finding.suggestion
    assert "not the state before the bad update" in finding.suggestion


class _StepOnlyOptimizer:
    """An optimizer that is not a torch.optim.Optimizer: step() and param_groups only."""

    def __init__(self, params, lr):
        self.param_groups = [{"params": list(params), "lr": lr}]

    def step(self):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad, alpha=-group["lr"])

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class _DelegatingWrapper(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: an Optimizer subclass that never ran
    Optimizer.__init__ (so it has no hook registry) and delegates to `.optimizer`."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, closure=None):
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()


@pytest.mark.parametrize("wrap", ["plain", "delegating", "step-only"])
def test_wrapped_optimizers_never_harm_training_and_are_exact(tmp_path, wrap):
    model = _exploding_model()
    if wrap == "step-only":
        opt = _StepOnlyOptimizer(model.parameters(), lr=0.5)
    else:
        inner = torch.optim.SGD(model.parameters(), lr=0.5)
        opt = inner if wrap == "plain" else _DelegatingWrapper(inner)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Recorder must not even warn
        with Recorder(tmp_path, model, opt, update_every=1) as rec:
            first = _train_exploding(rec, model, opt)
    assert first is not None
    _assert_pre_update_snapshot(tmp_path, *first)
    steps = read_steps(tmp_path)
    assert steps["skipped"].to_list() == [False] * 60 and steps["lr"].to_list() == [0.5] * 60
    if wrap == "step-only":
        assert "step" not in vars(opt)  # the instance patch is undone on close


def test_accelerate_optimizer(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    model = _exploding_model()
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.5))
    assert type(opt).__name__ == "AcceleratedOptimizer"
    with Recorder(tmp_path, model, opt) as rec:
        first = _train_exploding(rec, model, opt, backward=accelerator.backward)
    assert first is not None
    _assert_pre_update_snapshot(tmp_path, *first)
    torch.load(tmp_path / "rank0" / "snapshot" / "optimizer.pt", weights_only=True)


def test_zero_redundancy_optimizer(tmp_path):
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _exploding_model()
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD, lr=0.5)
        with Recorder(tmp_path / "run", model, opt, update_every=1) as rec:
            first = _train_exploding(rec, model, opt)
    finally:
        dist.destroy_process_group()
    assert first is not None
    _assert_pre_update_snapshot(tmp_path / "run", *first)


def test_two_optimizers_each_measured_at_their_own_step(tmp_path):
    # GAN-style: two parts, two optimizers, two backward passes per step.
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)
    model = torch.nn.Sequential(a, b)
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    opt_b = torch.optim.SGD(b.parameters(), lr=1e-1)
    expected = []  # per step: [(grad norm, update norm)] in param order
    with Recorder(tmp_path, model, [opt_a, opt_b], update_every=1) as rec:
        for x, y in batches(5):
            row = []
            for opt, part in ((opt_a, a), (opt_b, b)):
                model.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                before = [p.detach().clone() for p in part.parameters()]
                norms = [p.grad.norm().item() for p in part.parameters()]
                opt.step()
                row += [(n, (p.detach() - w).norm().item()) for n, p, w in zip(norms, part.parameters(), before)]
            expected.append(row)
            rec.step()
    grads = read_grads(tmp_path)
    for step, row in enumerate(expected):
        got = grads.filter(pl.col("step") == step).sort("param_id")
        for (n, u), gn, gu in zip(row, got["norm"], got["update_norm"], strict=True):
            assert _close(gn, n) and _close(gu, u) and gu > 0


def test_param_groups_added_later_and_unfrozen_parameters_are_recorded(tmp_path):
    torch.manual_seed(0)
    body, head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)
    model = torch.nn.Sequential(body, head)
    body.requires_grad_(False)
    opt = torch.optim.SGD(head.parameters(), lr=1e-2)
    extra = torch.nn.Linear(8, 8)  # joins the model and the optimizer at step 3
    with Recorder(tmp_path, model, opt) as rec:
        for step, (x, y) in enumerate(batches(6)):
            if step == 2:
                body.requires_grad_(True)
                opt.add_param_group({"params": body.parameters()})
            if step == 3:
                model.insert(0, extra)
                opt.add_param_group({"params": extra.parameters()})
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    grads = read_grads(tmp_path)
    meta = json.loads((tmp_path / "rank0" / "meta.json").read_text())
    names = [p["name"] for p in meta["params"]]
    per_step = {s: sorted(g["param_id"].to_list()) for (s,), g in grads.group_by("step")}
    assert per_step[0] == per_step[1] == [2, 3]  # the head only
    assert per_step[2] == [0, 1, 2, 3]  # the unfrozen body
    assert per_step[3] == per_step[5] == [0, 1, 2, 3, 4, 5]  # and the inserted layer, with new ids
    # the inserted layer is model.0 now; old ids keep their names and names stay unique
    assert names[:4] == ["0.weight", "0.bias", "1.weight", "1.bias"] and len(set(names)) == 6
    new = grads.filter((pl.col("step") == 4) & (pl.col("param_id") == 4))["norm"].item()
    assert new > 0


@pytest.mark.parametrize("amp", [False, True])
def test_gradient_accumulation_records_each_applied_update_once(tmp_path, amp):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if amp else None
    applied_norms = []
    with Recorder(tmp_path, model, opt, scaler=scaler) as rec:
        for micro, (x, y) in enumerate(batches(12)):
            loss = torch.nn.functional.mse_loss(model(x), y) / 4
            (scaler.scale(loss) if amp else loss).backward()
            if micro % 4 == 3:
                if amp:
                    scaler.unscale_(opt)
                applied_norms.append([p.grad.norm().item() for p in model.parameters()])
                if amp:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad()
            rec.step(loss=loss)  # once per micro-batch
    steps = read_steps(tmp_path)
    assert steps["skipped"].to_list() == [None, None, None, False] * 3
    grads = read_grads(tmp_path)
    assert sorted(grads["step"].unique().to_list()) == [3, 7, 11]
    for k, step in enumerate((3, 7, 11)):
        got = grads.filter(pl.col("step") == step)["norm"].to_list()
        assert all(_close(a, b) for a, b in zip(got, applied_norms[k], strict=True))
    from tracemortem import analyze

    assert not [f for f in analyze(tmp_path).findings if f.rule == "amp-overflow"]


def test_grad_every_counts_applied_updates_under_accumulation(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(tmp_path, model, opt, grad_every=2) as rec:
        for micro, (x, y) in enumerate(batches(12)):
            torch.nn.functional.mse_loss(model(x), y).backward()
            if micro % 2 == 1:
                opt.step()
                opt.zero_grad()
            rec.step()
    # updates at micro-batches 1, 3, 5, 7, 9, 11; every second one recorded
    assert sorted(read_grads(tmp_path)["step"].unique().to_list()) == [1, 5, 9]


def test_lr_is_the_rate_the_update_used_even_when_a_scheduler_steps_before_rec_step(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    used = []
    with Recorder(tmp_path, model, opt) as rec:
        for x, y in batches(4):
            torch.nn.functional.mse_loss(model(x), y).backward()
            used.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
            opt.zero_grad()
            rec.step()
    assert read_steps(tmp_path)["lr"].to_list() == used == [1.0, 0.5, 0.25, 0.125]


def test_without_optimizer_a_pass_through_another_part_of_a_large_model_is_seen(tmp_path):
    # 600 parameter tensors, two branches used in turn: after the first pass only some hooks stay
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(300))
    branches = (range(0, 150), range(150, 300))
    with Recorder(tmp_path, layers) as rec:
        for step in range(4):
            x = torch.randn(3, 2)
            for i in branches[step % 2]:
                x = torch.tanh(layers[i](x))
            x.sum().backward()
            with torch.no_grad():
                for p in layers.parameters():
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-1e-2)
            layers.zero_grad(set_to_none=True)
            rec.step()
    grads = read_grads(tmp_path)
    for step in range(4):
        ids = set(grads.filter(pl.col("step") == step)["param_id"].to_list())
        first = 2 * branches[step % 2].start
        assert ids == set(range(first, first + 300)), step
    assert json.loads((tmp_path / "rank0" / "meta.json").read_text())["stepping"]["mode"] == "end-of-backward"


class _SlottedOptimizer:
    """step() cannot be wrapped on the instance (__slots__) and it is no torch optimizer."""

    __slots__ = ("inner",)

    def __init__(self, inner):
        self.inner = inner

    @property
    def param_groups(self):
        return self.inner.param_groups

    def step(self):
        self.inner.step()


def test_an_optimizer_that_cannot_be_watched_never_harms_training(tmp_path):
    model = _exploding_model()
    opt = _SlottedOptimizer(_StepOnlyOptimizer(model.parameters(), lr=0.5))
    with pytest.warns(RuntimeWarning, match="cannot be watched"), Recorder(tmp_path, model, opt) as rec:
        first = _train_exploding(rec, model, opt, zero_grad=model.zero_grad)
    assert first is not None
    _assert_pre_update_snapshot(tmp_path, *first)  # read at the end of backward instead
