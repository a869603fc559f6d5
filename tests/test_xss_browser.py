"""XSS corpus in a real run, rendered by the CLI and opened in Chromium: payloads
planted in op names, parameter names, user scalar names, hostnames and manifest fields never run
as script, never fetch anything, and read back as the same text."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from report_helpers import Visit

pytestmark = pytest.mark.browser

# Dot-free, so torch accepts each as a module name; `__pwned=1` in a handler or script sets
# window.__pwned as surely as `window.__pwned=1`.
PAYLOADS = [
    "</script><script>__pwned=1</script>",
    '<img src=x onerror="__pwned=1">',
    '"><svg onload=__pwned=1>',
    "javascript:__pwned=1",
    "{{7*7}}",
    "${7*7}",
    "line\u2028sep\u2029para",
    "quotes'\"both",
    "`back${1}tick`",
    "<!--comment",
    "]]>cdata",
]


NAMES = {f"{p}.{k}" for p in PAYLOADS for k in ("weight", "bias")}  # the model's parameters


def _plant_in_trace(path: Path) -> None:
    """Rename the trace's CPU ops to payloads (every distinct name: the `<img>` one, then the
    others round robin) and make its host name one too. Which ops make the top of the ops table
    depends on their measured times, so every op name carries the payload the table is checked for."""
    doc = json.loads(gzip.decompress(path.read_bytes()))
    names = sorted({e["name"] for e in doc["traceEvents"] if e.get("cat") == "cpu_op"})
    renamed = {name: f"{PAYLOADS[1]}#{i} {PAYLOADS[i % len(PAYLOADS)]}" for i, name in enumerate(names)}
    for event in doc["traceEvents"]:
        if event.get("cat") == "cpu_op":
            event["name"] = renamed[event["name"]]
    doc["host_name"] = PAYLOADS[2]
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    import tracemortem

    tmp = tmp_path_factory.mktemp("xss")
    run = tmp / "run"
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    for payload in PAYLOADS:
        model.add_module(payload, torch.nn.Linear(8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    schedule = tracemortem.ProfileSchedule(wait=1, warmup=1, active=2, repeat=1)
    with tracemortem.Recorder(run, model, optimizer, profile=schedule, config={p: p for p in PAYLOADS}) as rec:
        for step in range(30):
            x = torch.randn(16, 8)
            if step == 20:  # a non-finite gradient: findings then name the parameters
                x[0, 0] = math.inf
            loss = model(x).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.step(loss=loss, **{p: float(step) for p in PAYLOADS})
    manifest_path = run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(started=PAYLOADS[0], ended=PAYLOADS[1], status=PAYLOADS[3])
    manifest_path.write_text(json.dumps(manifest))
    meta_path = run / "rank0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["hostname"] = PAYLOADS[6]
    meta["recorder"].update({p: p for p in PAYLOADS})
    meta_path.write_text(json.dumps(meta))
    [trace] = (run / "rank0" / "traces").glob("*.json.gz")
    _plant_in_trace(trace)

    html = tmp / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "tracemortem.cli", "report", str(run), "-o", str(html)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp,
        timeout=300,
    )
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    return html


def test_no_payload_runs_and_each_reads_as_text(browser, hostile_report):
    text = hostile_report.read_text(encoding="utf-8")
    assert "<img src=x" not in text and "<svg onload" not in text and "<script>__pwned" not in text
    visit = Visit(browser, hostile_report)
    try:
        page = visit.page
        visit.settle()  # let any injected handler (onerror, onload, a timer) run
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert visit.dialogs == [] and visit.blocked == [] and visit.page_errors == []
        assert [m for m in visit.console if m[0] == "error"] == []
        assert page.locator("img, iframe, object, embed, #findings svg, #ops svg").count() == 0
        shown = page.evaluate("document.body.innerText")
        missing = [p for p in PAYLOADS if p not in shown]
        assert missing == [], missing
        # where each kind of field lands: parameter names in findings, op names in the ops table,
        # hostname and manifest fields in the header, recorder settings in their table
        findings = page.locator("#findings").inner_text()
        assert any(f"{p}.weight" in findings for p in PAYLOADS), findings[:500]
        assert f"{PAYLOADS[1]}#" in page.locator("#ops").inner_text()
        assert PAYLOADS[6] in shown and PAYLOADS[0] in shown and PAYLOADS[3] in shown
        # Chart labels are parameter names verbatim, not escaped twice.
        labels = page.locator("#chart-grad-heatmap .ytick text").all_text_contents()
        assert labels and set(labels) <= NAMES, labels
    finally:
        visit.close()


def test_payloads_read_the_same_with_javascript_off(browser, hostile_report):
    # Charts need script; the header, findings and tables carry the manifest, meta.json, trace
    # and parameter payloads as text without it.
    visit = Visit(browser, hostile_report, javascript=False)
    try:
        page = visit.page
        header = page.locator("body").inner_text()
        assert [p for p in (PAYLOADS[0], PAYLOADS[1], PAYLOADS[3], PAYLOADS[6]) if p not in header] == []
        assert f"{PAYLOADS[1]}#" in page.locator("#ops").inner_text()
        assert any(name in page.locator("#findings").inner_text() for name in NAMES)
        assert visit.blocked == [] and visit.dialogs == [] and visit.page_errors == []
    finally:
        visit.close()


def test_hover_labels_show_names_once_escaped(browser, hostile_report):
    """Hovering the heatmap's NaN/Inf cells shows the parameter name as written, then the step,
    as separate lines of text: not entity text (`&lt;img ...`) and not a literal `<br>`."""
    visit = Visit(browser, hostile_report)
    try:
        hovers = visit.page.evaluate("""(() => {
            const fig = JSON.parse(document.getElementById('tm-figures').textContent)['chart-grad-heatmap'];
            const raw = atob(fig.bytes), cols = fig.x.length, rows = fig.y.length;
            const overlay = document.querySelector('[data-figure=chart-grad-heatmap] .overlay');
            const box = overlay.getBoundingClientRect();
            const out = [];
            for (let i = 0; i < raw.length; i++) {
                if (raw.charCodeAt(i) !== fig.levels[4]) continue;
                const r = Math.floor(i / cols), c = i % cols;
                overlay.dispatchEvent(new MouseEvent('mousemove', {
                    bubbles: true,
                    clientX: box.left + (c + 0.5) * box.width / cols,
                    clientY: box.top + (r + 0.5) * box.height / rows,
                }));
                out.push([...document.querySelectorAll('.tm-tip div')].map(n => n.textContent));
            }
            return out;
        })()""")
        assert hovers and all(
            len(lines) == 2 and lines[0] in NAMES and lines[1].endswith(": NaN/Inf gradient") for lines in hovers
        ), hovers[:3]
        assert visit.page.evaluate("typeof window.__pwned") == "undefined"
    finally:
        visit.close()
