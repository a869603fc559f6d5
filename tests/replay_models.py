"""Models whose first NaN is born in a known module and op, and arrives elsewhere, with the
training loops that drive them there. `tracemortem replay --model tests/replay_models.py:NAME`
builds them in the CLI tests (the factories take no arguments)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracemortem import Recorder


class LogBlock(nn.Module):
    """log of a linear map whose outputs the loss drives down through zero."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Linear(width, width)
        with torch.no_grad():
            self.scale.weight.mul_(0.1)
            self.scale.bias.fill_(1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log(self.scale(h))


class LogNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.block = LogBlock(width)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.tanh(self.inp(x))))


class ScalarLossNet(LogNet):
    """LogNet that returns its own loss (log_loss's penalty on the log outputs), for the default loss."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logs = self.block(torch.tanh(self.inp(x)))
        return (self.head(logs) - x.sum(dim=-1, keepdim=True)).pow(2).mean() + logs.mean()


class Normalize(nn.Module):
    """x / ‖x‖ with no epsilon: NaN once a row of ReLU outputs is all zero."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h / h.norm(dim=-1, keepdim=True)


class NormNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.act = nn.ReLU()
        self.norm = Normalize()
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.act(self.inp(x))))


class PairDistance(nn.Module):
    """Euclidean distances between all pairs of rows, the diagonal included: sqrt(0) is finite,
    but its gradient is infinite and meets a zero: NaN is born in backward."""

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((e[:, None, :] - e[None, :, :]).pow(2).sum(dim=-1))


class PairNet(nn.Module):
    def __init__(self, batch: int = 16):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.dist = PairDistance()
        self.head = nn.Linear(batch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dist(self.embed(x)))


class DropLogNet(LogNet):
    """LogNet with dropout: its training consumes random numbers."""

    def __init__(self, width: int = 16):
        super().__init__(width)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.drop(torch.tanh(self.inp(x)))))


class Attention(nn.Module):
    """Single-head attention whose logits are computed in float16 (autocast), unscaled."""

    def __init__(self, width: int):
        super().__init__()
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h.device.type, dtype=torch.float16):
            logits = self.q(h) @ self.k(h).transpose(-1, -2)
            weights = torch.softmax(logits.float(), dim=-1)
        return weights @ self.v(h)


class AttentionNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.attn = Attention(width)
        self.out = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h)
        return self.head(torch.relu(self.out(h))).mean(dim=1)


class PlainNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.mid = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(torch.tanh(self.inp(x)))))


def log_net() -> nn.Module:
    return LogNet()


def norm_net() -> nn.Module:
    return NormNet()


def pair_net() -> nn.Module:
    return PairNet()


def drop_log_net() -> nn.Module:
    return DropLogNet()


def attention_net() -> nn.Module:
    return AttentionNet()


def plain_net() -> nn.Module:
    return PlainNet()


def mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).pow(2).mean()


def log_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """MSE plus a reward for small log outputs: it pushes LogBlock's inputs towards zero."""
    x, y = batch
    return (model(x) - y).pow(2).mean() + model.block(torch.tanh(model.inp(x))).mean()


def drop_log_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).pow(2).mean() + model.block(model.drop(torch.tanh(model.inp(x)))).mean()


def norm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """MSE plus an activation penalty on the ReLU outputs: it drives them to exactly zero."""
    x, y = batch
    hidden = model.act(model.inp(x))
    return (model.head(model.norm(hidden)) - y).pow(2).mean() + 10.0 * hidden.mean()


def data(steps: int, seed: int = 0, shape: tuple[int, ...] = (16, 8)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(*shape, generator=gen)
        out.append((x, x.sum(dim=-1, keepdim=True).reshape(shape[0], -1)[:, :1]))
    return out


def train(
    run_dir: Path,
    model: nn.Module,
    batches: list[Any],
    loss_fn: Any,
    *,
    lr: float,
    replay: Any = None,
    observe: bool = True,
    transform: Any = None,
) -> list[float]:
    """A real training loop under a Recorder; it runs every batch (NaN or not) and returns the
    losses. `transform(step, batch)` changes the batch after it was observed."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    with Recorder(run_dir, model, opt, replay=replay) as rec:
        for step, batch in enumerate(batches):
            if observe:
                rec.observe_batch(batch)
            used = transform(step, batch) if transform else batch
            loss = loss_fn(model, used)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            losses.append(float(loss.detach()))
    return losses


def first_nonfinite(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


def tiny_gpt2() -> nn.Module:
    """A 2-layer GPT-2 built from a config (no weights downloaded), eager attention."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16, attn_implementation="eager")
    return GPT2LMHeadModel(config)


def gpt2_fp16_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.float16):
        return model(**batch).loss


class RandomGate(nn.Module):
    """Once in a while (a 1-in-10 draw) the gate divides by zero: a failure that depends on the
    random numbers the step drew."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        closed = (torch.rand(()) < 0.1).float()
        return h / (1.0 - closed)


class GatedNet(PlainNet):
    def __init__(self, width: int = 16):
        super().__init__(width)
        self.gate = RandomGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.gate(torch.tanh(self.inp(x))))))


def gated_net() -> nn.Module:
    return GatedNet()
