"""Trace → polars parse benchmark. One command, prints a table:

    python benchmarks/parse_speed.py                 # 50 MB, 300 MB, 1 GB
    python benchmarks/parse_speed.py --sizes 50 300  # quicker

Builds large traces from real profiler output: a small transformer trained on CPU under
torch.profiler (record_shapes), its events replicated with fresh ids and shifted timestamps until
the file reaches the size (cached in benchmarks/.data/). Every method runs in a fresh subprocess;
wall time and CPU time (all threads of the child and of its own children, i.e. the loader's
worker processes) are medians of --repeat runs of the work after imports, peak RSS the child's
VmHWM (whole process, imports included); for the loader, the peak of its process tree: its own
peak plus its workers' peaks while they live, or its own peak over the whole load if larger.
Targets are judged on wall time (the loader's workers spend more CPU in all to finish sooner);
the CPU-time ratio is printed beside each for reference. The RSS right after imports (the
interpreter and libraries, before any trace is read) is printed too: at small sizes it, not the
trace, dominates the peak. HTA runs from the venv
benchmarks/.data/hta-venv when it exists (`pip install HolisticTraceAnalysis` there).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from proctree import status_mb  # benchmarks/ is on sys.path: this script runs as a file

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
HTA_PYTHON = DATA / "hta-venv" / "bin" / "python"
MB = 10**6
# Issue 3 sets the targets on a 300 MB trace. Smaller traces are shown for linearity: there the
# interpreter and libraries (~60 MB RSS) and the workers' start-up are a large part of the figures.
JUDGED_FROM_MB = 250

# --- building the traces -------------------------------------------------------------------


def record_base(path: Path) -> None:
    """A real torch.profiler trace of a small transformer training on CPU."""
    import torch
    from torch import nn
    from torch.profiler import ProfilerActivity, profile, schedule

    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2)
    head = nn.Linear(64, 10)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], 1e-3)
    with profile(
        activities=[ProfilerActivity.CPU],
        record_shapes=True,
        schedule=schedule(wait=1, warmup=1, active=6),
        on_trace_ready=lambda p: p.export_chrome_trace(str(path)),
    ) as prof:
        for _ in range(8):
            x = torch.randn(8, 32, 64)
            loss = nn.functional.cross_entropy(head(model(x).mean(1)), torch.randint(0, 10, (8,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            prof.step()


_NUMBER = re.compile(rb'"(ts|External id|correlation|id|Record function id|Ev Idx)": (-?\d+(?:\.\d+)?)')


def build(size_mb: int) -> Path:
    """Replicate the base trace's events (fresh ids, shifted time) up to `size_mb` MB."""
    DATA.mkdir(parents=True, exist_ok=True)
    out = DATA / f"cpu{size_mb}.json"
    if out.exists() and (DATA / f"cpu{size_mb}.json.gz").exists():
        return out
    base = DATA / "base_cpu.json"
    if not base.exists():  # in a child process, so torch does not inflate this one
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                f"import parse_speed; parse_speed.record_base(parse_speed.Path({str(base)!r}))",
            ],
            check=True,
        )
    text = base.read_bytes()
    head, _, rest = text.partition(b'"traceEvents": [')
    body, _, _ = rest.rpartition(b"]")
    body = body.strip().rstrip(b",")
    events = json.loads(text)["traceEvents"]
    span = max(e["ts"] + e.get("dur", 0) for e in events if "ts" in e) - min(e["ts"] for e in events if "ts" in e)
    id_span = 10 ** len(str(max(len(events), 1000) * 10))
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(head + b'"traceEvents": [\n')
        k, written = 0, 0
        while written < size_mb * MB:

            def shift(m: re.Match, k: int = k) -> bytes:
                key, value = m.group(1), m.group(2)
                if key == b"ts":
                    return b'"ts": %.3f' % (float(value) + k * (span + 1000.0))
                return b'"%s": %d' % (key, int(float(value)) + k * id_span)

            chunk = _NUMBER.sub(shift, body)
            f.write((b",\n" if k else b"") + chunk)
            written += len(chunk)
            k += 1
        f.write(b'\n  ],"traceName": "bench"\n}')
    tmp.rename(out)
    with open(out, "rb") as src, gzip.open(out.with_suffix(".json.gz"), "wb", compresslevel=6) as dst:
        while block := src.read(16 * 2**20):
            dst.write(block)
    return out


# --- the methods (each runs in its own process) --------------------------------------------


def run_method(method: str, path: str) -> None:
    import gc

    # Imports happen outside the timed part: the benchmark is about parsing, and every
    # method pays its interpreter start and imports alike.
    if method == "msgspec_typed":
        import msgspec

        from tracemortem.load.chrome import Event
    elif method.startswith("tracemortem"):
        from tracemortem.load.traces import load_traces

        workers_peak = _watch_workers()
    elif method == "hta":
        from hta.trace_analysis import TraceAnalysis
    base = status_mb("VmRSS")
    start, cpu_start = time.perf_counter(), _cpu()
    if method == "msgspec_typed":
        import msgspec

        doc = msgspec.defstruct("Doc", [("traceEvents", list[Event])])
        n = len(msgspec.json.decode(Path(path).read_bytes(), type=doc).traceEvents)
    elif method == "orjson":
        import orjson

        gc.disable()
        n = len(orjson.loads(Path(path).read_bytes())["traceEvents"])
    elif method == "json":
        n = len(json.loads(Path(path).read_bytes())["traceEvents"])
    elif method == "gunzip":
        import zlib

        z, n = zlib.decompressobj(31), 0
        with open(path, "rb") as f:
            while block := f.read(4 * 2**20):
                n += len(z.decompress(block))
    elif method.startswith("tracemortem"):
        n = load_traces({Path(path): 0}).events.height
    elif method == "hta":
        link = Path(path).parent / f"hta-{Path(path).stem.split('.')[0]}"
        link.mkdir(exist_ok=True)
        target = link / "rank-0.json"
        if not target.exists():
            target.symlink_to(Path(path).resolve())
        analyzer = TraceAnalysis(trace_dir=str(link))
        n = len(analyzer.t.get_trace(0))
    else:
        raise SystemExit(f"unknown method {method}")
    wall, cpu = time.perf_counter() - start, _cpu() - cpu_start
    # VmHWM belongs to this process image; ru_maxrss would include the forking parent's.
    own = status_mb("VmHWM")
    tree = max(own, workers_peak[0]) if method.startswith("tracemortem") else own
    print(n, wall, own, cpu, tree, base)


def _watch_workers() -> list[int]:
    """Peak memory of the loader's process tree while its workers live: this process's peak so far
    plus each worker's, read when the workers are closed (all their answers are in by then, so
    nothing is left to grow). A bound on the tree's simultaneous RSS over that time; after it only
    this process remains, whose own peak covers the rest."""
    from tracemortem.load.workers import Workers

    peak = [0]
    close = Workers.close

    def measured_close(self: Workers) -> None:
        if self._procs:
            peak[0] = max(peak[0], status_mb("VmHWM") + sum(status_mb("VmHWM", proc.pid) for proc in self._procs))
        close(self)

    Workers.close = measured_close
    return peak


def _cpu() -> float:
    """CPU seconds of this process and of its ended child processes (the loader's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(method: str, path: Path, repeat: int) -> tuple[float, float, float, float] | None:
    python = str(HTA_PYTHON) if method == "hta" else sys.executable
    walls, cpus, rss, trees, bases = [], [], [], [], []
    for _ in range(repeat):
        proc = subprocess.Popen(
            [python, __file__, "--run", method, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")},
        )
        stdout, stderr = proc.communicate()
        out, err = stdout.decode().strip(), stderr.decode().strip()
        if proc.returncode != 0:
            print(f"  {method} failed: {err.splitlines()[-1] if err else proc.returncode}", file=sys.stderr)
            return None
        fields = out.splitlines()[-1].split()  # HTA may log to stdout before our line
        walls.append(float(fields[1]))
        rss.append(int(fields[2]))
        cpus.append(float(fields[3]))
        trees.append(int(fields[4]))
        bases.append(int(fields[5]))
    return statistics.median(walls), max(rss), statistics.median(cpus), max(trees), max(bases)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 300, 1000], help="trace sizes in MB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-hta", action="store_true")
    parser.add_argument("--run", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_method(*args.run)
        return
    hta = HTA_PYTHON.exists() and not args.no_hta
    if not hta:
        print(f"HTA not run: no {HTA_PYTHON} (python -m venv {DATA}/hta-venv && .../pip install HolisticTraceAnalysis)")
    rows = []
    for size in args.sizes:
        plain = build(size)
        gz = plain.with_suffix(".json.gz")
        mb = plain.stat().st_size / MB
        print(f"\n## cpu{size}: {mb:.0f} MB plain, {gz.stat().st_size / MB:.1f} MB gzip", flush=True)
        print(
            f"| method | file | wall s (median of {args.repeat}, after imports) | CPU s (median) | MB/s (wall) | RSS after imports MB | own peak RSS MB | tree peak RSS MB (with workers) | tree RSS / trace size |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        results = {}
        methods = [
            ("msgspec_typed", plain),
            ("orjson", plain),
            ("json", plain),
            ("gunzip", gz),
            ("tracemortem", plain),
            ("tracemortem_gz", gz),
        ]
        if hta:
            methods.append(("hta", plain))
        for method, path in methods:
            result = measure(method, path, 1 if method in ("hta", "json") else args.repeat)
            if result is None:
                print(f"| {method} | {path.name} | failed | | | | | | |", flush=True)
                continue
            wall, rss, cpu, tree, base = result
            results[method] = (wall, rss, cpu, tree)
            print(
                f"| {method} | {path.name} | {wall:.2f} | {cpu:.2f} | {mb / wall:.0f} | {base:.0f} | {rss:.0f} | {tree:.0f} | {tree / mb:.2f} |",
                flush=True,
            )
        rows.append((size, mb, results))
    print(
        f"\n## targets (set on the 300 MB trace; judged from {JUDGED_FROM_MB} MB up; PASS when the value meets the target)"
    )
    print("| size | check | value (speed: wall time) | target | verdict | CPU-time ratio (not judged) |")
    print("|---|---|---|---|---|---|")
    for size, mb, r in rows:
        if "tracemortem" not in r:
            continue
        tm = r["tracemortem"]
        checks = []  # (name, wall ratio, cpu ratio or None, target, op)
        if "msgspec_typed" in r:
            ms = r["msgspec_typed"]
            checks.append(("load / msgspec_typed", tm[0] / ms[0], tm[2] / ms[2], 2.5, "≤"))
        if "hta" in r:
            checks.append(("hta / load", r["hta"][0] / tm[0], r["hta"][2] / tm[2], 15.0, "≥"))
        if "tracemortem_gz" in r and "gunzip" in r:
            gz, gun = r["tracemortem_gz"], r["gunzip"]
            checks.append(("load_gz / (load + gunzip)", gz[0] / (tm[0] + gun[0]), gz[2] / (tm[2] + gun[2]), 1.5, "≤"))
        # With worker processes, their memory counts too: the process tree's peak.
        checks.append(("peak RSS / trace size (plain)", tm[3] / mb, None, 2.0, "≤"))
        if "tracemortem_gz" in r:
            checks.append(("peak RSS / trace size (gzip)", r["tracemortem_gz"][3] / mb, None, 2.0, "≤"))
        for name, value, cpu, target, op in checks:
            verdict = "PASS" if (value <= target if op == "≤" else value >= target) else "FAIL"
            if mb < JUDGED_FROM_MB:
                verdict = f"({verdict}; not judged below {JUDGED_FROM_MB} MB)"
            cpu_text = "" if cpu is None else f"{cpu:.2f}"
            print(f"| {size} MB | {name} | {value:.2f} | {op} {target} | {verdict} | {cpu_text} |")
    if len(rows) > 1 and all("tracemortem" in r[2] for r in rows):
        wall = " → ".join(f"{r[2]['tracemortem'][0] / r[1] * 1000:.1f}" for r in rows)
        cpu = " → ".join(f"{r[2]['tracemortem'][2] / r[1] * 1000:.1f}" for r in rows)
        print(f"\nlinearity (ms per MB, {' → '.join(str(r[0]) for r in rows)} MB): wall {wall}; CPU {cpu}")
        # Memory: the peak's growth per MB of trace from one size to the next (fixed costs cancel).
        growth = " → ".join(
            f"{(b[2]['tracemortem'][3] - a[2]['tracemortem'][3]) / (b[1] - a[1]):.2f}"
            for a, b in itertools.pairwise(rows)
        )
        print(f"memory growth (MB of tree peak per MB of trace, between consecutive sizes): {growth}")


if __name__ == "__main__":
    main()
