"""Record the small, real CPU training runs committed under sample_traces/.

    python scripts/make_sample_traces.py [--out sample_traces]

healthy/    a tiny causal transformer LM learning a copy task; profiler traces, checkpoints
exploding/  an MLP regression whose learning-rate warmup never stops: the loss turns unstable,
            then the gradients overflow to Inf/NaN, so the run has a snapshot of the state
            before the first non-finite update; profiler traces of a few early steps
vanishing/  a deep, narrow sigmoid MLP: gradients of the early layers shrink towards zero
Seeds are fixed; only wall-clock columns (time, duration, trace timestamps) differ per run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tracemortem.record import ProfileSchedule, Recorder


def seed(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 64, d_model: int = 32, layers: int = 2, seq: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq, d_model) * 0.02)
        block = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.pos, mask=mask, is_causal=True)))


def healthy(out: Path) -> None:
    seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    gen = torch.Generator().manual_seed(1)
    profile = ProfileSchedule(wait=20, warmup=1, active=2, repeat=2, skip_first=30)
    with Recorder(
        out,
        model,
        opt,
        profile=profile,
        checkpoint_every=100,
        keep_checkpoints=2,
        config={"sample": "healthy", "task": "copy the previous token"},
    ) as rec:
        for _ in range(200):
            tokens = torch.randint(0, 64, (16, 17), generator=gen)
            rec.observe_batch(tokens)
            logits = model(tokens[:, :-1])
            # target: the token one position back (learnable with causal attention)
            loss = nn.functional.cross_entropy(logits[:, 1:].reshape(-1, 64), tokens[:, :-2].reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            sched.step()
            rec.step(loss=loss, tokens=tokens.numel())


def exploding(out: Path) -> None:
    seed(3)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # A warmup that never stops: the lr keeps rising past what momentum SGD tolerates on this
    # regression, the loss turns unstable, then the gradients overflow (step 97 with these seeds).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 + 0.08 * step)
    gen = torch.Generator().manual_seed(1)
    true_w = torch.randn(16, 1, generator=gen)
    profile = ProfileSchedule(wait=30, warmup=1, active=3, repeat=1)
    with Recorder(
        out, model, opt, profile=profile, config={"sample": "exploding", "lr": 0.01, "warmup": "linear, unbounded"}
    ) as rec:
        for _ in range(120):
            x = torch.randn(32, 16, generator=gen)
            y = x @ true_w + 0.1 * torch.randn(32, 1, generator=gen)
            rec.observe_batch({"x": x, "y": y})
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            rec.step(loss=loss)


def vanishing(out: Path) -> None:
    seed(5)
    layers: list[nn.Module] = [nn.Linear(16, 16), nn.Sigmoid()]
    for _ in range(14):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(2)
    with Recorder(out, model, opt, config={"sample": "vanishing", "depth": 16, "activation": "sigmoid"}) as rec:
        for _ in range(150):
            x = torch.randn(32, 16, generator=gen)
            y = (x[:, 0] > 0).long()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_traces")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*acc_events.*")
    for name, make in (("healthy", healthy), ("exploding", exploding), ("vanishing", vanishing)):
        target = args.out / name
        shutil.rmtree(target, ignore_errors=True)
        make(target)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(f"{target}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
