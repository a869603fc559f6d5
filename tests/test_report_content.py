"""What the reports say: the verdict, evidence written for people, short kernel names that never
merge two kernels, and the facts read from real GPU traces (skipped without shared/real_traces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from report_helpers import NAN_STEP, make_analysis
from trace_helpers import REAL_TRACES
from tracemortem import analyze, report
from tracemortem.findings import Finding
from tracemortem.report import charts
from tracemortem.report.evidence import brief, evidence_items, number
from tracemortem.report.names import short_name, short_names
from tracemortem.report.verdict import verdict

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def _finding(rule: str, severity: str = "error", step: int | None = None, **kw: object) -> Finding:
    return Finding(rule=rule, severity=severity, title=kw.pop("title", rule), message="m", step=step, **kw)  # type: ignore[arg-type]


def test_the_verdict_names_the_cause_before_its_consequences():
    findings = [
        _finding("nonfinite-loss", step=97),
        _finding("exploding-gradient", step=92, subject="2.weight", suggestion="Lower the learning rate. Then more."),
        _finding("nonfinite-gradient", step=98),
    ]
    v = verdict(findings)
    assert v.headline == "Gradients exploded at step 92 in 2.weight; then the loss became NaN/Inf at step 97."
    assert v.first_try == "Lower the learning rate"
    assert v.anchor == "finding-2" and v.severity == "error"
    assert verdict([], steps=120).headline == "No problems found in 120 steps."


def test_a_title_with_numbers_is_the_verdict_of_a_perf_finding():
    v = verdict([_finding("gpu-idle", "warning", title="The GPU is idle 78% of the time", rank=3)], many_ranks=True)
    assert v.headline == "The GPU is idle 78% of the time on rank 3."


def test_evidence_reads_as_units_and_tables():
    f = _finding(
        "exploding-gradient",
        evidence={
            "peak_grad_norm": 2796000000000.0,
            "grad_norm": 3177.0,
            "spike_steps": [95, 96, 1200],
            "leaders": [{"name": "2.weight", "norm": 3145.0, "score": 313.7}, {"name": "4.weight", "norm": 395.6}],
            "idle_share": 0.78,
            "peak_bytes": 3 * 2**30,
            "median_ns": 9153,
            "loss": "inf",
        },
    )
    items = {i.label: i for i in evidence_items(f)}
    assert items["peak grad norm"].text == "2.796e12"
    assert items["grad norm"].text == "3177"
    assert items["spike steps"].text == "95, 96, 1200"  # no thousands separator to collide with the commas
    assert items["idle share"].text == "78%" and items["peak bytes"].text == "3 GiB"
    assert items["median"].text == "9.15 µs" and items["loss"].text == "Inf"
    table = items["leaders"].table
    assert table is not None and table.headers == ["name", "norm", "score"]
    assert table.rows == [["2.weight", "3145", "313.7"], ["4.weight", "395.6", "—"]]
    assert brief(evidence_items(f), limit=2).startswith("leaders: 2.weight (norm 3145, score 313.7); 4.weight")
    assert number(1e-5) == "1e-5" and number(0.5) == "0.5" and number(12_345_678) == "1.235e7"


KERNELS = [
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, at::detail::Array<char*, 1> >"
    "(int, at::native::FillFunctor<float>, at::detail::Array<char*, 1>)",
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3> >"
    "(int, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3>)",
    "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
]


def test_short_names_fold_template_noise_and_stay_distinct():
    assert short_name(KERNELS[0]) == "vectorized_elementwise_kernel<…>"
    assert short_name(KERNELS[2]) == "ncclDevKernel_AllReduce_Sum_f32_RING_LL"
    assert short_name("aten::mm") == "aten::mm"  # an op name is already short
    labels = short_names(KERNELS)
    assert len(set(labels)) == 3
    assert labels[0].startswith("vectorized_elementwise_kernel<4, FillFunctor<…>")
    assert short_names(["same<a>(x)", "same<a>(y)"]) == ["same<a> #1", "same<a> #2"]
    # a mangled cutlass kernel, as one real A100 trace holds it: its names, not the mangling
    mangled = "_ZN19cutlass_cudnn_train6KernelINS_4conv6kernel23ImplicitGemmConvolutionINS1_11EEEEEvNT_6ParamsE"
    assert short_name(mangled) == "cutlass_cudnn_train::Kernel<…>(…)"
    assert short_name("_Z10add_kernelPfS_i") == "add_kernel(…)"


def test_the_html_report_opens_with_the_verdict():
    html = report.render(make_analysis(), "html")
    assert html.index('id="verdict"') < html.index('class="facts"') < html.index('id="findings"')
    assert f"Gradients became NaN/Inf at step {NAN_STEP} in layers.0.weight" in html
    text = report.render(make_analysis(), "text")
    assert text.splitlines()[1].startswith(f"Gradients became NaN/Inf at step {NAN_STEP}")


def test_the_exploding_sample_is_light_and_says_what_happened():
    html = report.render(analyze(SAMPLES / "exploding"), "html")
    assert len(html.encode()) <= 1_500_000
    assert "Gradients exploded at step 92 in 2.weight" in html
    first_evidence = html.split('id="findings"')[1].split('<dl class="evidence">')[1].split("</dl>")[0]
    assert "2.796e12" in first_evidence and "2796000000000" not in first_evidence


def _gpu(trace: str):
    path = REAL_TRACES / trace
    if not path.exists():
        pytest.skip("shared/real_traces not present")
    return analyze(path)


def test_gpu_model_and_memory_come_from_the_trace():
    a = _gpu("nccl_a100")
    assert a.run.extra["gpus"] == [{"name": "NVIDIA A100-PG509-200", "memory_bytes": 42297524224, "count": 1}]
    html = report.render(a, "html")
    assert "NVIDIA A100-PG509-200 (39.4 GiB)" in html
    assert "(CPU run)" not in html
    assert "(CPU run)" in report.render(analyze(SAMPLES / "exploding"), "html")


def test_no_two_kernels_share_a_bar_on_a_real_trace():
    a = _gpu("nccl_a100")
    figure = {c.id: c for c in charts.build(a)}["chart-kernels"].figure
    assert figure is not None
    full, labels = figure["full"], figure["categories"]
    assert len(set(full)) == len(full) and len(set(labels)) == len(labels)
    values = figure["series"][0]["values"]
    assert values == sorted(values, reverse=True)  # longest first, as the caption says
    json.dumps(figure)


def test_the_slowest_profiled_step_of_a_real_cpu_run_becomes_a_timeline():
    a = analyze(SAMPLES / "exploding")
    slowest = a.step_times.sort("duration_ns", descending=True).row(0, named=True)
    (timeline,) = a.timelines  # the anomalous steps (92 on) were not profiled
    assert (timeline.rank, timeline.step, timeline.why) == (slowest["rank"], slowest["step"], "slowest profiled step")
    span_ms = slowest["duration_ns"] / 1e6
    events = timeline.events
    assert events.height == timeline.total_events > 0 and all(lane.startswith("CPU thread") for lane in timeline.lanes)
    assert events["start_ms"].min() >= 0 and (events["start_ms"] + events["dur_ms"]).max() <= span_ms + 1e-3
    assert f"ProfilerStep#{timeline.step}" in events["name"].to_list()
    chart = {c.id: c for c in charts.build(a)}["chart-timeline-slowest"]
    assert chart.trace is not None and chart.trace.step == timeline.step
    assert chart.trace.file.endswith(".json") or ".json" in chart.trace.file
    assert chart.trace.end_us - chart.trace.start_us == pytest.approx(span_ms * 1000, abs=1)


def test_a_big_step_keeps_its_longest_events_and_says_so():
    a = _gpu("nccl_a100")
    timeline = a.timelines[0]
    assert timeline.total_events > timeline.events.height == 1500
    assert any(lane.startswith("GPU stream") for lane in timeline.lanes)
    chart = {c.id: c for c in charts.build(a)}["chart-timeline-slowest"]
    assert f"showing the 1,500 longest of {timeline.total_events:,} events" in chart.explain
    # every performance finding says where in the trace to look
    md = report.render(a, "md")
    perf = [f for f in a.findings if f.rule in ("gpu-idle", "launch-bound")]
    assert perf and md.count("- In the trace: ") == len(perf)
    assert "rank-0.json.gz" in md


def test_redaction_cleans_the_timeline_and_the_trace_paths():
    import dataclasses

    import polars as pl

    from tracemortem.report.redact import redact_analysis

    token = "ghp_" + "aB3d" * 9
    a = analyze(SAMPLES / "exploding")
    (timeline,) = a.timelines
    planted = timeline.events.with_columns(pl.lit(f"user_label api_key={token}").alias("name"))
    a = dataclasses.replace(a, timelines=[dataclasses.replace(timeline, events=planted)])
    assert token in report.render(a, "html")
    cleaned = redact_analysis(a, pseudonymize=True)
    html = report.render(cleaned, "html")
    assert "aB3daB3d" not in html and "api_key=[redacted]" in html


def test_the_model_summary_is_a_module_tree_with_health():
    from tracemortem.report.modules import module_tree

    a = analyze(SAMPLES / "vanishing")
    tree = module_tree(a)
    labels = [n.label for n in tree.roots]
    assert labels[:3] == ["0", "2", "4"] and labels[-1] == "30"  # nn.Sequential order, not text order
    first = tree.roots[0]
    assert [c.label for c in first.children] == ["bias", "weight"]
    assert first.numel == sum(c.numel for c in first.children) and first.params == 2
    assert "vanishing" in first.status and tree.roots[-1].status == []
    shares = [n.share for n in tree.roots]
    assert sum(shares) == pytest.approx(1.0) and shares[-1] > 0.9  # the output layer holds the gradient
    html = report.render(a, "html")
    vanishing = next(f for f in a.findings if f.rule == "vanishing-gradient" and f.subject)
    assert f'href="#{tree.anchors[vanishing.subject]}">In the model summary' in html


def test_a_flat_model_with_many_parameters_keeps_the_tree_small():
    import dataclasses

    import polars as pl

    from tracemortem.report.modules import MAX_NODES, module_tree

    a = make_analysis(n_params=3, n_steps=4)
    n = 5000
    params = pl.DataFrame({"param_id": pl.Series(range(n), dtype=pl.Int32), "name": [f"p{i}" for i in range(n)]})
    tree = module_tree(dataclasses.replace(a, params=params))
    assert len(tree.roots) == MAX_NODES and f"showing {MAX_NODES} of {n:,}" in tree.note
