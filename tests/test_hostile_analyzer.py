"""The analyzer against attacks on the machine that runs it and on the people who read its output
(docs/robustness.md, "Analyzer under hostile input"): code planted beside an input never runs,
no escape sequence or forged line reaches a terminal, special files never hang it, budgets bound
its memory, one broken part never refuses a whole run, exit codes are as documented, every JSON
document is strict, and no URL password reaches any output. Every case is a real file through
the real CLI."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from cli_helpers import cli, report, strict_json
from trace_helpers import record_cpu_trace
from tracemortem.load import chrome

TRACEMORTEM = Path(sys.executable).with_name("tracemortem")  # the console script a user runs
# Plenty for every case here; only a hang reaches it (no test depends on how fast anything is).
SAFETY_TIMEOUT = 300


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pyproject.toml of the checkout may change the thresholds


def _record(run: Path, nan_at: int | None = None, names: str = "") -> Path:
    """A real run: 40 steps, 4 chunks per table, checkpoints, one profiling cycle, and a `gate`
    module whose gradient is always exactly zero (a dead parameter)."""
    torch = pytest.importorskip("torch")
    import tracemortem

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    gate = torch.nn.Linear(8, 1)
    model = torch.nn.ModuleDict({"body" + names: body, "gate" + names: gate})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    schedule = tracemortem.ProfileSchedule(wait=1, warmup=1, active=2, repeat=1)
    with tracemortem.Recorder(run, model, opt, flush_every=10, checkpoint_every=10, profile=schedule) as rec:
        for step in range(40):
            x = torch.randn(16, 8)
            loss = ((body(x) - x.sum(1, keepdim=True)) ** 2).mean() + 0.0 * gate(x).sum()
            if step == nan_at:
                loss = loss * float("nan")
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    return run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    return _record(tmp_path_factory.mktemp("recorded") / "run")


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory) -> Path:
    return _record(tmp_path_factory.mktemp("nan") / "run", nan_at=30)


@pytest.fixture
def run_copy(recorded, tmp_path) -> Path:
    shutil.copytree(recorded, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def _trace_file(run: Path) -> Path:
    [trace] = (run / "rank0" / "traces").glob("*.pt.trace.json.gz")
    return trace


def _write_parquet(path: Path, columns: dict, schema=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns, schema=schema), path, compression="zstd")


# --- 1. no code from the input's neighbourhood ---------------------------------------------

PLANTED = ("pickle", "polars", "json", "msgspec", "socket", "runpy", "selectors", "numpy", "pyarrow", "tracemortem")


def _plant(folder: Path, marker_dir: Path) -> None:
    """Modules that shadow what the analyzer and multiprocessing import; each one, if imported,
    leaves a marker file (and breaks nothing else, so a run that imports one still finishes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PLANTED:
        (folder / f"{name}.py").write_text(f"import os\nopen({str(marker_dir / name)!r} + f'-{{os.getpid()}}', 'w')\n")
    (folder / "encodings").mkdir(exist_ok=True)
    (folder / "encodings" / "__init__.py").write_text(f"open({str(marker_dir / 'encodings')!r}, 'w')\n")


def _probe_script(use_our_pool: bool) -> str:
    """A parent that has done everything to invite planted code in: its current directory holds
    the plants and both '' and that directory lead its sys.path."""
    pool = (
        "tracemortem.pool.process_pool(2, [plants])"
        if use_our_pool
        else "concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn'))"
    )
    return textwrap.dedent(f"""
        import concurrent.futures.process, multiprocessing.connection, multiprocessing.queues, operator, os, sys
        import multiprocessing.synchronize, queue, tracemortem.pool
        print(os.getpid())
        plants = sys.argv[1]
        os.chdir(plants)
        sys.path[:0] = ['', plants]
        pool = {pool}
        print(sorted(set(pool.map(operator.abs, range(-8, 0)))))
        pool.shutdown()
    """)


@pytest.mark.parametrize("use_our_pool", [False, True], ids=["plain-spawn-pool", "tracemortem-pool"])
def test_planted_modules_run_in_a_plain_spawn_pool_and_never_in_ours(tmp_path, use_our_pool):
    plants, markers = tmp_path / "attachment", tmp_path / "markers"
    markers.mkdir()
    _plant(plants, markers)
    proc = subprocess.run(
        [sys.executable, "-c", _probe_script(use_our_pool), str(plants)],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        cwd=tmp_path,
    )
    ran = sorted(p.name for p in markers.iterdir())
    parent = proc.stdout.split()[0]
    assert not [name for name in ran if name.endswith(f"-{parent}")]  # the probe itself stays clean
    if use_our_pool:
        assert proc.returncode == 0 and proc.stdout.split("\n", 1)[1].strip() == str(list(range(1, 9))), proc.stderr
        assert ran == []
    else:  # the control: the attack is real, the children of multiprocessing's spawn import the plants
        assert ran, proc.stderr


@pytest.mark.slow
def test_planted_modules_beside_a_big_trace_never_run(cpu_trace, tmp_path):
    """`tracemortem summary trace.json.gz` from an unpacked attachment holding the trace and
    planted modules, with the trace big enough that its chunks go to the worker processes."""
    events = json.loads(cpu_trace.read_text())
    body = json.dumps(events["traceEvents"])[1:-1]
    copies = chrome.PARALLEL_MIN_BYTES // len(body) + 2
    attachment, markers = tmp_path / "ticket-attachment", tmp_path / "markers"
    markers.mkdir()
    _plant(attachment, markers)
    elsewhere = tmp_path / "elsewhere"
    _plant(elsewhere, markers)  # and another planted folder as the current directory
    text = ('{"traceEvents": [' + ", ".join([body] * copies) + "]}").encode()
    assert len(text) > chrome.PARALLEL_MIN_BYTES  # so the workers start
    (attachment / "trace.json.gz").write_bytes(gzip.compress(text, compresslevel=1))
    for cwd, path in ((attachment, "trace.json.gz"), (elsewhere, str(attachment / "trace.json.gz"))):
        proc = subprocess.run(
            [str(TRACEMORTEM), "ops", path, "--top", "3"],
            capture_output=True,
            text=True,
            timeout=SAFETY_TIMEOUT,
            cwd=cwd,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Top ops" in proc.stdout
        assert sorted(p.name for p in markers.iterdir()) == []


def test_a_gzip_trailer_claiming_4_gib_does_not_start_the_workers(tmp_path, monkeypatch):
    # ~300 KB that do not compress (random names), so 4 GiB is a ratio deflate could reach.
    rng = random.Random(1)
    events = [
        {"ph": "X", "cat": "cpu_op", "name": rng.randbytes(24).hex(), "pid": 1, "tid": 1, "ts": i, "dur": 1}
        for i in range(6000)
    ]
    data = bytearray(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    assert len(data) * 1032 > chrome.PARALLEL_MIN_BYTES
    data[-4:] = (2**32 - 1).to_bytes(4, "little")  # ISIZE: "4 GiB uncompressed"
    path = tmp_path / "claims-4gib.json.gz"
    path.write_bytes(bytes(data))
    started = []
    monkeypatch.setattr(chrome, "process_pool", lambda *a, **k: started.append(a) or pytest.fail("workers started"))
    with chrome.Decoders() as workers:
        trace = chrome.read_trace(path, workers=workers)
    assert started == [] and trace.frame.height > 0
    assert trace.truncated and "checksum" in trace.truncated_detail  # the size check fails: said so


# --- 2. text from input is data ------------------------------------------------------------

INJECT = "\x1b]0;owned\x07\x1b[2J\x1b[31m\r\u202eexe.txt\u2066"
FORGED = "\nERROR   nonfinite-gradient  step 0\n        FORGED FINDING"
UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _hostile_run(recorded: Path, tmp_path: Path) -> Path:
    """The real run with parameter names holding escapes, bidi controls and forged lines."""
    run = tmp_path / "hostile-run"
    shutil.copytree(recorded, run)
    meta_path = run / "rank0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for param in meta["params"]:
        param["name"] += FORGED + INJECT
    meta["hostname"] = "node" + INJECT
    meta_path.write_text(json.dumps(meta))
    return run


def _hostile_trace(cpu_trace: Path, folder: Path) -> Path:
    doc = json.loads(cpu_trace.read_text())
    for event in doc["traceEvents"]:
        if event.get("name") == "aten::mm":
            event["name"] = "aten::mm" + FORGED + INJECT
    path = folder / "ops.json"
    path.write_text(json.dumps(doc))
    return path


def _assert_terminal_safe(text: str, real_errors: int = 0) -> None:
    assert not UNSAFE_CHARS.search(text), [m.group() for m in UNSAFE_CHARS.finditer(text)][:5]
    assert not [line for line in text.splitlines() if line.lstrip().startswith("FORGED")]  # no line of its own
    assert sum(line.startswith("ERROR") for line in text.splitlines()) == real_errors


def test_summary_ops_and_diff_show_input_text_as_data(recorded, cpu_trace, tmp_path):
    run = _hostile_run(recorded, tmp_path)
    summary = cli("summary", str(run))
    assert summary.code == 0 and "\\x1b]0;owned\\x07" in summary.stdout and "\\u202e" in summary.stdout
    _assert_terminal_safe(summary.stdout + summary.stderr)
    trace = _hostile_trace(cpu_trace, tmp_path)
    ops = cli("ops", str(trace))
    assert ops.code == 0 and "aten::mm\\nERROR" in ops.stdout
    _assert_terminal_safe(ops.stdout + ops.stderr)
    diff = cli("diff", str(trace), str(run))
    assert diff.code == 0
    _assert_terminal_safe(diff.stdout + diff.stderr)


def test_error_and_warning_lines_show_file_names_as_data(tmp_path):
    folder = tmp_path / ("traces" + INJECT)
    folder.mkdir()
    bad = folder / ("rank0" + INJECT + FORGED.replace("\n", "") + ".json")
    bad.write_bytes(b"\x93 not json")
    out = cli("summary", str(bad), process=True)
    assert out.code == 3 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("tracemortem: error: ") and "\\x1b]0;owned\\x07" in out.stderr
    _assert_terminal_safe(out.stderr)
    out = cli("report", str(tmp_path / ("missing" + INJECT)), process=True)
    assert out.code == 3 and out.stderr.count("\n") == 1
    _assert_terminal_safe(out.stderr)


def _code_spans(line: str) -> list[tuple[int, int]]:
    """Where the inline code spans of one Markdown line are (CommonMark: equal backtick runs)."""
    spans, pos = [], 0
    while (open_ := re.compile(r"(?<!\\)(`+)").search(line, pos)) is not None:
        close = re.compile(r"(?<!`)" + open_.group(1) + r"(?!`)").search(line, open_.end())
        if close is None:
            break
        spans.append((open_.start(), close.end()))
        pos = close.end()
    return spans


def test_markdown_neutralises_links_mentions_and_html_from_input(cpu_trace, tmp_path):
    doc = json.loads(cpu_trace.read_text())
    payloads = [
        "@everyone ping",
        "https://evil.example/login?x=1",
        "www.evil.example",
        "see #1234",
        "<img src=x onerror=alert(1)>",
    ]
    names = iter(payloads * 1000)
    for event in doc["traceEvents"]:
        if event.get("cat") == "cpu_op":
            event["name"] = next(names)  # five ops in all (no shapes): every one is in the top-ops table
            event.get("args", {}).pop("Input Dims", None)
    path = tmp_path / "links.json"
    path.write_text(json.dumps(doc))
    out = cli("report", str(path), "--format", "md", "-o", "-")
    ops = cli("ops", str(path), "--format", "md", "--top", "20")  # the report's ticket body lists fewer ops
    assert out.code == 0 and ops.code == 0
    md = out.stdout + ops.stdout
    assert "<img" not in md
    for needle in ("@everyone", "https://evil", "www.evil", "#1234"):
        lines = [line for line in md.splitlines() if needle in line]
        assert lines, needle
        for line in lines:  # every occurrence sits inside a code span, where nothing links or pings
            spans = _code_spans(line)
            for hit in re.finditer(re.escape(needle), line):
                assert any(a < hit.start() < b for a, b in spans), (needle, line)


# --- 3. budgets and special files ----------------------------------------------------------


def _peak_rss_bytes(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI in a fresh process and return its peak resident memory (its own children's
    maximum, from the kernel's accounting: deterministic enough, and not a time)."""
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n' + p.stderr)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(TRACEMORTEM), *args],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        env={**os.environ, **(env or {})},
    )
    peak_kb = int(proc.stdout.splitlines()[0])
    return proc, peak_kb * 1024


@pytest.mark.slow
def test_hostile_rle_steps_chunk_stays_under_2_gb(run_copy, tmp_path):
    import numpy as np

    from tracemortem import format as fmt

    rows = 50_000_000  # constant columns: run-length encoded into well under 1 MB
    columns = {
        f.name: np.zeros(rows, dtype=bool if str(f.type) == "bool" else f.type.to_pandas_dtype())
        for f in fmt.STEPS_SCHEMA
    }
    chunk = run_copy / "rank0" / "steps" / "part-000009.parquet"
    _write_parquet(chunk, columns, fmt.STEPS_SCHEMA)
    assert chunk.stat().st_size < 3 * 2**20
    for fmt_name in ("json", "html"):
        proc, peak = _peak_rss_bytes(
            ["report", str(run_copy), "--format", fmt_name, "-o", str(tmp_path / f"r.{fmt_name}")]
        )
        assert proc.returncode in (0, 1), proc.stdout
        assert peak < 2 * 2**30, peak
    doc = strict_json((tmp_path / "r.json").read_text())
    [note] = [f for f in doc["findings"] if "part-000009" in f["message"]]
    assert "row limit of one chunk" in note["message"] and doc["run"]["steps"]["count"] == 40


def test_table_row_limit_skips_later_chunks_with_a_note(run_copy):
    import pyarrow.parquet as pq

    chunks = sorted((run_copy / "rank0" / "steps").glob("part-*.parquet"))
    rows = [pq.read_metadata(c).num_rows for c in chunks]
    limit = rows[0] + rows[1] + 1  # room for two chunks, not three
    out = report(run_copy, env={"TRACEMORTEM_MAX_STEPS_ROWS": str(limit)})
    assert out.code in (0, 1) and out.doc["run"]["steps"]["count"] == rows[0] + rows[1]
    skipped = [n for n in out.notes("input-error") if "TRACEMORTEM_MAX_STEPS_ROWS" in n["message"]]
    assert [n["evidence"]["chunk"] for n in skipped] == [c.name for c in chunks[2:]]


@pytest.mark.slow
def test_a_million_parameters_give_bounded_findings_and_report(run_copy, tmp_path):
    meta_path = run_copy / "rank0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    real = len(meta["params"])  # the recorded ones: they got gradients
    meta["params"] += [{"name": f"l{i}.weight", "param_id": 100 + i, "numel": 4} for i in range(1_000_000)]
    meta_path.write_text(json.dumps(meta, separators=(",", ":")))
    assert meta_path.stat().st_size < 64 * 2**20  # under the JSON size limit: it is parsed
    proc, peak = _peak_rss_bytes(["report", str(run_copy), "-o", str(tmp_path / "r.html")])
    assert proc.returncode in (0, 1) and peak < 2 * 2**30, proc.stdout
    assert (tmp_path / "r.html").stat().st_size < 16 * 2**20
    doc = report(run_copy).doc
    unused = [f for f in doc["findings"] if f["rule"] == "unused-parameter"]
    assert len(unused) == 51
    [rest] = [f for f in unused if f["title"].endswith("more unused-parameter findings not listed")]
    assert rest["evidence"]["not_listed"] == 200_000 - real - 50  # the first 200,000 are named
    [limit] = [f for f in doc["findings"] if f["title"] == "too many parameters"]
    assert limit["evidence"]["parameters"] > 1_000_000


def test_findings_per_rule_are_capped_and_the_rest_counted(run_copy):
    out = report(run_copy, env={"TRACEMORTEM_MAX_FINDINGS_PER_RULE": "1", "TRACEMORTEM_MAX_STEPS_ROWS": "15"})
    skipped = [n for n in out.notes("input-error") if n["title"].startswith("skipped")]
    summary = [n for n in out.notes("input-error") if "not listed" in n["title"]]
    assert len(skipped) <= 1 and len(summary) == 1 and summary[0]["evidence"]["not_listed"] >= 2


def test_report_size_limit_is_one_line_exit_3(run_copy, tmp_path):
    out = cli("report", str(run_copy), "-o", str(tmp_path / "r.html"), env={"TRACEMORTEM_MAX_REPORT_BYTES": "1000"})
    assert out.code == 3 and "TRACEMORTEM_MAX_REPORT_BYTES" in out.stderr and not (tmp_path / "r.html").exists()


def test_bad_limit_values_are_usage_errors(run_copy):
    for value in ("0", "-5", "1e3", "lots"):
        out = report(run_copy, env={"TRACEMORTEM_MAX_STEPS_ROWS": value}, process=True)
        assert out.code == 2 and out.stderr.startswith("tracemortem: error: TRACEMORTEM_MAX_STEPS_ROWS"), out.stderr


def test_special_files_are_never_opened_as_data(run_copy, tmp_path):
    rank = run_copy / "rank0"
    os.mkfifo(rank / "steps" / "part-000009.parquet")
    os.mkfifo(rank / "traces" / "fifo.pt.trace.json")
    (rank / "grads" / "part-000009.parquet").symlink_to("/dev/zero")
    (rank / "grads" / "part-000010.parquet").symlink_to(rank / "grads" / "part-000011.parquet")
    (rank / "grads" / "part-000011.parquet").symlink_to(rank / "grads" / "part-000010.parquet")  # a loop
    (rank / "traces" / "loop").symlink_to(rank / "traces")  # a folder loop
    (rank / "meta.json").unlink()
    os.mkfifo(rank / "meta.json")
    (rank / "checkpoints" / "health.parquet").unlink(missing_ok=True)
    os.mkfifo(rank / "checkpoints" / "health.parquet")
    out = report(run_copy, process=True)  # the subprocess timeout is only a safety net
    assert out.code in (0, 1) and out.doc["run"]["steps"]["count"] == 40
    messages = " ".join(n["message"] for n in out.notes("input-error"))
    for name in (
        "steps/part-000009",
        "grads/part-000009",
        "grads/part-000010",
        "grads/part-000011",
        "meta.json",
        "health.parquet",
    ):
        assert name in messages, name
    assert out.doc["run"]["ranks"][0]["steps"] == 40 and "traces" in out.doc["run"]["recorded"]
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        got = report(path, process=True)
        assert got.code == 3 and "not a regular file" in got.stderr


def _bomb(path: Path, head: bytes, filler: bytes, mib: int, tail: bytes = b"") -> Path:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = filler * (2**20 // len(filler))
    with path.open("wb") as out:
        out.write(z.compress(head))
        for _ in range(mib):
            out.write(z.compress(block))
        out.write(z.compress(tail) + z.flush())
    return path


EVENT = b'{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 1, "dur": 1}'
BOMBS = {  # name → (head, filler, MiB uncompressed, tail, what stderr says)
    "spaces-in-the-event-list": (b'{"traceEvents": [', b" ", 400, b"]}", "gzip inflates more than"),
    "no-event-list": (b"{", b" ", 400, b"}", "no traceEvents list in the first"),
    "valid-identical-events": (b'{"traceEvents": [', EVENT + b", ", 400, EVENT + b"]}", "gzip inflates more than"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_compression_bombs_are_refused_early(tmp_path, name):
    head, filler, mib, tail, said = BOMBS[name]
    bomb = _bomb(tmp_path / f"{name}.json.gz", head, filler, mib, tail)
    assert bomb.stat().st_size * 100 < mib * 2**20  # more than 100:1
    proc, peak = _peak_rss_bytes(["report", str(bomb), "--format", "json", "-o", str(tmp_path / "r.json")])
    assert proc.returncode == 3 and said in proc.stdout and peak < 2**30, proc.stdout


def test_text_without_event_boundaries_is_not_read_to_the_end(tmp_path):
    plain = tmp_path / "spaces.json"
    plain.write_bytes(b'{"traceEvents": [' + b" " * (80 * 2**20))  # plain text: no ratio to judge
    out = report(plain)
    [note] = out.notes("trace-truncated")
    assert out.code == 0 and "no event boundary" in note["message"]
    head = tmp_path / "no-head.json"
    head.write_bytes(b"{" + b" " * (20 * 2**20) + b'"traceEvents": []}')
    out = report(head, process=True)
    assert out.code == 3 and "no traceEvents list in the first" in out.stderr


def test_two_hundred_thousand_empty_gzip_members(cpu_trace, tmp_path):
    path = tmp_path / "members.json.gz"
    text = cpu_trace.read_bytes()
    cut = len(text) // 2
    path.write_bytes(gzip.compress(text[:cut]) + gzip.compress(b"") * 200_000 + gzip.compress(text[cut:]))
    out = report(path, process=True)
    assert out.code == 0 and out.doc["run"]["steps"]["count"] > 0
    assert "trace-truncated" not in out.rules() and "input-error" not in out.rules()


# --- 4. partial results --------------------------------------------------------------------


def _op_rows(out) -> list[str]:
    """The rows of `tracemortem ops`, in a fixed order (ops with equal times may swap places)."""
    assert out.code == 0
    return sorted(out.stdout.splitlines())


def _flip_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01  # CRC32 of the member: the deflate data stays intact
    path.write_bytes(bytes(data))


TRACE_DAMAGE = {
    "random-bytes": lambda p: p.write_bytes(b"\x93" + random.Random(3).randbytes(5000)),
    "empty": lambda p: p.write_bytes(b""),
    "not-a-trace": lambda p: p.write_bytes(gzip.compress(b'{"x": 1}')),
}


@pytest.mark.parametrize("damage", sorted(TRACE_DAMAGE))
def test_a_run_with_an_unreadable_trace_still_gets_its_health_report(nan_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(nan_run, run)
    TRACE_DAMAGE[damage](_trace_file(run))
    out = report(run)
    assert out.code == 1  # the NaN is still an error finding
    assert "nonfinite-loss" in out.rules() or "nonfinite-gradient" in out.rules()
    assert "dead-parameter" in out.rules() and out.doc["run"]["steps"]["count"] == 40
    [note] = [n for n in out.notes("input-error") if n["title"] == "Unreadable trace file skipped"]
    assert _trace_file(run).name in note["message"]


def test_a_gzip_member_with_a_bad_crc_is_read_in_full_with_a_note(recorded, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(recorded, run)
    _flip_crc(_trace_file(run))
    out = report(run)
    [note] = out.notes("trace-truncated")
    assert "checksum" in note["message"]
    assert _op_rows(cli("ops", str(run))) == _op_rows(cli("ops", str(recorded)))  # every event was read


def test_files_being_written_and_own_reports_are_never_read(recorded, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(recorded, run)
    traces = run / "rank0" / "traces"
    before = _op_rows(cli("ops", str(run)))
    scratch = traces / ".trace.k2j4"
    scratch.mkdir()
    (scratch / "trace.json").write_bytes(gzip.decompress(_trace_file(run).read_bytes()))  # a live export
    shutil.copy(_trace_file(run), traces / f".{_trace_file(run).name}.tmp.json.gz")
    assert cli("report", str(traces), "--format", "json", "-o", str(traces / "tracemortem-report.json")).code == 0
    assert _op_rows(cli("ops", str(run))) == before  # nothing counted twice
    assert _op_rows(cli("ops", str(traces))) == before  # and its own report is not read as a trace


def test_o_never_overwrites_an_input(run_copy, tmp_path):
    trace = _trace_file(run_copy)
    original = trace.read_bytes()
    for target in (trace, run_copy / "manifest.json", run_copy / "rank0" / "meta.json"):
        out = cli("report", str(run_copy), "-o", str(target))
        assert out.code == 2 and "refusing to overwrite the input" in out.stderr
    out = cli("report", str(trace), "-o", str(trace))
    assert out.code == 2 and trace.read_bytes() == original


def test_a_folder_that_cannot_be_listed_is_a_note(run_copy):
    # A real OSError from the file system as root too: `steps` a file, not a folder.
    shutil.rmtree(run_copy / "rank0" / "steps")
    (run_copy / "rank0" / "steps").write_text("not a folder")
    out = report(run_copy)
    assert out.code in (0, 1) and "grads" in out.doc["run"]["recorded"]
    assert any("cannot list this folder" in n["message"] for n in out.notes("input-error"))


needs_permissions = pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 files; run as a normal user")


@needs_permissions
def test_mode_000_parts_are_notes(nan_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(nan_run, run)
    _trace_file(run).chmod(0)
    (run / "rank0" / "grads" / "part-000001.parquet").chmod(0)
    out = report(run)
    assert out.code == 1 and out.doc["run"]["steps"]["count"] == 40
    (run / "rank0").chmod(0)
    try:
        out = report(run)
        assert out.code in (0, 1, 3) and out.code != 4
    finally:
        (run / "rank0").chmod(0o755)


# --- 5. exit codes as promised -------------------------------------------------------------


def _garbage_meta(run: Path) -> None:
    (run / "rank0" / "meta.json").write_bytes(b"\x93garbage")


def _symlink_loop_chunk(run: Path) -> None:
    chunk = run / "rank0" / "grads" / "part-000009.parquet"
    chunk.symlink_to(chunk)


def _foreign_health(run: Path) -> None:
    _write_parquet(
        run / "rank0" / "checkpoints" / "health.parquet",
        {"step": ["a"], "path": [1], "param_id": ["x"], "weight_norm": ["y"], "weight_absmax": [1], "nonfinite": ["z"]},
    )


def _duplicate_column(run: Path) -> None:
    import pyarrow.parquet as pq

    chunk = run / "rank0" / "grads" / "part-000001.parquet"
    table = pq.read_table(chunk)
    pq.write_table(table.append_column("norm", table.column("norm")), chunk)


def _rank_in_file_name(run: Path) -> None:
    trace = _trace_file(run)
    trace.rename(trace.with_name("rank4294967296_host_1.1.pt.trace.json.gz"))
    shutil.copy(trace.with_name("rank4294967296_host_1.1.pt.trace.json.gz"), run / "rank-2147483648.json.gz")


def _rank_folder(run: Path) -> None:
    (run / "rank0").rename(run / "rank4294967296")
    (run / "rank3000000000").mkdir()


def _invalid_utf8_dims(run: Path) -> None:
    trace = _trace_file(run)
    text = record_cpu_trace(run / "cpu-trace.json").read_bytes()  # recorded with shapes
    (run / "cpu-trace.json").unlink()
    assert b'"Input Dims": [' in text
    text = text.replace(b'"Input Dims": [', b'"Input Dims": ["\xff\xfe\xc3", ', 3)
    trace.write_bytes(gzip.compress(text))


EXIT_4_CASES = {  # the exit-4 inputs, each on a copy of the NaN run: (change, expected exit)
    "dead-parameter-missing-meta": (lambda run: (run / "rank0" / "meta.json").unlink(), 1),
    "dead-parameter-garbage-meta": (_garbage_meta, 1),
    "symlink-loop-named-like-a-chunk": (_symlink_loop_chunk, 1),
    "health-foreign-types-in-nan-run": (_foreign_health, 1),
    "duplicate-column-in-grads-chunk": (_duplicate_column, 1),
    "rank-2**32-in-trace-file-name": (_rank_in_file_name, 1),
    "rank-2**32-in-folder-name": (_rank_folder, None),  # no rank left: whatever the run says, not exit 4
    "invalid-utf8-in-input-dims": (_invalid_utf8_dims, 1),
}


@pytest.mark.parametrize("case", sorted(EXIT_4_CASES))
def test_former_exit_4_inputs(nan_run, tmp_path, case):
    run = tmp_path / "run"
    shutil.copytree(nan_run, run, symlinks=True)
    change, expected = EXIT_4_CASES[case]
    change(run)
    for command in ("summary", "ops"):
        assert cli(command, str(run)).code in (0, 1, 3)
    out = report(run, process=True)
    assert out.code == expected if expected is not None else out.code in (0, 1, 3), out.stderr
    if case.startswith("rank-2**32-in-trace"):  # also as a folder of traces named by rank
        assert report(run / "rank-2147483648.json.gz").code == 0
    if expected == 1:
        assert out.doc["run"]["steps"]["count"] == 40
        names = " ".join(f["message"] for f in out.doc["findings"] if f["rule"] == "dead-parameter")
        assert "gate" in names or "param" in names


@pytest.mark.parametrize("value", ["exploding-gradient.window=0", "loss-spike.window=-3", "slow-step.min_ratio=1e300"])
def test_threshold_values_out_of_range_are_usage_errors(recorded, value):
    out = report(recorded, "--set", value, process=True)
    assert out.code == 2 and out.stderr.count("\n") == 1 and "out of range" in out.stderr


@pytest.mark.parametrize("target", ["/proc/no-such-dir/r.html", "missing-folder/r.html"])
def test_an_unwritable_output_is_a_usage_error(recorded, target):
    out = cli("report", str(recorded), "-o", target, process=True)
    assert out.code == 2 and out.stderr.count("\n") == 1 and "cannot write the report" in out.stderr


@pytest.mark.slow
def test_every_threshold_at_both_ends_of_its_range(nan_run):
    from tracemortem.analysis import analyze
    from tracemortem.config import Config, all_thresholds
    from tracemortem.report import render

    for name, spec in all_thresholds().items():
        if isinstance(spec.default, bool) or not isinstance(spec.default, (int, float)):
            continue
        for value in (spec.low, spec.high):
            analysis = analyze(nan_run, Config({name: value}))
            strict_json(render(analysis, "json"))
            render(analysis, "text")


def test_every_json_output_is_strict(nan_run, run_copy):
    from tracemortem import format as fmt

    steps = run_copy / "rank0" / "steps" / "part-000000.parquet"
    import pyarrow.parquet as pq

    table = pq.read_table(steps)
    nan = [float("nan")] * table.num_rows
    table = table.set_column(table.schema.get_field_index("duration_s"), fmt.STEPS_SCHEMA.field("duration_s"), [nan])
    pq.write_table(table, steps)
    for path in (nan_run, run_copy):
        doc = report(path).doc  # parsed strictly: NaN / Infinity would fail
        assert "findings" in doc
    diff = cli("diff", str(nan_run), str(run_copy), "--format", "json")
    doc = strict_json(diff.stdout)
    nan_doc = report(nan_run).doc
    assert any(v in ("nan", "inf", "-inf") for v in nan_doc.get("non_finite", {}).values())
    for pointer in nan_doc.get("non_finite", {}):
        node = nan_doc
        for part in pointer.strip("/").split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part.replace("~1", "/").replace("~0", "~")]
        assert node is None, pointer
    assert "step_time_s" in doc


# --- 6. URL credentials, in every format, with and without --redact -------------------------

SECRETS = {
    "redis://:hunter2pw@cache.internal:6379/0": "hunter2pw",
    "postgres://svc:s3cr3tpw@db.internal/x": "s3cr3tpw",
    "amqp://guest:p@ssw0rd@mq:5672": "ssw0rd",
    "https://store.example/b?sig=SASsigVALUE&se=2030": "SASsigVALUE",
    "https://s3.example/o?X-Amz-Signature=AMZsigVALUE": "AMZsigVALUE",
    "https://api.example/v1?access_token=TOKvalue123": "TOKvalue123",
}


def test_url_credentials_never_reach_any_output(cpu_trace, tmp_path):
    doc = json.loads(cpu_trace.read_text())
    urls = iter(list(SECRETS) * 200)
    for event in doc["traceEvents"]:
        if event.get("cat") == "cpu_op":
            event["name"] = f"load {next(urls)} " + event["name"]
    doc["host_name"] = "worker redis://:hunter2pw@cache.internal"
    folder = tmp_path / "traces"
    folder.mkdir()
    trace = folder / "rank0.json"
    trace.write_text(json.dumps(doc))
    (folder / "rank1.json").write_text("redis://:hunter2pw@cache.internal is not a trace")
    outputs = []
    for extra in ((), ("--redact",)):
        for form in ("html", "md", "json"):
            out = cli("report", str(folder), "--format", form, "-o", "-", *extra)
            assert out.code == 0
            outputs.append(out.stdout + out.stderr)
        for command in ("summary", "ops"):
            out = cli(command, str(folder), *extra)
            outputs.append(out.stdout + out.stderr)
        for form in ("text", "md", "json"):
            out = cli("diff", str(cpu_trace), str(folder), "--format", form, *extra)
            outputs.append(out.stdout + out.stderr)
    # A path holding a URL reaches the error line as given (a user pasting a URL as PATH).
    out = cli("summary", "redis://:hunter2pw@cache.internal/trace.json", process=True)
    assert out.code == 3
    outputs.append(out.stderr)
    every = "\n".join(outputs)
    assert "[redacted]" in every
    for secret in SECRETS.values():
        assert secret not in every, secret
