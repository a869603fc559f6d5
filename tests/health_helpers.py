"""Real CPU training runs for the health tests: small seeded models recorded with the Recorder,
and the analysis of the run directory they leave."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import tracemortem
from tracemortem.config import Config
from tracemortem.detect import health
from tracemortem.findings import SEVERITY_RANK, Finding
from tracemortem.load.discover import discover
from tracemortem.load.run import RunData, load_run

Batch = tuple[torch.Tensor, torch.Tensor]


def analyse(run_dir: Path, **overrides) -> tuple[RunData, list[Finding]]:
    run = load_run(discover(run_dir))
    return run, health.detect(run, Config(overrides))


def at_least(findings: list[Finding], severity: str) -> list[Finding]:
    return [f for f in findings if SEVERITY_RANK[f.severity] <= SEVERITY_RANK[severity]]


def regression_batches(n: int, dim: int, seed: int, batch: int = 32) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, 1, generator=gen)
    out = []
    for _ in range(n):
        x = torch.randn(batch, dim, generator=gen)
        out.append((x, torch.tanh(x @ w) + 0.1 * torch.randn(batch, 1, generator=gen)))
    return out


def train(
    run_dir: Path | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    schedule: Callable[[int], float] | None = None,
    stop_after_nonfinite: int | None = None,
    **recorder_args,
) -> int | None:
    """One plain training loop, recorded into `run_dir` (or not, when None: the replay).
    Returns the first step whose gradients were non-finite, checked here independently of
    the recorder, or None."""
    first_bad = None
    rec = tracemortem.Recorder(run_dir, model, optimizer, profile=None, **recorder_args) if run_dir else None
    try:
        for step, (x, y) in enumerate(batches):
            if schedule is not None:
                for group in optimizer.param_groups:
                    group["lr"] = schedule(step)
            loss = loss_fn(model(x), y)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if first_bad is None and not all(bool(torch.isfinite(g).all()) for g in grads):
                first_bad = step
            optimizer.step()
            optimizer.zero_grad()
            if rec is not None:
                rec.step(loss=loss)
            if first_bad is not None and stop_after_nonfinite is not None and step >= first_bad + stop_after_nonfinite:
                break
    finally:
        if rec is not None:
            rec.close()
    return first_bad


# --- models ----------------------------------------------------------------------------------


def relu_mlp(seed: int, dim: int = 16, width: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    )


def deep_sigmoid(seed: int, depth: int = 10, width: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))


class Branchy(torch.nn.Module):
    """`aux_head` is never used; `branch` is multiplied by zero, so its gradient is exactly 0."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Linear(16, 32)
        self.branch = torch.nn.Linear(32, 32)
        self.head = torch.nn.Linear(32, 1)
        self.aux_head = torch.nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.trunk(x))
        return self.head(h + 0.0 * self.branch(h))


def small_cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )


def image_batches(n: int, seed: int, batch: int = 32) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(4, 1, 8, 8, generator=gen)
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (batch,), generator=gen)
        out.append((prototypes[y] + 0.5 * torch.randn(batch, 1, 8, 8, generator=gen), y))
    return out


class TinyTransformer(torch.nn.Module):
    """One encoder layer learning to reverse a token sequence."""

    def __init__(self, seed: int, vocab: int = 12, d: int = 16, length: int = 8):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(length, d))
        self.enc = torch.nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.out = torch.nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.enc(self.emb(x) + self.pos)).flatten(0, 1)


def token_batches(n: int, seed: int, vocab: int = 12, length: int = 8, batch: int = 16) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        out.append((x, x.flip(1).flatten()))
    return out
