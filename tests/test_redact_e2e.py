"""End to end through the CLI: real torch.profiler traces and a real recorded run directory with
planted secrets; no secret reaches any report format, and `--redact` pseudonymises hosts, users
and home paths while keeping two hosts apart."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from tracemortem.cli import main

HF = "hf_" + "Q7x9" * 9
GHP = "ghp_" + "aB3d" * 9
AKIA = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PASSWORD = "hunter2-correct-horse"
SECRETS = [HF, GHP, AKIA, JWT, PASSWORD]


def _core(secret: str) -> str:
    """The longest stretch of a secret that no report format escapes (Markdown escapes `_`)."""
    return max(re.findall(r"[A-Za-z0-9-]+", secret), key=len)


ENV_DUMP = f"HF_TOKEN={HF} GITHUB_TOKEN={GHP} AWS_ACCESS_KEY_ID={AKIA}"
HOSTS = ["gpu-node-07.cluster.example.org", "gpu-node-12.cluster.example.org"]
LABEL = f"load batch {ENV_DUMP} /tmp/torchinductor_alice/cache"  # a record_function name


def _train(prof, steps: int = 6) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        with torch.profiler.record_function(LABEL):
            x = torch.randn(16, 32)
            time.sleep(0.003)  # the slowest thing in the step, so it tops the op tables
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        prof.step()


def _record_traces(folder: Path) -> Path:
    """One real CPU trace, written as two ranks on two hosts with `tensorboard_trace_handler`
    file names, the env dump planted in the trace metadata and in an event's args."""
    from torch.profiler import ProfilerActivity, profile, schedule

    raw = folder / "raw.json"
    with profile(
        activities=[ProfilerActivity.CPU],
        record_shapes=True,
        schedule=schedule(wait=1, warmup=1, active=3),
        on_trace_ready=lambda p: p.export_chrome_trace(str(raw)),
    ) as prof:
        prof.add_metadata("HF_TOKEN", HF)
        _train(prof)
    trace = json.loads(raw.read_text())
    raw.unlink()
    trace["env"] = {"HF_TOKEN": HF, "HOME": "/home/alice", "ENV_DUMP": ENV_DUMP}
    for event in trace["traceEvents"]:
        if event.get("name") == LABEL:
            event.setdefault("args", {})["env"] = ENV_DUMP
    out = folder / "traces"
    out.mkdir()
    for rank, host in enumerate(HOSTS):
        trace["host_name"] = host
        trace["distributedInfo"] = {"backend": "gloo", "rank": rank, "world_size": 2}
        (out / f"{host}_{4242 + rank}.1700000000000000000.pt.trace.json").write_text(json.dumps(trace))
    return out


def _record_run(folder: Path) -> Path:
    import tracemortem

    run = folder / "run"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    config = {"lr": 0.1, "db_password": PASSWORD, "wandb": {"api_key": GHP}, "notes": ENV_DUMP}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracemortem.Recorder(run, model, opt, config=config) as rec:
        for _ in range(8):
            loss = model(torch.randn(16, 32)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss, **{"tokens_per_s": 1.0, f"auth_{JWT}": 2.0})
    return run


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record_traces(tmp_path_factory.mktemp("traces"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record_run(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_analysis_of_real_inputs_is_cleaned(traces: Path, run: Path, pseudonymize: bool) -> None:
    from tracemortem.analysis import analyze
    from tracemortem.redact import redact_analysis
    from tracemortem.report import render

    for path in (traces, run):
        plain = analyze(path)
        cleaned = redact_analysis(plain, pseudonymize=pseudonymize)
        if path == traces:  # the planted op name is in the unredacted op table
            assert _core(HF) in render(plain, "md") and "HF\\_TOKEN=\\[redacted\\]" in render(cleaned, "md")
        else:  # the planted scalar name and config are in what was loaded
            assert (
                any(JWT in c for c in plain.steps.columns)
                and plain.extras["run_data"].manifest["config"]["db_password"] == PASSWORD
            )
            assert "auth_[redacted]" in cleaned.steps.columns
            assert cleaned.extras["run_data"].manifest["config"]["db_password"] == "[redacted]"
        for fmt in ("json", "md", "html"):
            document = render(cleaned, fmt)
            for secret in SECRETS:
                assert _core(secret) not in document, (path.name, fmt, secret)
            if pseudonymize:
                assert not re.search(
                    r"gpu-node-07|gpu-node-12|alice(?!blue)", document
                )  # plotly.js names a colour aliceblue
    if pseudonymize:  # the trace metadata kept for later use: two hosts, still two
        ranks = redact_analysis(analyze(traces), pseudonymize=True).extras["traces"].ranks
        assert [ranks[r]["hostname"] for r in sorted(ranks)] == ["host-1", "host-2"]
        assert ranks[1]["files"][0].endswith("/host-2_4243.1700000000000000000.pt.trace.json")


def _report(path: Path, fmt: str, *flags: str) -> str:
    result = CliRunner().invoke(main, ["report", str(path), "--format", fmt, "-o", "-", "--fail-on", "never", *flags])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("fmt", ["json", "md", "html"])
@pytest.mark.parametrize("flags", [(), ("--redact",)])
def test_no_secret_from_a_trace_reaches_a_report(traces: Path, fmt: str, flags: tuple[str, ...]) -> None:
    document = _report(traces, fmt, *flags)
    for secret in SECRETS:
        assert _core(secret) not in document, secret


@pytest.mark.parametrize("fmt", ["json", "md", "html"])
@pytest.mark.parametrize("flags", [(), ("--redact",)])
def test_no_secret_from_a_recorded_run_reaches_a_report(run: Path, fmt: str, flags: tuple[str, ...]) -> None:
    document = _report(run, fmt, *flags)
    for secret in SECRETS:
        assert _core(secret) not in document, secret


def test_the_planted_strings_do_reach_the_report_path(traces: Path) -> None:
    """The tests above would pass on an empty report: here the same trace, analysed without
    redaction, shows the planted label, and the redacted report its cleaned form."""
    from tracemortem.analysis import analyze
    from tracemortem.report import render

    plain = render(analyze(traces), "md")
    assert _core(HF) in plain
    assert "load batch HF\\_TOKEN=\\[redacted\\]" in _report(traces, "md")


def test_redact_pseudonymises_hosts_users_and_paths(traces: Path, run: Path) -> None:
    import socket

    host = socket.gethostname()
    plain_run, redacted_run = _report(run, "md"), _report(run, "md", "--redact")
    assert f"- **Hosts:** {host}\n" in plain_run and "- **Hosts:** host-1\n" in redacted_run
    plain = "".join(_report(traces, fmt) for fmt in ("json", "md", "html"))
    assert "torchinductor\\_alice/cache" in plain  # the planted home path reaches the op table
    redacted = "".join(_report(traces, fmt, "--redact") for fmt in ("json", "md", "html"))
    assert not re.search(r"gpu-node-07|gpu-node-12|cluster\.example\.org|alice(?!blue)", redacted)
    assert "torchinductor\\_user-1/cache" in redacted
    assert _report(traces, "json", "--redact") == _report(traces, "json", "--redact")  # deterministic
