"""End to end through the CLI: real torch.profiler traces and a real recorded run directory with
planted secrets; no secret reaches any report format, and `--redact` pseudonymises hosts, users
and home paths while keeping two hosts apart."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


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
    from tracemortem.report import render
    from tracemortem.report.redact import redact_analysis

    for path in (traces, run):
        plain = analyze(path)
        cleaned = redact_analysis(plain, pseudonymize=pseudonymize)
        if path == traces:  # the planted op name is in the unredacted op table, and redacted in the cleaned one
            # (which ops the reports list first depends on how long each took on this host)
            assert any(_core(HF) in name for name in plain.ops["name"].cast(str).to_list())
            assert any("HF_TOKEN=[redacted]" in name for name in cleaned.ops["name"].cast(str).to_list())
        else:  # the planted scalar name is in what was loaded (the manifest's config is never reported)
            assert any(JWT in c for c in plain.steps.columns)
            assert "auth_[redacted]" in cleaned.steps.columns
        for fmt in ("json", "md", "html"):
            document = render(cleaned, fmt)
            for secret in SECRETS:
                assert _core(secret) not in document, (path.name, fmt, secret)
            if pseudonymize:
                assert not re.search(
                    r"gpu-node-07|gpu-node-12|alice(?!blue)", document
                )  # plotly.js names a colour aliceblue
