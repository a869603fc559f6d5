"""TensorBoard ingest benchmark. One command, prints a table:

    python benchmarks/ingest_speed.py                     # 1,000,000 scalar events
    python benchmarks/ingest_speed.py --events 100000     # quicker

The log is written once with torch's real `SummaryWriter` (10 tags, as a training loop logs
loss, lr, grad norm and user scalars; cached in benchmarks/.data/) and then read, each reader in
a fresh subprocess, by:

- tracemortem: `load.tensorboard.read_run` (every scalar into one polars frame), and the whole
  `tracemortem.analyze` (reading, tag mapping, health rules) for reference;
- tensorboard's `EventAccumulator` with size guidance 0 for scalars (keep every event);
- tbparse's `SummaryReader(...).scalars` (a pandas frame).

Wall and CPU time are of the reading alone (after imports); memory is the child's peak RSS
(VmHWM) above its RSS after imports, i.e. what the reading itself held, next to the event file's
size. Targets: tracemortem >= 5x faster than EventAccumulator; its memory <= 2x the file size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
MB = 10**6
TAGS = ("train/loss", "train/lr", "train/grad_norm", *(f"metrics/m{k}" for k in range(7)))
METHODS = ("tracemortem", "tracemortem analyze", "EventAccumulator", "tbparse")


def build(events: int) -> Path:
    folder = DATA / f"tensorboard-{events}"
    done = folder / "complete"
    if done.exists():
        return folder
    from torch.utils.tensorboard import SummaryWriter

    print(f"writing {events:,} scalar events with SummaryWriter (once) ...", file=sys.stderr)
    for stale in folder.glob("events.out.tfevents.*"):
        stale.unlink()
    with SummaryWriter(str(folder), max_queue=1000) as writer:
        for step in range(events // len(TAGS)):
            for k, tag in enumerate(TAGS):
                writer.add_scalar(tag, 1.0 / (step + 1) + k, step)
    done.write_text("")
    return folder


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def _read(method: str, folder: Path) -> int:
    """Read every scalar event of `folder` with `method`; return how many were read."""
    files = sorted(folder.glob("events.out.tfevents.*"))
    if method == "tracemortem":
        from tracemortem.load.tensorboard import read_run

        return read_run(".", folder, files).scalars.height
    if method == "tracemortem analyze":
        from tracemortem import analyze

        return analyze(folder).steps.height * len(TAGS)
    if method == "EventAccumulator":
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

        accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
        accumulator.Reload()
        return sum(len(accumulator.Scalars(tag)) for tag in accumulator.Tags()[SCALARS])
    if method == "tbparse":
        from tbparse import SummaryReader

        return len(SummaryReader(str(folder)).scalars)
    raise ValueError(method)


def _imports(method: str) -> None:
    """Import what the method needs before the clock starts."""
    if method.startswith("tracemortem"):
        import tracemortem.analysis  # noqa: F401
        import tracemortem.load.tensorboard as tb

        tb._readers(Path("."))
    elif method == "EventAccumulator":
        import tensorboard.backend.event_processing.event_accumulator  # noqa: F401
    else:
        import tbparse  # noqa: F401


def child(method: str, folder: str) -> None:
    _imports(method)
    base = _status_mb("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    count = _read(method, Path(folder))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"count": count, "wall": wall, "cpu": cpu, "base_mb": base, "peak_mb": _status_mb("VmHWM")}))


def measure(method: str, folder: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = build(args.events)
    size = sum(p.stat().st_size for p in folder.glob("events.out.tfevents.*")) / MB
    results = {m: measure(m, folder) for m in args.methods}
    print(f"\n{args.events:,} scalar events, event file {size:.1f} MB (python {sys.version.split()[0]})\n")
    print(f"{'reader':<22}{'events':>10}{'wall s':>9}{'cpu s':>8}{'read MB':>9}{'x file':>8}{'peak MB':>9}")
    for method, r in results.items():
        held = r["peak_mb"] - r["base_mb"]
        print(
            f"{method:<22}{r['count']:>10,}{r['wall']:>9.2f}{r['cpu']:>8.2f}{held:>9.1f}{held / size:>8.2f}"
            f"{r['peak_mb']:>9.0f}"
        )
    if "tracemortem" in results:
        ours = results["tracemortem"]
        print()
        for other in ("EventAccumulator", "tbparse"):
            if other in results:
                theirs = results[other]
                print(
                    f"tracemortem vs {other}: {theirs['wall'] / ours['wall']:.1f}x faster (wall), "
                    f"{theirs['cpu'] / ours['cpu']:.1f}x (cpu)"
                )
        held = ours["peak_mb"] - ours["base_mb"]
        fast = "EventAccumulator" not in results or results["EventAccumulator"]["wall"] / ours["wall"] >= 5
        print(
            f"targets: >= 5x EventAccumulator {'met' if fast else 'MISSED'}; "
            f"memory {held / size:.2f}x file size (<= 2x) {'met' if held <= 2 * size else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
