"""Real torch.profiler chrome traces for the loader tests, recorded on CPU in the test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_TRACES = Path(__file__).resolve().parents[2] / "shared" / "real_traces"


def record_cpu_trace(path: Path, steps: int = 6, record_shapes: bool = True) -> Path:
    """A small MLP training loop under torch.profiler with a schedule (so ProfilerStep#N spans)."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.profiler import ProfilerActivity, profile, schedule

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with profile(
        activities=[ProfilerActivity.CPU],
        record_shapes=record_shapes,
        schedule=schedule(wait=1, warmup=1, active=steps - 2),
        on_trace_ready=lambda p: p.export_chrome_trace(str(path)),
    ) as prof:
        for _ in range(steps):
            loss = model(torch.randn(16, 32)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            prof.step()
    return path
