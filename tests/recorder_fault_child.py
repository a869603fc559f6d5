"""Training processes for tests/test_recorder_faults.py: `python recorder_fault_child.py MODE JSON`.

Faults are injected only at the system edge: `tracemortem.format.atomic_file`, the one place
where chunks, JSON, checkpoints and traces reach the disk, or by a real full/killed filesystem.
Results go to stdout as one JSON line; every warnings.warn call reaches stderr ("always").
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.simplefilter("always")  # the test counts warn() calls, not deduplicated messages

import torch

sys.path.insert(0, str(Path(__file__).parent))
from recording_helpers import batches, mlp
from tracemortem import format as fmt
from tracemortem.record import Recorder

torch.set_num_threads(1)
_real_atomic_file = fmt.atomic_file


def _patch_atomic_file(before_write) -> None:
    @contextlib.contextmanager
    def atomic_file(path):
        before_write(path)
        with _real_atomic_file(path) as tmp:
            yield tmp

    fmt.atomic_file = atomic_file


def _train_step(model, opt, x, y) -> float:
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


def _reference_loss(n: int) -> float:
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = None
    for x, y in batches(n):
        loss = _train_step(model, opt, x, y)
    return loss.item()


def _settle(rec: Recorder) -> None:
    """Wait until the writer has written or lost every step handed to it so far."""
    deadline = time.monotonic() + 20
    while rec.writer.written_steps + rec.writer.lost_steps + rec.writer.dropped_steps < rec._step:
        assert time.monotonic() < deadline, "writer did not settle"
        time.sleep(0.02)


def disk_full(runs: dict[str, str]) -> dict:
    """For each {how: run}: 30 steps; the disk is full during steps 10-19, by an injected
    ENOSPC ("inject") or for real, a filled tmpfs ("tmpfs")."""
    injecting = {"on": False}

    def before_write(path):
        if injecting["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    _patch_atomic_file(before_write)
    out = {how: _disk_full_run(run, how, injecting) for how, run in runs.items()}
    out["reference"] = _reference_loss(30)
    return out


def _disk_full_run(run: str, how: str, injecting: dict) -> float:
    print(f"=== {how}", file=sys.stderr, flush=True)  # the test splits stderr per run here
    filler = Path(run).parent / "filler"

    def set_full(full: bool) -> None:
        if how == "inject":
            injecting["on"] = full
        elif full:
            with open(filler, "wb") as fh:  # take every free block of the filesystem
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        else:
            filler.unlink()

    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Recorder(run, model, opt, flush_every=5, flush_seconds=0.05, checkpoint_every=5) as rec:
        for step, (x, y) in enumerate(batches(30)):
            if step in (10, 20):
                _settle(rec)
                set_full(step == 10)
            loss = _train_step(model, opt, x, y)
            rec.step(loss=loss)
    return loss.item()


def slow_disk(fast_run: str, slow_run: str, stall: float) -> dict:
    """The same 150 steps of ~6 ms with a small queue, on a healthy disk and then on one
    where every file write stalls `stall` seconds."""
    out = {"fast": _timed_run(fast_run)}
    _patch_atomic_file(lambda path: time.sleep(stall))
    out["slow"] = _timed_run(slow_run)
    out["reference"] = _reference_loss(150)
    return out


def _timed_run(run: str) -> dict:
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    times, longest_queue = [], 0
    with Recorder(run, model, opt, flush_every=4, flush_seconds=0.05, max_queue=8) as rec:
        for x, y in batches(150):
            t = time.perf_counter()
            time.sleep(0.005)  # stands in for the data loader and the model's real compute
            loss = _train_step(model, opt, x, y)
            rec.step(loss=loss)
            times.append(time.perf_counter() - t)
            longest_queue = max(longest_queue, len(rec.writer._queue))
    return {"median": statistics.median(times), "max": max(times), "longest_queue": longest_queue, "loss": loss.item()}


def loop(run: str, raise_at: int | None) -> None:
    """Train until killed (prints "ready" after 20 steps), or raise from the data path."""
    model = mlp(seed=0, width=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batches(8)

    def load(step):
        if step == raise_at:
            raise ValueError(f"corrupt sample in batch {step}")
        return data[step % 8]

    with Recorder(run, model, opt, flush_every=3, flush_seconds=0.05) as rec:
        step = 0
        while True:
            x, y = load(step)
            rec.step(loss=_train_step(model, opt, x, y))
            step += 1
            if step == 20:
                print("ready", flush=True)


def ddp(run: str) -> dict:
    """One rank of a 2-process gloo DDP job (RANK, WORLD_SIZE, MASTER_* in the environment)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(mlp(seed=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Recorder(run, model, opt, flush_every=4) as rec:
        for x, y in batches(10, seed=10 + rank):
            rec.step(loss=_train_step(model, opt, x, y))
    dist.barrier()
    dist.destroy_process_group()
    return {"rank": rank}


if __name__ == "__main__":
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    result = {"disk_full": disk_full, "slow_disk": slow_disk, "loop": loop, "ddp": ddp}[mode](**args)
    print(json.dumps(result), flush=True)
