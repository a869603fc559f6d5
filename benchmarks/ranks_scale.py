"""Many-ranks benchmark: `tracemortem report DIR --format json` on N-rank folders. One command,
prints a table:

    python benchmarks/ranks_scale.py                  # 8, 32, 128, 1024 ranks
    python benchmarks/ranks_scale.py --quick          # 8, 32
    python benchmarks/ranks_scale.py --ranks 8,128 --trace PATH
    python benchmarks/ranks_scale.py --ranks 8,128 --gzip     # rank{R}.json.gz folders

An N-rank folder holds N copies of one real trace (default: the A100 NCCL trace of
/work/shared/real_traces/nccl_a100), each rewritten as a distinct rank of an N-rank job: its
`distributedInfo` says rank R of world size N (process group of N ranks), as every rank's own
profiler writes it, and the file is named `rank{R}.json`. Folders are built once into
benchmarks/.data/ranks/ (git-ignored; plain JSON, N x the trace's size on disk). Every run is a
fresh subprocess; wall time, CPU time (user + sys of the child and its workers) and the peak RSS
of its process tree come from benchmarks/proctree.py. Columns for `--jobs 1`, `--jobs 2` and
`--engine ray` run only when `tracemortem report --help` offers those options. HTA 0.5.0
(`TraceAnalysis` + `get_temporal_breakdown`) runs at 8 and 32 ranks when it imports.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from proctree import Measured, run_measured  # benchmarks/ is on sys.path: this script runs as a file

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data" / "ranks"
DEFAULT_TRACE = Path("/work/shared/real_traces/nccl_a100")
MB = 10**6
DISK_MARGIN_BYTES = 5 * 10**9  # left free for everyone else on the machine
HTA_RANKS = (8, 32)
_DISTRIBUTED_INFO = re.compile(rb'"distributedInfo"\s*:\s*')


# --- building the N-rank folders ----------------------------------------------------------


def trace_text(trace: Path) -> tuple[str, bytes]:
    """The trace file (the first in a folder) as plain JSON bytes, and a name for its folders."""
    if trace.is_dir():
        files = sorted(p for p in trace.iterdir() if p.name.endswith((".json", ".json.gz")))
        if not files:
            raise SystemExit(f"no .json or .json.gz trace in {trace}")
        trace = files[0]
    raw = trace.read_bytes()
    text = gzip.decompress(raw) if trace.name.endswith(".gz") else raw
    return trace.name.split(".")[0] if trace.parent.name == "" else trace.parent.name, text


def rank_copy(text: bytes, rank: int, world: int) -> bytes:
    """`text` with its distributedInfo saying rank `rank` of `world` (added when absent)."""
    found = _DISTRIBUTED_INFO.search(text)
    if found is None:
        info: dict = {}
        head, tail = b"{", text[text.index(b"{") + 1 :]
    else:
        decoded = text.decode()  # the envelope sits at the start: offsets match for ASCII JSON
        info, end = json.JSONDecoder().raw_decode(decoded, found.end())
        head, tail = text[: found.start()], text[end:]
        if tail.lstrip().startswith(b","):
            tail = tail.lstrip()[1:]
    pg = [{**g, "pg_size": world, "ranks": list(range(world))} for g in info.get("pg_config", [])]
    new = {**info, "rank": rank, "world_size": world, **({"pg_config": pg} if pg else {})}
    last = tail.lstrip().startswith(b"}")  # it was the envelope's last entry: no comma after it
    return head + b'"distributedInfo": ' + json.dumps(new).encode() + (b"" if last else b",") + tail


def build(name: str, text: bytes, ranks: int, gzipped: bool = False) -> Path:
    """The N-rank folder (built once): `rank{R}.json`, or `rank{R}.json.gz` as torch's
    `tensorboard_trace_handler(use_gzip=True)` writes them."""
    label = f"{name}-{ranks}{'-gz' if gzipped else ''}"
    folder, done = DATA / label, DATA / f"{label}.complete"
    if done.exists():
        return folder
    need = len(text) * ranks // (10 if gzipped else 1)
    free = shutil.disk_usage(DATA.parent if DATA.parent.exists() else HERE).free
    if need + DISK_MARGIN_BYTES > free:
        raise SystemExit(f"{ranks} ranks need {need / 1e9:.1f} GB in {DATA}; only {free / 1e9:.1f} GB free")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for rank in range(ranks):
        copy = rank_copy(text, rank, ranks)
        if gzipped:
            (folder / f"rank{rank}.json.gz").write_bytes(gzip.compress(copy, compresslevel=6, mtime=0))
        else:
            (folder / f"rank{rank}.json").write_bytes(copy)
    done.touch()
    return folder


# --- running ------------------------------------------------------------------------------


@dataclass
class Row:
    ranks: int
    variant: str
    run: Measured | None  # None: not built / not installed
    findings: int | None = None
    world_size: int | None = None
    note: str = ""


def tracemortem_command() -> list[str]:
    script = Path(sys.executable).parent / "tracemortem"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracemortem.cli"]


def variants() -> dict[str, list[str] | None]:
    """Each engine column with its extra options, or None where the CLI does not offer it."""
    help_text = subprocess.run([*tracemortem_command(), "report", "--help"], capture_output=True, text=True).stdout
    jobs, ray = "--jobs" in help_text, "--engine" in help_text
    return {
        "default": [],
        "--jobs 1": ["--jobs", "1"] if jobs else None,
        "--jobs 2": ["--jobs", "2"] if jobs else None,
        "--engine ray": ["--engine", "ray", "--jobs", "2"] if ray and jobs else (["--engine", "ray"] if ray else None),
    }


def run_report(folder: Path, ranks: int, variant: str, extra: list[str] | None) -> Row:
    if extra is None:
        return Row(ranks, variant, None, note="n/a (not built)")
    command = [*tracemortem_command(), "report", str(folder), "--format", "json", "-o", "-", "--fail-on", "never"]
    run = run_measured([*command, *extra])
    if run.returncode != 0:
        last = run.stderr.decode(errors="replace").strip().splitlines()
        return Row(ranks, variant, None, note=f"failed (exit {run.returncode}): {last[-1] if last else ''}")
    doc = json.loads(run.stdout)
    return Row(ranks, variant, run, len(doc.get("findings", [])), doc.get("run", {}).get("world_size"))


def hta_available(python: str) -> str | None:
    """None when HTA imports in `python`, else why not."""
    probe = subprocess.run([python, "-c", "import hta.trace_analysis"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return "HTA not installed (pip install holistictraceanalysis==0.5.0 after torch)"


def run_hta(folder: Path, ranks: int, python: str) -> Row:
    run = run_measured([python, __file__, "--hta", str(folder)])
    if run.returncode != 0:
        last = run.stderr.decode(errors="replace").strip().splitlines()
        return Row(ranks, "HTA 0.5.0", None, note=f"failed (exit {run.returncode}): {last[-1] if last else ''}")
    return Row(ranks, "HTA 0.5.0", run, note="TraceAnalysis + get_temporal_breakdown")


def hta_child(folder: str) -> None:
    from hta.trace_analysis import TraceAnalysis

    breakdown = TraceAnalysis(trace_dir=folder).get_temporal_breakdown(visualize=False)
    print(len(breakdown))


# --- the tables ---------------------------------------------------------------------------


def print_rows(rows: list[Row], size_mb: float) -> None:
    base = {r.variant: r for r in rows if r.ranks == min(x.ranks for x in rows) and r.run}
    print(
        "| ranks | JSON in | engine | wall s | CPU s | peak RSS MB (tree) | findings | world_size | RSS / first row | time per rank / first row |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.run is None:
            print(f"| {r.ranks} | {r.ranks * size_mb:.0f} MB | {r.variant} | {r.note} | | | | | | |")
            continue
        first = base.get(r.variant)
        rss = f"{r.run.peak_rss_mb / first.run.peak_rss_mb:.2f}" if first and first.run else ""
        per_rank = f"{(r.run.wall_s / r.ranks) / (first.run.wall_s / first.ranks):.2f}" if first and first.run else ""
        found = "" if r.findings is None else r.findings
        world = "" if r.world_size is None else r.world_size
        print(
            f"| {r.ranks} | {r.ranks * size_mb:.0f} MB | {r.variant} | {r.run.wall_s:.1f} | {r.run.cpu_s:.1f} "
            f"| {r.run.peak_rss_mb} | {found} | {world} | {rss} | {per_rank} |"
        )


def print_targets(rows: list[Row], issue_trace: bool) -> None:
    """The issue's targets, per engine that ran, with the figures they need (the absolute 10 s
    at 128 ranks is set for the issue's trace, the default)."""
    print("\n| engine | target | value | verdict |")
    print("|---|---|---|---|")
    hta = {r.ranks: r.run for r in rows if r.variant == "HTA 0.5.0" and r.run}
    for variant in dict.fromkeys(r.variant for r in rows if r.variant != "HTA 0.5.0"):
        by_n = {r.ranks: r for r in rows if r.variant == variant and r.run}
        checks = []
        if 8 in by_n and 1024 in by_n:
            value = by_n[1024].run.peak_rss_mb / by_n[8].run.peak_rss_mb
            checks.append(("peak RSS 1024 ranks <= 1.5x 8 ranks", f"{value:.2f}x", value <= 1.5))
        if 128 in by_n and 1024 in by_n:
            value = (by_n[1024].run.wall_s / 1024) / (by_n[128].run.wall_s / 128)
            checks.append(("time per rank 1024 <= 1.2x 128", f"{value:.2f}x", value <= 1.2))
        if 128 in by_n and issue_trace:
            checks.append(("128 ranks <= 10 s", f"{by_n[128].run.wall_s:.1f} s", by_n[128].run.wall_s <= 10))
        if 8 in by_n and 128 in by_n:
            value = by_n[128].run.peak_rss_mb / by_n[8].run.peak_rss_mb
            checks.append(("peak RSS 128 ranks <= 2.5x 8 ranks", f"{value:.2f}x", value <= 2.5))
            value = by_n[128].run.wall_s / by_n[8].run.wall_s
            cpu = by_n[128].run.cpu_s / by_n[8].run.cpu_s
            checks.append(("time 128 ranks <= 12x 8 ranks", f"{value:.2f}x wall ({cpu:.2f}x CPU)", value <= 12))
            same = by_n[128].findings == by_n[8].findings
            checks.append(
                (
                    "findings at 128 identical ranks = at 8 (one per cause)",
                    f"{by_n[128].findings} vs {by_n[8].findings}",
                    same,
                )
            )
            checks.append(("world_size 128", str(by_n[128].world_size), by_n[128].world_size == 128))
        if 32 in by_n and 32 in hta:
            value = hta[32].wall_s / by_n[32].run.wall_s
            cpu = hta[32].cpu_s / by_n[32].run.cpu_s  # beside it: on a loaded machine wall time is noisy
            checks.append((">= 10x faster than HTA at 32 ranks", f"{value:.1f}x wall ({cpu:.1f}x CPU)", value >= 10))
        for name, value, met in checks:
            print(f"| {variant} | {name} | {value} | {'met' if met else 'not met'} |")


def _progress(row: Row) -> None:
    """Each row on stderr as soon as it is measured (a full run takes long)."""
    figures = (
        f"{row.run.wall_s:.1f} s wall, {row.run.cpu_s:.1f} s CPU, {row.run.peak_rss_mb} MB" if row.run else row.note
    )
    load = os.getloadavg()[0]
    print(
        f"  {row.ranks} ranks {row.variant}: {figures}, findings {row.findings}; load {load:.1f}",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="8,32,128,1024", help="comma-separated rank counts")
    parser.add_argument("--quick", action="store_true", help="8 and 32 ranks only")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="a trace file, or a folder holding one")
    parser.add_argument("--gzip", action="store_true", help="folders of rank{R}.json.gz instead of plain JSON")
    parser.add_argument("--no-hta", action="store_true")
    parser.add_argument(
        "--variants", help="comma-separated engine columns to run (default: all), e.g. '--jobs 2,--engine ray'"
    )
    parser.add_argument(
        "--hta-python",
        default=sys.executable,
        help="the interpreter that runs HTA (a venv with torch and holistictraceanalysis==0.5.0)",
    )
    parser.add_argument("--hta", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hta:
        hta_child(args.hta)
        return
    if not args.trace.exists():
        raise SystemExit(f"no trace at {args.trace} (pass --trace PATH)")
    counts = [8, 32] if args.quick else sorted({int(n) for n in args.ranks.split(",")})
    name, text = trace_text(args.trace)
    size_mb = len(text) / MB
    columns = variants()
    if args.variants:
        wanted = args.variants.split(",")
        columns = {name: extra for name, extra in columns.items() if name in wanted}
    hta_missing = "--no-hta given" if args.no_hta else hta_available(args.hta_python)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    files = "gzipped, rank{R}.json.gz" if args.gzip else "plain, rank{R}.json"
    print(f"trace {args.trace} ({size_mb:.1f} MB JSON per rank; {files}); {os.cpu_count()} cores; load average {load}")
    if hta_missing:
        print(f"HTA not run: {hta_missing}")
    rows: list[Row] = []
    for ranks in counts:
        folder = build(name, text, ranks, args.gzip)
        for variant, extra in columns.items():
            rows.append(run_report(folder, ranks, variant, extra))
            _progress(rows[-1])
        if ranks in HTA_RANKS and not hta_missing:
            rows.append(run_hta(folder, ranks, args.hta_python))
            _progress(rows[-1])
        print(f"  {ranks} ranks done; load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    print()
    print_rows(rows, size_mb)
    print_targets(rows, args.trace.resolve() == DEFAULT_TRACE.resolve())
    print(f"\nload average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
