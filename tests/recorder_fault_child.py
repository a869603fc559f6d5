"""Training processes for tests/test_recorder_faults.py: `python recorder_fault_child.py MODE JSON`.

Faults are injected only at the system edge: `tracemortem.format.atomic_file`, the one place
where chunks, JSON, checkpoints and traces reach the disk, or by a real full/killed filesystem.
Results go to stdout as one JSON line; every warnings.warn call reaches stderr ("always").
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import json
import os
import signal
import sys
import threading
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
    deadline = time.monotonic() + 120  # a hang guard only
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


def slow_disk(run: str) -> dict:
    """150 steps with a small queue, on a disk that takes every file write from the first step on
    and completes none of them until the last step is done (from step 10 the writer is inside one).
    Had a step waited for a write, the loop could not finish while writes are held; a write on the
    training thread is counted (and let through, so the run ends and the test can say so)."""
    training_thread = threading.get_ident()
    disk_done, writer_held = threading.Event(), threading.Event()
    seen = {"holding": False, "held": 0, "on_training_thread": 0}

    def hold(path) -> None:
        if not seen["holding"]:
            return
        if threading.get_ident() == training_thread:
            seen["on_training_thread"] += 1
            return
        seen["held"] += 1
        writer_held.set()
        disk_done.wait(timeout=120)  # a hang guard only: the loop opens it when training ends

    _patch_atomic_file(hold)
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    longest_queue = 0
    with Recorder(run, model, opt, flush_every=4, flush_seconds=0.05, max_queue=8) as rec:
        seen["holding"] = True
        for step, (x, y) in enumerate(batches(150)):
            if step == 10:  # from here on the writer is surely stuck in a write (a guard, not a wait)
                writer_held.wait(timeout=120)
            loss = _train_step(model, opt, x, y)
            rec.step(loss=loss)
            longest_queue = max(longest_queue, len(rec.writer._queue))
        finished_while_held = not disk_done.is_set()
        seen["holding"] = False
        disk_done.set()
    return {
        "loss": loss.item(),
        "reference": _reference_loss(150),
        "finished_while_held": finished_while_held,
        "held_writes": seen["held"],
        "training_thread_writes": seen["on_training_thread"],
        "longest_queue": longest_queue,
    }


def loop(run: str, raise_at: int | None) -> None:
    """Train until killed, or raise from the data path. After 20 steps, once the writer has
    written them (so chunks exist on disk whatever the machine's load), it prints "ready"."""
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
                _settle(rec)
                print("ready", flush=True)


class _Regression(torch.utils.data.Dataset):
    """Sample i is the same in every process; each sample says which process made it."""

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x = torch.randn(8, generator=torch.Generator().manual_seed(index))
        return x, x.sum(dim=0, keepdim=True), os.getpid()


def dataloader(run: str, context: str, marker: str, handed: str, marker_step: int, pause: bool) -> None:
    """Train with a 2-worker DataLoader of the given multiprocessing context, at the recorder's
    defaults (nothing is flushed before 1,000 steps), until a signal ends the process. Every
    step whose `rec.step()` returned is appended to `handed` (one write syscall each, so it
    survives the kill); after step `marker_step` the file `marker` appears, naming the worker
    processes. With `pause`, the loop then waits for a signal instead of training on."""
    # If the group hangs, the test sends SIGUSR1 and every process (the forked workers inherit
    # this) writes its threads' stacks to stderr.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(_Regression(), batch_size=16, num_workers=2, multiprocessing_context=context)
    fd = os.open(handed, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    workers: set[int] = set()
    with Recorder(run, model, opt) as rec:
        for step, (x, y, made_by) in enumerate(loader):
            rec.step(loss=_train_step(model, opt, x, y))
            os.write(fd, b"%d\n" % step)
            workers.update(made_by.tolist())
            if step == marker_step:
                Path(marker + ".tmp").write_text(
                    json.dumps({"workers": sorted(workers), "main": os.getpid(), "inherited": INHERITED})
                )
                os.replace(marker + ".tmp", marker)
                if pause:
                    signal.pause()


def forked_copy(run: str) -> dict:
    """Fork twice from a recording process: one child steps, trains and exits normally (its
    atexit hooks run), the other is sent SIGTERM. Neither may touch the run directory."""
    model = mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = batches(10)
    rec = Recorder(run, model, opt)
    ours = signal.getsignal(signal.SIGTERM)
    for x, y in data[:5]:
        rec.step(loss=_train_step(model, opt, x, y))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the copy: train on, then leave through sys.exit (atexit runs)
        os.close(read)
        state = {
            "sigterm_is_recorder": signal.getsignal(signal.SIGTERM) == ours,
            "sigterm_is_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        }
        for x, y in data[5:]:
            rec.step(loss=_train_step(model, opt, x, y))
        state["pending_grads"] = any(tap.pending is not None for tap in rec._taps)
        rec.close()
        os.write(write, json.dumps(state).encode())
        os.close(write)
        sys.exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        child_state = json.loads(fh.read())
    _, exit_status = os.waitpid(pid, 0)
    killed = os.fork()
    if killed == 0:
        signal.pause()  # parked until the parent's SIGTERM: the default action must end it
        os._exit(3)
    os.kill(killed, signal.SIGTERM)
    _, killed_status = os.waitpid(killed, 0)
    meta_between = json.loads((Path(run) / "rank0" / "meta.json").read_text())
    for x, y in data[5:]:
        rec.step(loss=_train_step(model, opt, x, y))
    rec.close()
    return {
        "child": child_state,
        "child_exit": os.waitstatus_to_exitcode(exit_status),
        "killed_exit": os.waitstatus_to_exitcode(killed_status),
        "meta_between": {k: meta_between[k] for k in ("pid", "status", "ended")},
        "pid": os.getpid(),
    }


def shared_rank(run: str, marker: str, go: str, seed: int) -> dict:
    """One of two processes recording the same rank at once (two jobs given one run directory,
    or two nodes that both fell back to rank 0): 5 steps, the marker, wait for `go`, 5 more."""
    model = mlp(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = batches(10, seed=seed)
    with Recorder(run, model, opt) as rec:
        for step, (x, y) in enumerate(data):
            rec.step(loss=_train_step(model, opt, x, y))
            if step == 4:
                Path(marker).write_text(str(os.getpid()))
                deadline = time.monotonic() + 120
                while not Path(go).exists():  # the test says when both are running
                    assert time.monotonic() < deadline, "never told to go on"
                    time.sleep(0.02)
    return {"pid": os.getpid(), "attempt": rec.attempt.number}


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


def _start_as_a_shell_job() -> dict:
    """A shell starts a job with SIGINT and SIGTERM at their defaults and unblocked, but a test
    runner's worker can leave them ignored or blocked, and both are inherited through exec and
    fork: SIGINT to the group would then reach no process at all (seen beside other suites on
    a loaded machine). What was inherited is returned, for the test's messages."""
    inherited = {
        "SIGINT": str(signal.getsignal(signal.SIGINT)),
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    }
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    return inherited


INHERITED = _start_as_a_shell_job()

if __name__ == "__main__":
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    result = {
        "disk_full": disk_full,
        "slow_disk": slow_disk,
        "loop": loop,
        "ddp": ddp,
        "dataloader": dataloader,
        "forked_copy": forked_copy,
        "shared_rank": shared_rank,
    }[mode](**args)
    print(json.dumps(result), flush=True)
