"""Gradient clipping seen with no user code: `preclip_norm` and `clip_max` in the steps table,
the `grad-clipping` rule, and the exploding-gradient rule reading pre-clip norms."""

from __future__ import annotations

import math
import signal

import polars as pl
import pytest

torch = pytest.importorskip("torch")
import torch.nn.utils.clip_grad as clip_grad
from torch.nn.utils import clip_grad_norm_ as bound_early  # bound before any Recorder exists

from recording_helpers import batches, mlp, read_steps
from tracemortem import analyze
from tracemortem.record import Recorder


def _clipped_run(run, n, max_norm, clip=torch.nn.utils.clip_grad_norm_, spike_at=None, optimizer=True):
    """Returns what clip_grad_norm_ returned and the norm of the gradients applied, per step."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3) if optimizer else None
    returned, applied = [], []
    with Recorder(run, model, opt) as rec:
        for step, (x, y) in enumerate(batches(n)):
            if step == spike_at:
                x, y = x * 1e3, y * 1e3
            torch.nn.functional.mse_loss(model(x), y).backward()
            returned.append(clip(model.parameters(), max_norm).item())  # a generator, as users pass it
            applied.append(math.sqrt(sum(p.grad.double().norm().item() ** 2 for p in model.parameters())))
            if opt is not None:
                opt.step()
                opt.zero_grad()
            else:
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(p.grad, alpha=-1e-3)
                        p.grad = None
            rec.step()
    return returned, applied


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def test_clipping_columns_hold_the_measured_norm_and_the_cap(tmp_path):
    returned, applied = _clipped_run(tmp_path, 30, max_norm=0.5, clip=bound_early)
    steps = read_steps(tmp_path)
    assert steps["preclip_norm"].to_list() == [_f32(v) for v in returned]
    assert steps["clip_max"].to_list() == [0.5] * 30
    # grad_norm is the norm of the gradients the optimizer applied: after clipping
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(steps["grad_norm"].to_list(), applied, strict=True))
    assert max(applied) <= 0.5 * (1 + 1e-4) < max(returned)
    finding = next(f for f in analyze(tmp_path).findings if f.rule == "grad-clipping")
    bitten = sum(r > 0.5 for r in returned)
    assert finding.evidence["active_steps"] == bitten and finding.evidence["steps_with_clipping"] == 30
    assert finding.severity == ("warning" if bitten > 15 else "info")


def test_torch_is_restored_when_the_last_recorder_closes(tmp_path):
    originals = (clip_grad._clip_grads_with_norm_, torch.nn.utils.clip_grads_with_norm_)
    sigterm = signal.getsignal(signal.SIGTERM)
    model = mlp()
    first = Recorder(tmp_path / "a", model)
    second = Recorder(tmp_path / "b", model)
    assert clip_grad._clip_grads_with_norm_ is not originals[0]
    first.close()
    assert clip_grad._clip_grads_with_norm_ is not originals[0]  # the second still listens
    second.close()
    assert (clip_grad._clip_grads_with_norm_, torch.nn.utils.clip_grads_with_norm_) == originals
    # Closed out of order, the two leave SIGTERM as they found it (not the first one's handler).
    assert signal.getsignal(signal.SIGTERM) == sigterm


def test_cap_active_on_most_steps_is_a_warning_and_never_active_is_quiet(tmp_path):
    returned, _ = _clipped_run(tmp_path / "tight", 40, max_norm=1e-3)
    assert all(r > 1e-3 for r in returned)
    finding = next(f for f in analyze(tmp_path / "tight").findings if f.rule == "grad-clipping")
    assert finding.severity == "warning" and finding.evidence["active_fraction"] == 1.0
    median = sorted(r / 1e-3 for r in returned)[20]
    assert math.isclose(finding.evidence["median_factor"], median, rel_tol=0.05)

    returned, _ = _clipped_run(tmp_path / "loose", 40, max_norm=1e6)
    assert all(r < 1e6 for r in returned)
    assert not [f for f in analyze(tmp_path / "loose").findings if f.rule == "grad-clipping"]


def test_a_clipped_explosion_is_seen_in_the_pre_clip_norms(tmp_path):
    # The cap bites on every step, so after clipping the norm is a flat line at the cap; the
    # spike of step 100 is visible only before clipping.
    returned, applied = _clipped_run(tmp_path, 120, max_norm=1e-3, spike_at=100)
    assert max(applied) <= 1e-3 * (1 + 1e-4)
    assert returned[100] > 100 * max(returned[:100])
    finding = next(f for f in analyze(tmp_path).findings if f.rule == "exploding-gradient")
    assert finding.step == 100 and finding.evidence["before_clipping"] is True
    assert "before clipping" in finding.message


def test_without_optimizer_the_clipped_gradients_are_recorded(tmp_path):
    returned, applied = _clipped_run(tmp_path, 10, max_norm=0.5, optimizer=False)
    steps = read_steps(tmp_path)
    assert steps["preclip_norm"].to_list() == [_f32(v) for v in returned]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(steps["grad_norm"].to_list(), applied, strict=True))
    assert steps.filter(pl.col("nonfinite") > 0).is_empty()
