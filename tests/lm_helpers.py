"""A word-language-model training loop in the shape of pytorch/examples' word_language_model
(embedding → 2-layer RNN → decoder, truncated BPTT with detached hidden state), on a small
Markov-chain corpus, recorded with the Recorder. A learning rate that is too high makes it
diverge within its first tens of steps."""

from __future__ import annotations

import math
from pathlib import Path

import torch

import tracemortem

VOCAB, EMBED, HIDDEN, BPTT, BATCH = 64, 32, 32, 16, 8


class RNNModel(torch.nn.Module):
    """pytorch/examples' RNN_RELU / RNN_TANH models, without dropout."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        self.encoder = torch.nn.Embedding(VOCAB, EMBED)
        self.rnn = torch.nn.RNN(EMBED, HIDDEN, 2, nonlinearity=cell)
        self.decoder = torch.nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(out), hidden


def corpus(steps: int, seed: int) -> torch.Tensor:
    """(time, batch) token ids from a random sparse Markov chain: a learnable 'language'."""
    gen = torch.Generator().manual_seed(seed)
    transitions = torch.softmax(3 * torch.randn(VOCAB, VOCAB, generator=gen), 1)
    length = BPTT * BATCH * (steps + 1) + BATCH
    tokens = [0]
    for _ in range(length - 1):
        tokens.append(int(torch.multinomial(transitions[tokens[-1]], 1, generator=gen)))
    return torch.tensor(tokens).view(BATCH, -1).t().contiguous()


def train_lm(
    run_dir: Path | None, optimizer: str, lr: float, cell: str = "relu", steps: int = 80, seed: int = 0
) -> tuple[int | None, list[tuple[float, float]]]:
    """Train, recording into `run_dir` (None: not recorded). Stops two steps after the first
    non-finite loss or gradient. Returns that step (checked here, independently of the recorder)
    and the (loss, grad norm) of every step."""
    torch.manual_seed(seed)
    model = RNNModel(cell)
    opt = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if optimizer == "sgd-momentum" else 0.0)
    )
    data = corpus(steps, seed + 1)
    rec = tracemortem.Recorder(run_dir, model, opt, profile=None) if run_dir else None
    hidden = None
    first_bad, history = None, []
    try:
        for step in range(steps):
            x, y = data[step * BPTT : (step + 1) * BPTT], data[step * BPTT + 1 : (step + 1) * BPTT + 1]
            hidden = hidden.detach() if hidden is not None else None
            logits, hidden = model(x, hidden)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), y.reshape(-1))
            loss.backward()
            norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
            history.append((float(loss.detach()), norm))
            if first_bad is None and not (math.isfinite(norm) and math.isfinite(history[-1][0])):
                first_bad = step
            opt.step()
            opt.zero_grad()
            if rec is not None:
                rec.step(loss=loss)
            if first_bad is not None and step >= first_bad + 2:
                break
    finally:
        if rec is not None:
            rec.close()
    return first_bad, history
