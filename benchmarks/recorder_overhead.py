"""Recorder overhead on a small transformer training loop (one command, prints a table).

    python benchmarks/recorder_overhead.py [--device cpu|cuda] [--cycles 600] [--threads 1]
                                          [--tensor-rows 2000,20000] [--deep-cycles 30]

Variants, each with its own identically initialised model:
  (a) no recording
  (b) tracemortem.Recorder at defaults
  (c) a per-parameter `p.grad.norm().item()` loop (the common hand-written approach)
  (d) TensorBoard SummaryWriter.add_histogram of every gradient, every step
  (e) the Recorder with activation statistics every 10 steps (activations=10)
They are interleaved step by step: each cycle runs one step of every variant, in a freshly
shuffled order, so that whatever else the machine is doing hits all of them alike. Overhead is
the variant's median step time over the (a)'s, minus one, with a 90 % bootstrap interval
(cycles resampled). For (b) it also times the Recorder's own work on the training thread
(thread CPU time in its optimizer hooks and rec.step()): a direct figure that whole-step ratios
on a shared machine blur. Then a longer recorded run measures the bytes on disk per grads row.

The rows by parameter-tensor count scale the same model in depth (12 tensors per layer) at a
small width, so that the step is mostly per-tensor work: the Recorder's per-tensor costs show
at their largest. Only (a) and (b) run there, interleaved the same way, and `close()` is timed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tracemortem.record import Recorder


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: int, seq: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(seq, d_model))
        block = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model, batch_first=True, dropout=0.0)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device)
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.pos, mask=mask, is_causal=True)))


class Variant:
    def __init__(self, name: str, args: argparse.Namespace, workdir: Path):
        self.name, self.args = name, args
        torch.manual_seed(0)
        self.model = TinyLM(args.vocab, args.d_model, args.layers, args.seq).to(args.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        gen = torch.Generator().manual_seed(1)
        self.data = [
            torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen).to(args.device) for _ in range(8)
        ]
        self.i = 0
        self.times: list[float] = []  # wall seconds of each kept step, cycle by cycle
        self.cpu: list[float] = []  # process CPU seconds (all threads) of each kept step
        self.rec = None
        self.own: list[float] = []  # recorder variant: its training-thread CPU seconds per step
        if name == "recorder":
            # Hooks registered before and after the Recorder's bracket its own hooks.
            marks: dict[str, float] = {}
            self.marks = marks
            self.opt.register_step_pre_hook(lambda *_: marks.__setitem__("pre0", time.thread_time()))
            self.opt.register_step_post_hook(lambda *_: marks.__setitem__("post0", time.thread_time()))
            self.rec = Recorder(workdir / name, self.model, self.opt)
            self.opt.register_step_pre_hook(lambda *_: marks.__setitem__("pre1", time.thread_time()))
            self.opt.register_step_post_hook(lambda *_: marks.__setitem__("post1", time.thread_time()))
        if name == "activations":
            self.rec = Recorder(workdir / name, self.model, self.opt, activations=10)
        self.tb = None
        if name == "tb_histogram":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(workdir / name))
        self.named = list(self.model.named_parameters())

    def step(self) -> None:
        tokens = self.data[self.i % len(self.data)]
        logits = self.model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        if self.name == "norm_item_loop":
            norms = {n: p.grad.norm().item() for n, p in self.named}
            assert norms
        elif self.tb is not None:
            for n, p in self.named:
                self.tb.add_histogram(f"grad/{n}", p.grad, self.i)
        self.opt.step()
        self.opt.zero_grad()
        if self.name == "activations":
            self.rec.step(loss=loss)
        elif self.rec is not None:
            t0 = time.thread_time()
            self.rec.step(loss=loss)
            m = self.marks
            self.own.append(time.thread_time() - t0 + m["pre1"] - m["pre0"] + m["post1"] - m["post0"])
        self.i += 1

    def run(self, steps: int, keep: bool) -> None:
        sync = torch.cuda.synchronize if self.args.device == "cuda" else (lambda: None)
        for _ in range(steps):
            sync()
            t0, cpu0 = time.perf_counter(), time.process_time()
            self.step()
            sync()
            if keep:
                self.times.append(time.perf_counter() - t0)
                self.cpu.append(time.process_time() - cpu0)

    def close(self) -> float:
        """Close the variant; the seconds the Recorder's close() took (0 without one)."""
        took = 0.0
        if self.rec is not None:
            t0 = time.perf_counter()
            self.rec.close()
            took = time.perf_counter() - t0
        if self.tb is not None:
            self.tb.close()
        return took


def _ratio(times: list[float], base: list[float]) -> float:
    return statistics.median(times) / statistics.median(base) - 1


def _interval(times: list[float], base: list[float], draws: int = 2000) -> tuple[float, float]:
    """5th and 95th percentile of the overhead when whole cycles are resampled with replacement
    (a cycle's steps ran side by side, so they are drawn together)."""
    rng = random.Random(1)
    n = len(times)
    ratios = []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        ratios.append(_ratio([times[i] for i in pick], [base[i] for i in pick]))
    ratios.sort()
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws)]


def interleave(variants: dict[str, Variant], cycles: int, warmup: int) -> None:
    """Warm every variant up, then run `cycles` cycles of one step each, in a fresh random order."""
    for v in variants.values():
        v.run(warmup, keep=False)
    order = list(variants)
    rng = random.Random(0)
    for _ in range(cycles):
        rng.shuffle(order)
        for n in order:
            variants[n].run(1, keep=True)


def layers_for(tensors: int) -> int:
    """Encoder layers giving about `tensors` parameter tensors (12 per layer, 6 outside)."""
    return max(1, round((tensors - 6) / 12))


def tensor_rows(args: argparse.Namespace, workdir: Path) -> list[dict]:
    rows = []
    for target in args.tensor_rows:
        deep = argparse.Namespace(
            **{
                **vars(args),
                "layers": layers_for(target),
                "d_model": args.deep_d_model,
                "batch": args.deep_batch,
                "seq": args.deep_seq,
                "vocab": 256,
            }
        )
        variants = {n: Variant(n, deep, workdir / f"deep{target}") for n in ("none", "recorder")}
        interleave(variants, args.deep_cycles, warmup=2)
        close_s = variants["recorder"].close()
        variants["none"].close()
        base, rec = variants["none"], variants["recorder"]
        low, high = _interval(rec.times, base.times)
        rows.append(
            {
                "tensors": len(base.named),
                "params": sum(p.numel() for p in base.model.parameters()),
                "none_ms": statistics.median(base.times) * 1e3,
                "rec_ms": statistics.median(rec.times) * 1e3,
                "overhead": _ratio(rec.times, base.times),
                "interval": (low, high),
                "cpu_overhead": _ratio(rec.cpu, base.cpu),
                "own_ms": statistics.median(rec.own[2:]) * 1e3,
                "close_s": close_s,
            }
        )
        del variants
    return rows


def bytes_per_grads_row(args: argparse.Namespace, workdir: Path) -> tuple[int, int, float]:
    """A longer recorded run at defaults (small batch to keep it quick): on-disk bytes / rows."""
    import pyarrow.parquet as pq

    small = argparse.Namespace(**{**vars(args), "batch": 2, "seq": 16})
    v = Variant("recorder", small, workdir / "long")
    v.run(args.bytes_steps, keep=False)
    v.close()
    files = list((workdir / "long" / "recorder" / "rank0" / "grads").glob("*.parquet"))
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    size = sum(f.stat().st_size for f in files)
    return rows, size, size / max(rows, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cycles", type=int, default=600, help="timed steps per variant, interleaved")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default); 1 steadies timings on a shared machine",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--bytes-steps", type=int, default=1500, help="steps of the run that measures bytes/row")
    parser.add_argument(
        "--tensor-rows",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[2000, 20000],
        help="parameter-tensor counts of the depth-scaled rows ('' for none)",
    )
    parser.add_argument("--deep-cycles", type=int, default=30, help="timed steps per variant in those rows")
    parser.add_argument("--deep-d-model", type=int, default=32)
    parser.add_argument("--deep-batch", type=int, default=4)
    parser.add_argument("--deep-seq", type=int, default=32)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")

    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["none", "recorder", "norm_item_loop", "tb_histogram", "activations"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        variants = {n: Variant(n, args, workdir) for n in names}
        interleave(variants, args.cycles, args.warmup)
        main_close_s = variants["recorder"].close()
        for n in names[:1] + names[2:]:
            variants[n].close()
        rows, size, per_row = bytes_per_grads_row(args, workdir)
        deep = tensor_rows(args, workdir)

    params = sum(p.numel() for p in variants["none"].model.parameters())
    tensors = len(variants["none"].named)
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"model: {tensors} param tensors, {params / 1e6:.2f} M params; batch={args.batch} seq={args.seq}; "
        f"{args.cycles} cycles of one step per variant, shuffled"
    )
    print("overhead = variant's median step / (a)'s median step - 1; [90 % bootstrap interval over cycles]")
    print(
        f"{'variant':<20}{'median ms':>10}{'p90 ms':>10}{'overhead':>10}{'interval':>18}{'CPU ms':>10}{'CPU overhead':>14}"
    )
    labels = {
        "none": "(a) none",
        "recorder": "(b) Recorder",
        "norm_item_loop": "(c) .norm().item()",
        "tb_histogram": "(d) add_histogram",
        "activations": "(e) + activations=10",
    }
    base = variants["none"]
    overhead, cpu_overhead = {}, {}
    for n in names:
        v = variants[n]
        t = sorted(v.times)
        overhead[n] = _ratio(v.times, base.times)
        cpu_overhead[n] = _ratio(v.cpu, base.cpu)
        low, high = _interval(v.times, base.times)
        print(
            f"{labels[n]:<20}{statistics.median(t) * 1e3:>10.2f}{t[int(0.9 * (len(t) - 1))] * 1e3:>10.2f}"
            f"{overhead[n] * 100:>9.1f}%{f'[{low * 100:.1f}, {high * 100:.1f}]%':>18}"
            f"{statistics.median(v.cpu) * 1e3:>10.2f}{cpu_overhead[n] * 100:>13.1f}%"
        )
    for label, o in (("wall", overhead), ("CPU", cpu_overhead)):
        ratio = (
            f"{o['tb_histogram'] / o['recorder']:.1f}x" if o["recorder"] > 0 else "unbounded ((b) within noise of (a))"
        )
        print(f"(d) overhead / (b) overhead, {label} time: {ratio}")
    wall = _ratio(variants["activations"].times, variants["recorder"].times)
    cpu = _ratio(variants["activations"].cpu, variants["recorder"].cpu)
    print(f"(e) activations=10 over (b): {wall * 100:.1f}% wall, {cpu * 100:.1f}% CPU of the step (target <= 3 %)")
    own = variants["recorder"].own[args.warmup :]
    print(
        f"(b) Recorder's own work on the training thread: {statistics.mean(own) * 1e3:.2f} ms/step mean, "
        f"{statistics.median(own) * 1e3:.2f} ms median (thread CPU time in its hooks and step(); "
        f"update norms on every 10th step)"
    )
    print(f"grads table: {rows} rows in {size} bytes on disk = {per_row:.2f} bytes/row ({args.bytes_steps} steps)")
    print(f"(b) Recorder close(): {main_close_s:.3f} s")
    if deep:
        print()
        print(
            f"by parameter tensors: d_model={args.deep_d_model} batch={args.deep_batch} seq={args.deep_seq}, depth scaled; "
            f"(a) and (b) only, {args.deep_cycles} cycles of one step each, shuffled"
        )
        print(
            f"{'tensors':>8}{'params M':>10}{'(a) ms':>10}{'(b) ms':>10}{'overhead':>10}{'interval':>18}"
            f"{'CPU overhead':>14}{'own ms':>9}{'close s':>9}"
        )
        for r in deep:
            low, high = r["interval"]
            print(
                f"{r['tensors']:>8}{r['params'] / 1e6:>10.2f}{r['none_ms']:>10.1f}{r['rec_ms']:>10.1f}"
                f"{r['overhead'] * 100:>9.1f}%{f'[{low * 100:.1f}, {high * 100:.1f}]%':>18}"
                f"{r['cpu_overhead'] * 100:>13.1f}%{r['own_ms']:>9.1f}{r['close_s']:>9.3f}"
            )


if __name__ == "__main__":
    main()
