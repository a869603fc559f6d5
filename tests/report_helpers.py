"""Builds `Analysis` objects straight from small polars frames, so report tests do not depend
on the recorder, the trace loader or the detectors."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from tracemortem.analysis import Analysis
from tracemortem.findings import Finding, sort_findings
from tracemortem.run_facts import RunFacts

HOSTILE = "</script><img src=x onerror=\"window.__pwned=1;console.log('PWNED')\">'\"{{ 7*7 }}|`*_"

SPIKE_STEP = 40
NAN_STEP = 70
SLOW_STEP = 25


def norm_of(step: int, pid: int) -> float:
    """Deterministic, varied gradient norms: decaying with depth, a spike, a NaN, one dead param."""
    if pid == 2:
        return 0.0
    if step == NAN_STEP and pid == 0:
        return math.nan
    value = 10 ** (-1 - 0.15 * pid) * (1 + 0.3 * math.sin(step * 0.7 + pid))
    return value * (50 if step == SPIKE_STEP else 1)


def make_analysis(
    n_params: int = 6,
    n_steps: int = 100,
    ranks: int = 1,
    names: list[str] | None = None,
    op_names: list[str] | None = None,
) -> Analysis:
    names = names or [f"layers.{i}.weight" for i in range(n_params)]
    n_params = len(names)
    step_rows = []
    for rank in range(ranks):
        for s in range(n_steps):
            loss = 2.5 * math.exp(-s / 40) + 0.05 * math.sin(s) + (3.0 if s == SPIKE_STEP + 1 else 0.0)
            grad = math.sqrt(sum(norm_of(s, p) ** 2 for p in range(n_params)))
            step_rows.append(
                {
                    "step": s,
                    "time": 1_700_000_000.0 + s,
                    "duration_s": 0.1 * (1 + 0.05 * rank) * (4 if s == SLOW_STEP else 1),
                    "loss": math.nan if s == NAN_STEP else loss,
                    "lr": 1e-3,
                    "grad_norm": grad,
                    "nonfinite": 1 if s == NAN_STEP else 0,
                    "skipped": False,
                    "scale": None,
                    "mem_allocated": None,
                    "mem_reserved": None,
                    "max_mem_allocated": None,
                    "rank": rank,
                }
            )
    steps = pl.DataFrame(
        step_rows,
        schema_overrides={
            "loss": pl.Float32,
            "grad_norm": pl.Float32,
            "rank": pl.Int32,
            "scale": pl.Float32,
            "mem_allocated": pl.Int64,
            "mem_reserved": pl.Int64,
            "max_mem_allocated": pl.Int64,
        },
    )
    grads = pl.DataFrame(
        [
            {
                "step": s,
                "param_id": p,
                "norm": norm_of(s, p),
                "absmax": norm_of(s, p),
                "nonfinite": int(not math.isfinite(norm_of(s, p))),
                "weight_norm": 1.0 + p,
                "update_norm": 10 ** (-2 - p / 2) * (1 + p) * (1 + 0.2 * math.cos(s + p)) if s % 2 == 0 else None,
            }
            for s in range(n_steps)
            for p in range(n_params)
        ],
        schema_overrides={
            "param_id": pl.Int32,
            "norm": pl.Float32,
            "absmax": pl.Float32,
            "weight_norm": pl.Float32,
            "update_norm": pl.Float32,
        },
    ).lazy()
    params = pl.DataFrame(
        {
            "param_id": list(range(n_params)),
            "name": names,
            "shape": ["(8, 8)"] * n_params,
            "numel": [64] * n_params,
            "dtype": ["float32"] * n_params,
            "order": list(reversed(range(n_params))),
        },
        schema_overrides={"param_id": pl.Int32},
    )
    op_names = op_names or ["aten::mm", "aten::addmm", "aten::relu", "aten::copy_", "Optimizer.step#AdamW.step"]
    # The frames the timing stage produces (docs/architecture.md): integer nanoseconds.
    n_ops = len(op_names)
    ops = pl.DataFrame(
        {
            "name": op_names,
            "input_dims": ["[[8, 8], [8, 8]]"] * n_ops,
            "cat": ["cpu_op"] * n_ops,
            "calls": [100 * (i + 1) for i in range(n_ops)],
            "total_ns": [5_000_000 // (i + 1) for i in range(n_ops)],
            "self_ns": [4_000_000 // (i + 1) for i in range(n_ops)],
            "p50_ns": [40_000.0 / (i + 1) for i in range(n_ops)],
            "p95_ns": [45_000.0 / (i + 1) for i in range(n_ops)],
            "max_ns": [50_000 // (i + 1) for i in range(n_ops)],
            "gpu_ns": [3_000_000 // (i + 1) for i in range(n_ops)],
        },
        schema_overrides={"name": pl.Categorical, "cat": pl.Categorical, "calls": pl.UInt32},
    )
    k = min(3, n_ops)
    kernels = pl.DataFrame(
        {
            "name": [f"kernel<{n}>" for n in op_names[:k]],
            "kind": ["kernel"] * k,
            "type": ["computation"] * k,
            "calls": [10, 20, 30][:k],
            "total_ns": [900_000, 600_000, 300_000][:k],
            "mean_ns": [90_000.0, 30_000.0, 10_000.0][:k],
            "max_ns": [95_000, 40_000, 11_000][:k],
            "ranks": [ranks] * k,
            "hta_sum_us": [900, 600, 300][:k],
        },
        schema_overrides={"calls": pl.UInt32, "ranks": pl.UInt32},
    )
    per_rank = 5 * ranks
    step_times = pl.DataFrame(
        {
            "rank": [r for r in range(ranks) for _ in range(5)],
            "step": [s for _ in range(ranks) for s in range(20, 25)],
            "ts_ns": [s * 100_000_000 for _ in range(ranks) for s in range(20, 25)],
            "duration_ns": [100_000_000] * per_rank,
            "compute_ns": [60_000_000] * per_rank,
            "comm_ns": [10_000_000] * per_rank,
            "memcpy_ns": [0] * per_rank,
            "memset_ns": [0] * per_rank,
            "data_loading_ns": [20_000_000] * per_rank,
            "host_sync_ns": [0] * per_rank,
            "other_ns": [10_000_000] * per_rank,
            "total_gpu_idle_ns": [10_000_000] * per_rank,
            "total_data_loading_ns": [20_000_000] * per_rank,
            "total_host_sync_ns": [0] * per_rank,
        },
        schema_overrides={"rank": pl.Int32},
    )
    findings = sort_findings(
        [
            Finding(
                "nonfinite-gradient",
                "error",
                f"NaN gradient in {names[0]}",
                "The first non-finite gradient appeared here.",
                step=NAN_STEP,
                rank=0,
                subject=names[0],
                evidence={"nonfinite": 1, "norm": math.nan},
                suggestion="Lower the learning rate.",
            ),
            Finding(
                "exploding-gradient",
                "warning",
                "Gradient norm jumped 50x",
                f"Global gradient norm at step {SPIKE_STEP} is 50x its median.",
                step=SPIKE_STEP,
                rank=0,
                evidence={"grad_norm": 12.5, "median": 0.25, "ratio": 50.0},
                suggestion="Clip gradients.",
            ),
            Finding(
                "dead-parameter",
                "warning",
                f"{names[2]} never receives gradient",
                "Its gradient is zero on every recorded step.",
                subject=names[2],
                evidence={"steps": n_steps},
                suggestion="Check that it is used in forward.",
            ),
            Finding(
                "slow-op",
                "info",
                f"{op_names[0]} takes most CPU time",
                "Largest self time of all ops.",
                subject=op_names[0],
                evidence={"self_us": 4000.0, "share": 0.41},
                suggestion="Use larger batches.",
            ),
            Finding(
                "slow-step",
                "warning",
                f"Step {SLOW_STEP} took 4x the median",
                "Outlier step.",
                step=SLOW_STEP,
                rank=0,
                evidence={"duration_s": 0.4, "median_s": 0.1},
                suggestion="Look at what ran in that step.",
            ),
        ]
    )
    ranks_facts = [
        {
            "rank": r,
            "steps": n_steps,
            "step_time_s": 0.1 * (1 + 0.05 * r),
            "gpu": {"idle_us": 10_000 * (r + 1), "compute_us": 300_000, "non_compute_us": 50_000},
        }
        for r in range(ranks)
    ]
    run = {
        "path": "runs/exp1",
        "kind": "run",
        "world_size": ranks,
        "status": "closed",
        "steps": {"first": 0, "last": n_steps - 1, "count": n_steps},
        "torch_version": "2.13.0",
        "devices": ["cpu"],
        "recorded": ["steps", "grads", "traces"],
        "ranks": ranks_facts,
    }
    return Analysis(
        path=Path("runs/exp1"),
        kind="run",
        findings=findings,
        run=RunFacts.from_dict(run),
        steps=steps,
        grads=grads,
        params=params,
        ops=ops,
        kernels=kernels,
        step_times=step_times,
    )


# A payload without dots, so torch accepts it as a module name (and so as a parameter name).
HOSTILE_MODULE = "</script><img src=x onerror=__pwned=1>'\"{{ 7*7 }}|"


def recorded_analysis(run_dir: Path, steps: int = 60, nan_at: int | None = 45) -> Analysis:
    """Train a tiny model for real with `tracemortem.Recorder` (one layer named HOSTILE_MODULE;
    inputs made infinite at `nan_at`) and analyse the run directory it leaves."""
    import torch

    import tracemortem
    from tracemortem.analysis import run_facts
    from tracemortem.config import Config
    from tracemortem.detect import health
    from tracemortem.load.discover import discover
    from tracemortem.load.run import load_run

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("embed", torch.nn.Linear(8, 16))
    model.add_module(HOSTILE_MODULE, torch.nn.Linear(16, 16))
    model.add_module("head", torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    with tracemortem.Recorder(run_dir, model, optimizer, update_every=2) as rec:
        for step in range(steps):
            x = torch.randn(32, 8, generator=gen)
            if step == nan_at:
                x[0, 0] = math.inf
            loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.step(loss=loss)
    inputs = discover(run_dir)
    run = load_run(inputs)
    findings = sort_findings(run.notes + health.detect(run, Config()))
    return Analysis(
        path=inputs.path,
        kind=inputs.kind,
        findings=findings,
        run=run_facts(inputs, run, None),
        steps=run.steps,
        grads=run.grads,
        params=run.params,
        ops=pl.DataFrame(),
        kernels=pl.DataFrame(),
        step_times=pl.DataFrame(),
    )


class Visit:
    """A page load in the `browser` fixture's Chromium with every request other than the report
    file itself refused and counted; console messages, page errors and dialogs are collected."""

    def __init__(
        self, browser, path: Path, javascript: bool = True, width: int = 1360, color_scheme: str = "light"
    ) -> None:
        self.context = browser.new_context(
            java_script_enabled=javascript, viewport={"width": width, "height": 900}, color_scheme=color_scheme
        )
        self.url = path.resolve().as_uri()
        self.blocked: list[str] = []
        self.console: list[tuple[str, str]] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.goto(self.url, wait_until="load")
        if javascript:
            self.page.wait_for_function(
                "[...document.querySelectorAll('[data-figure]')].every(d => d.querySelector('svg.tm-chart'))"
            )

    def settle(self) -> None:
        """Let whatever the page queued run: a frame and then a task. Image and script error
        handlers have already fired by the `load` event `goto` waited for; this catches timers
        and frame callbacks queued after it, without waiting a wall-clock time."""
        self.page.evaluate("new Promise(done => requestAnimationFrame(() => setTimeout(done, 0)))")

    def _route(self, route):
        if route.request.url == self.url:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def close(self):
        self.context.close()
