"""How heavy the HTML report is and how soon its charts are drawn: for each input, the file size,
the time to render it, and — in headless Chromium (Debian's, via Playwright) — when every chart
had been drawn, counted from navigation (the `tracemortem:draw-end` performance mark), median of
several loads.

    python benchmarks/report_draw.py                   # bundled samples + shared/real_traces if present
    python benchmarks/report_draw.py --loads 9 PATH…   # other inputs
    python benchmarks/report_draw.py --big             # also 2,000 params × 50,000 steps (synthetic)
    python benchmarks/report_draw.py --ranks 1024      # also 1,024 GPU ranks × 300 profiled steps (synthetic)

Targets (docs/report.md): a sample report ≤ 1.5 MB with every chart drawn ≤ 1 s after navigation;
2,000 params × 50,000 steps ≤ 10 MB; 1,024 ranks × 300 steps ≤ 10 MB.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from tracemortem import analyze, report
from tracemortem.analysis import Analysis

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real_traces"
CHROMIUM = "/usr/bin/chromium"


def default_inputs() -> list[Path]:
    inputs = sorted((ROOT / "sample_traces").iterdir())
    inputs += [REAL / name for name in ("nccl_a100", "alexnet_a100", "diff_control_a100") if (REAL / name).exists()]
    return inputs


def big_analysis(params: int = 2000, steps: int = 50_000) -> Analysis:
    """A run the size of a real long job, built straight as frames (no recorder needed)."""
    base = analyze(ROOT / "sample_traces" / "healthy")
    i = pl.int_range(0, params * steps, dtype=pl.Int64)
    grads = (
        pl.LazyFrame()
        .select(i.alias("i"))
        .select(
            (pl.col("i") // params).alias("step"),
            (pl.col("i") % params).cast(pl.Int32).alias("param_id"),
            (10.0 ** (((pl.col("i") * 7919) % 600001) / 100000.0 - 4)).cast(pl.Float32).alias("norm"),
            pl.lit(0, pl.Int64).alias("nonfinite"),
        )
    )
    names = pl.DataFrame(
        {
            "param_id": pl.Series(range(params), dtype=pl.Int32),
            "name": [f"blocks.{p // 8}.mlp{p % 8}.weight" for p in range(params)],
        }
    )
    step_frame = pl.DataFrame(
        {
            "step": range(steps),
            "loss": [2.0 / (1 + s / 1000) for s in range(steps)],
            "grad_norm": [1.0 + (s % 97) / 97 for s in range(steps)],
            "duration_s": [0.1 + (s % 13) / 100 for s in range(steps)],
            "rank": pl.Series([0] * steps, dtype=pl.Int32),
        }
    )
    base.grads, base.params, base.steps = grads, names, step_frame
    return base


def ranks_analysis(ranks: int, steps: int = 300) -> Analysis:
    """The report stage's input for a big job: per (rank, step) profiled step times with their GPU
    idle time (two stragglers), a GPU breakdown per rank, and the findings the rules make of them."""
    from tracemortem.config import Config
    from tracemortem.detect import perf
    from tracemortem.detect.ranks import merge_across_ranks
    from tracemortem.run_facts import RunFacts
    from tracemortem.timing import Timing

    base = analyze(ROOT / "sample_traces" / "healthy")
    i = pl.int_range(0, ranks * steps, dtype=pl.Int64, eager=True)
    rank, step = i // steps, i % steps + 1
    slower = rank.is_in([ranks // 3, 2 * ranks // 3]).cast(pl.Float64) * 0.3 + 1
    duration = ((100e6 + (i * 7919 % 1000) * 1e4) * slower).cast(pl.Int64)
    step_times = pl.DataFrame({"rank": rank, "session": 0, "step": step, "duration_ns": duration}).with_columns(
        (pl.col("duration_ns") * share).cast(pl.Int64).alias(name)
        for name, share in (
            ("compute_ns", 0.6),
            ("data_loading_ns", 0.1),
            ("host_sync_ns", 0.0),
            ("other_ns", 0.3),
            ("total_data_loading_ns", 0.1),
            ("total_host_sync_ns", 0.0),
            ("total_gpu_idle_ns", 0.4),
        )
    )
    gpu = {"idle_us": 12e6, "compute_us": 15e6, "non_compute_us": 3e6, "span_us": 30e6}
    entries = [{"rank": r, "steps": steps, "step_time_s": 0.1, "gpu": dict(gpu)} for r in range(ranks)]
    timing = Timing(pl.DataFrame(), pl.DataFrame(), step_times, pl.DataFrame(), ranks=entries)
    inputs = perf.PerfInputs.of(timing, None, Config())
    base.findings = merge_across_ranks(
        base.findings + perf.straggler_ranks(inputs, Config()) + perf.gpu_idle(inputs, Config())
    )
    facts = {"path": f"synthetic {ranks} ranks", "kind": "traces", "world_size": ranks, "ranks": entries}
    base.run, base.step_times = RunFacts.from_dict({**facts, "steps": timing.step_span()}), step_times
    return base


def draw_times(html: Path, loads: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"], headless=True)
        for _ in range(loads):
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.goto(html.as_uri(), wait_until="load")
            page.wait_for_function("performance.getEntriesByName('tracemortem:draw-end').length > 0")
            times.append(page.evaluate("performance.getEntriesByName('tracemortem:draw-end')[0].startTime"))
            page.close()
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--ranks", type=int, nargs="*", default=[])
    args = parser.parse_args()
    cases: list[tuple[str, Analysis]] = [(str(p), analyze(p)) for p in (args.inputs or default_inputs())]
    if args.big:
        cases.append(("synthetic 2,000 params × 50,000 steps", big_analysis()))
    cases += [(f"synthetic {n:,} ranks × 300 steps", ranks_analysis(n)) for n in args.ranks]
    print("| input | size | render | charts drawn after navigation (median) | slowest load |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, analysis in cases:
            started = time.perf_counter()
            html = report.render(analysis, "html")
            render_s = time.perf_counter() - started
            path = Path(tmp) / "report.html"
            path.write_text(html, encoding="utf-8")
            times = draw_times(path, args.loads)
            name = label.replace(str(ROOT) + "/", "").replace(str(REAL.parent) + "/", "")
            print(
                f"| {name} | {len(html.encode()) / 1e6:.2f} MB | {render_s:.2f} s "
                f"| {statistics.median(times):.0f} ms | {max(times):.0f} ms |"
            )


if __name__ == "__main__":
    main()
