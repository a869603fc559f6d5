"""Markdown, JSON, terminal and HTML output checked for content (rule ids, steps, names,
numbers), for determinism and for size."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re

import polars as pl
import pytest

from report_helpers import HOSTILE, NAN_STEP, SPIKE_STEP, make_analysis, norm_of
from tracemortem import report
from tracemortem.report import charts
from tracemortem.report.common import script_json


@pytest.fixture(scope="module")
def analysis():
    return make_analysis()


def test_markdown_is_a_short_ticket_body_with_the_findings(analysis):
    md = report.render(analysis, "md")
    lines = md.splitlines()
    assert len(lines) <= 80
    assert lines[2].startswith("**Verdict:** Gradients became NaN/Inf at step 70 in layers.0.weight")
    heads = [line for line in lines if re.match(r"\*\*\d+\. ", line)]
    assert [re.search(r"`([\w-]+)`", h).group(1) for h in heads] == [
        "nonfinite-gradient",
        "slow-step",
        "exploding-gradient",
        "dead-parameter",
        "slow-op",
    ]
    assert heads[0].startswith(f"**1. Error · `nonfinite-gradient` · step {NAN_STEP} · rank 0 · layers.0.weight**")
    # each finding carries its message, evidence and what to try
    assert md.count("- What to try: ") == 5 and md.count("- Evidence: ") == 5
    assert "- What to try: Clip gradients." in md
    assert "**Findings:** 1 error, 3 warning, 1 info" in md
    assert "- **Steps:** 0 – 99 (100 steps)" in md
    assert (
        "| aten::mm | \\[\\[8, 8\\], \\[8, 8\\]\\] | cpu\\_op | 100 | 5 ms | 4 ms | 40 µs | 45 µs | 50 µs | 3 ms |"
        in md
    )


def test_markdown_stays_within_80_lines_with_many_findings():
    a = make_analysis()
    many = [dataclasses.replace(a.findings[i % len(a.findings)], step=i) for i in range(40)]
    md = report.render(dataclasses.replace(a, findings=many), "md")
    assert len(md.splitlines()) <= 80 and "…and 32 more findings" in md


def test_markdown_escapes_names_so_tables_and_markup_hold(analysis):
    md = report.render(make_analysis(names=[HOSTILE + str(i) for i in range(4)], op_names=[HOSTILE]), "md")
    widths = [len(re.split(r"(?<!\\)\|", line)) for line in md.splitlines() if line.startswith("|")]
    assert widths and widths[0] == 12 and set(widths) <= {12, 11}  # a `|` in a name never adds a column
    assert "<img" not in md and "</script>" not in md
    assert "&lt;img src=x onerror=" in md
    assert "\\|\\`\\*\\_" in md


def test_json_is_the_design_document(analysis):
    doc = json.loads(report.render(analysis, "json"))
    assert doc["tool"] == "tracemortem" and doc["format"] == 1
    assert [f["rule"] for f in doc["findings"]] == [
        "nonfinite-gradient",
        "slow-step",
        "exploding-gradient",
        "dead-parameter",
        "slow-op",
    ]
    first = doc["findings"][0]
    assert (
        first["step"] == NAN_STEP
        and first["subject"] == "layers.0.weight"
        and first["evidence"] == {"nonfinite": 1, "norm": None}
    )
    assert doc["non_finite"] == {"/findings/0/evidence/norm": "nan"}  # strict JSON: null, and which value
    assert doc["run"]["steps"] == {"first": 0, "last": 99, "count": 100}
    assert doc["run"]["ranks"][0]["step_time_s"] == pytest.approx(0.1)


def test_json_survives_non_finite_run_facts():
    a = make_analysis()
    slow = dataclasses.replace(a.run.ranks[0], step_time_s=math.inf)
    a = dataclasses.replace(a, run=dataclasses.replace(a.run, ranks=(slow, *a.run.ranks[1:])))
    text = report.render(a, "json")
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert doc["run"]["ranks"][0]["step_time_s"] is None and doc["non_finite"]["/run/ranks/0/step_time_s"] == "inf"
    assert list(doc) == sorted(doc)


def test_terminal_summary_and_ops_table(analysis):
    text = report.render(analysis, "text")
    assert f"ERROR   nonfinite-gradient  step {NAN_STEP}  rank 0  layers.0.weight" in text
    assert "try: Clip gradients." in text
    ops = report.render_ops_table(analysis, 2)
    lines = ops.splitlines()
    assert lines[0] == "Top ops" and lines[3].startswith("aten::mm") and lines[4].startswith("aten::addmm")
    assert "aten::relu" not in ops  # --top 2
    assert "kernel<aten::mm>" in ops


def test_terminal_neutralises_control_characters():
    a = make_analysis(names=["evil\x1b[2J\rname", "b", "c"])
    text = report.render(a, "text")
    assert "\x1b" not in text and "\r" not in text and "evil\\x1b[2J\\rname" in text


@pytest.mark.parametrize("fmt", ["html", "md", "json", "text"])
def test_same_input_gives_the_same_bytes(fmt):
    assert report.render(make_analysis(ranks=2), fmt) == report.render(make_analysis(ranks=2), fmt)


def test_html_escapes_every_name_and_embeds_data_safely():
    html = report.render(make_analysis(names=[HOSTILE + str(i) for i in range(4)], op_names=[HOSTILE]), "html")
    data = html.split('<script type="application/json" id="tm-figures">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "&" not in data.replace("\\u0026", "")
    assert "&lt;/script&gt;&lt;img src=x onerror=" in html  # the finding text, escaped by jinja2
    # The only <script tags are the report's own two: the data block and its drawing code.
    assert html.count("<script") == 2
    assert "{{" not in html.split("<script", 1)[0].replace("{{ 7*7 }}", "")


def test_script_json_escapes_what_could_end_a_script_block():
    text = script_json({"a": "</script><!--\u2028\u2029&"})
    assert text == '{"a":"\\u003c/script\\u003e\\u003c!--\\u2028\\u2029\\u0026"}'
    assert json.loads(text) == {"a": "</script><!--\u2028\u2029&"}


def test_html_links_each_finding_to_its_chart(analysis):
    html = report.render(analysis, "html")
    findings = html.split('id="findings"', 1)[1].split('id="charts"', 1)[0]
    links = re.findall(
        r'<li class="finding sev-\w+" id="finding-\d+">.*?<code class="rule">([\w-]+)</code>.*?(?:href="#(chart-[\w-]+)"|</li>)',
        findings,
        re.S,
    )
    assert dict(links) == {
        "nonfinite-gradient": "chart-grad-norm",
        "slow-step": "chart-step-time",
        "exploding-gradient": "chart-grad-norm",
        "dead-parameter": "chart-grad-heatmap",
        "slow-op": "chart-ops",
    }
    for target in set(dict(links).values()):
        assert f'id="{target}"' in html


def test_charts_without_data_become_a_note():
    a = make_analysis()
    a.ops, a.kernels, a.step_times = pl.DataFrame(), pl.DataFrame(), pl.DataFrame()
    built = {c.id: c for c in charts.build(a)}
    assert built["chart-ops"].figure is None and "no profiler trace" in built["chart-ops"].missing
    assert built["chart-memory"].figure is None
    html = report.render(a, "html")
    assert "<strong>Slowest ops</strong>: no profiler trace" in html
    assert 'href="#chart-ops"' not in html  # the slow-op finding no longer links to a missing chart


def test_heatmap_cells_hold_the_quantised_log_norm():
    heat = {c.id: c for c in charts.build(make_analysis(n_params=4, n_steps=100))}["chart-grad-heatmap"].figure
    grid = base64.b64decode(heat["bytes"])
    assert len(grid) == 4 * 100 and heat["x"] == list(range(100))
    assert heat["y"] == [f"layers.{i}.weight" for i in range(4)]

    def level(p, s):
        return grid[p * 100 + s]

    assert level(2, 10) == charts.LEVEL_ZERO  # the dead parameter
    assert level(0, NAN_STEP) == charts.LEVEL_BAD
    assert heat["bad_rows"] == [0]
    assert level(1, SPIKE_STEP) == max(grid[100:200])  # the spike is the brightest cell of its row
    step = (heat["zmax"] - heat["zmin"]) / (charts.LEVEL_HI - charts.LEVEL_LO)
    assert heat["zmin"] + (level(1, 5) - charts.LEVEL_LO) * step == pytest.approx(math.log10(norm_of(5, 1)), abs=step)


def test_heatmap_bins_long_runs_to_at_most_1000_columns():
    steps, params = 5000, 3
    grads = pl.LazyFrame(
        {
            "step": [s for s in range(steps) for _ in range(params)],
            "param_id": [p for _ in range(steps) for p in range(params)],
            "norm": [1.0 if s != 4321 else 1e6 for s in range(steps) for _ in range(params)],
            "nonfinite": [0] * steps * params,
        },
        schema_overrides={"param_id": pl.Int32, "norm": pl.Float32},
    )
    buckets = charts._StepBuckets.of(grads)
    chart = charts.grad_heatmap(grads, pl.DataFrame(), [], buckets)
    heat = chart.figure
    assert len(heat["x"]) == 1000 and heat["x"][:3] == [0, 5, 10]
    assert "each column is 5 steps" in chart.explain
    grid = base64.b64decode(heat["bytes"])
    assert grid[4321 // 5] == charts.LEVEL_HI and grid[0] == charts.LEVEL_LO  # max per bin keeps the spike


def test_long_lines_are_thinned_but_keep_their_spikes():
    frame = pl.DataFrame({"step": range(100_000), "v": [1.0] * 77_777 + [50.0] + [1.0] * 22_222})
    x, y = charts.thin(frame, "step", "v")
    assert len(x) <= charts.MAX_LINE_POINTS and 77_777 in x and max(y) == 50.0


def test_report_size_for_the_sample_shape(analysis):
    html = report.render(make_analysis(n_params=50, n_steps=2000, ranks=2), "html")
    assert len(html.encode()) < 1_500_000


def test_a_recorded_run_reports_its_nan_step_in_every_format(tmp_path):
    pytest.importorskip("torch")
    from report_helpers import HOSTILE_MODULE, recorded_analysis

    analysis = recorded_analysis(tmp_path / "run", steps=60, nan_at=45)
    doc = json.loads(report.render(analysis, "json"))
    first = doc["findings"][0]
    assert (first["rule"], first["step"], first["severity"]) == ("nonfinite-gradient", 45, "error")
    assert doc["run"]["steps"] == {"first": 0, "last": 59, "count": 60}
    md = report.render(analysis, "md")
    assert "**1. Error · `nonfinite-gradient` · step 45" in md and "`nonfinite-loss` · step 45" in md
    assert len(md.splitlines()) <= 80
    html = report.render(analysis, "html")
    assert HOSTILE_MODULE not in html and "&lt;/script&gt;&lt;img src=x onerror=__pwned=1&gt;" in html
    assert "taken at step 45" in html


@pytest.mark.slow
def test_a_run_of_2000_params_by_50000_steps_stays_under_10_mb():
    params, steps = 2000, 50_000
    i = pl.int_range(0, params * steps, dtype=pl.Int64)
    grads = (
        pl.LazyFrame()
        .select(i.alias("i"))
        .select(
            (pl.col("i") // params).alias("step"),
            (pl.col("i") % params).cast(pl.Int32).alias("param_id"),
            # six decades of norms, varying along both axes, so the quantised bytes do not compress away
            (10.0 ** (((pl.col("i") * 7919) % 600001) / 100000.0 - 4)).cast(pl.Float32).alias("norm"),
            pl.lit(0, pl.Int64).alias("nonfinite"),
        )
    )
    a = make_analysis(n_params=3, n_steps=10)
    a.grads = grads
    a.params = pl.DataFrame(
        {
            "param_id": pl.Series(range(params), dtype=pl.Int32),
            "name": [f"blocks.{p // 8}.mlp{p % 8}.weight" for p in range(params)],
        }
    )
    a.steps = pl.DataFrame(
        {
            "step": range(steps),
            "loss": [2.0 / (1 + s / 1000) for s in range(steps)],
            "grad_norm": [1.0 + (s % 97) / 97 for s in range(steps)],
            "duration_s": [0.1 + (s % 13) / 100 for s in range(steps)],
            "nonfinite": [0] * steps,
            "rank": pl.Series([0] * steps, dtype=pl.Int32),
        }
    )
    html = report.render(a, "html")
    assert len(html.encode()) <= 10_000_000
    heat = json.loads(html.split('id="tm-figures">', 1)[1].split("</script>", 1)[0])["chart-grad-heatmap"]
    assert len(heat["x"]) == 1000 and len(heat["y"]) == params
