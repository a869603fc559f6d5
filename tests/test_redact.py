"""redact_analysis on hand-built analyses: planted secrets never survive into any report format,
`--redact` pseudonyms are stable and keep hosts apart, and ordinary names are left alone."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import polars as pl
import pytest

from tracemortem.analysis import Analysis
from tracemortem.findings import Finding
from tracemortem.report import render
from tracemortem.report.redact import REDACTED, is_secret_key, redact_analysis
from tracemortem.run_facts import RunFacts

HF = "hf_" + "Q7x9" * 9  # 36 characters after the prefix, like a real token
GHP = "ghp_" + "aB3d" * 9
AKIA = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SLACK = "xoxb-123456789012-abcdefABCDEF"
OPENAI = "sk-proj-" + "Zz09" * 6
GOOGLE = "AIza" + "SyD-" * 8 + "abc"
PASSWORD = "hunter2-correct-horse"
URL_PASS = "s3cr3tpw"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAuXJ2\nQWERTY==\n-----END RSA PRIVATE KEY-----"
SECRETS = [HF, GHP, AKIA, JWT, AWS_SECRET, SLACK, OPENAI, GOOGLE, PASSWORD, URL_PASS, "MIIEowIBAAKCAQEAuXJ2"]


def _core(secret: str) -> str:
    """The longest stretch of a secret that no report format escapes (Markdown escapes `_`)."""
    return max(re.findall(r"[A-Za-z0-9-]+", secret), key=len)


ENV_DUMP = f"PATH=/usr/bin HF_TOKEN={HF} WANDB_API_KEY=0123456789abcdef aws_secret_access_key={AWS_SECRET}"
ORDINARY_OPS = ["aten::addmm", "aten::_foreach_norm", "aten::mm", "ns::get_token::run", "Optimizer.step#AdamW.step"]
HOSTS = ["gpu-node-07.cluster.example.org", "gpu-node-12.cluster.example.org"]


def _analysis(
    extra_ops: list[str] = (),
    scalar_names: list[str] = (),
    param_names: list[str] | None = None,
    hosts: list[str] = HOSTS,
    findings: list[Finding] = (),
) -> Analysis:
    ops_names = ORDINARY_OPS + list(extra_ops)
    n = len(ops_names)
    ops = pl.DataFrame(
        {
            "name": ops_names,
            "input_dims": ["[[8, 8], [8, 8]]"] * n,
            "calls": list(range(1, n + 1)),
            "cpu_self_us": [float(i) for i in range(n)],
        }
    ).with_columns(pl.col("name").cast(pl.Categorical))
    kernels = pl.DataFrame(
        {"name": ["ampere_sgemm_128x64_nn", f"user_kernel<{GHP}>"], "calls": [3, 4], "total_us": [1.0, 2.0]}
    )
    steps = pl.DataFrame(
        {
            "step": [0, 1, 0, 1],
            "loss": [1.0, 0.9, 1.1, 0.8],
            "rank": pl.Series([0, 0, 1, 1], dtype=pl.Int32),
            **{name: [0.1, 0.2, 0.3, 0.4] for name in scalar_names},
        }
    )
    names = param_names or ["encoder.layers.0.attn.keys.weight", "decoder.token_embedding.weight"]
    params = pl.DataFrame({"param_id": list(range(len(names))), "name": names, "shape": ["(4, 4)"] * len(names)})
    step_times = pl.DataFrame({"rank": pl.Series([0, 1], dtype=pl.Int32), "step": [0, 0], "duration_us": [10.0, 12.0]})
    manifest = {
        "config": {
            "lr": 0.1,
            "db_password": PASSWORD,
            "wandb": {"apiKey": OPENAI, "project": "llama"},
            "notes": ENV_DUMP,
            "use_auth": True,
            "credentials": {f"{AKIA}": "x", "n": [1, None]},
        }
    }
    run = {
        "path": "/home/alice/runs/exp",
        "kind": "run",
        "world_size": 2,
        "hostnames": sorted(hosts),
        "config": manifest["config"],
        "env": {"HF_TOKEN": HF, "GITHUB_TOKEN": GHP, "HOME": "/home/alice"},
        "ranks": [{"rank": r, "steps": 2, "hostname": h} for r, h in enumerate(hosts)],
        "cache": "/tmp/torchinductor_alice/ab/cabc.py",
        "url": f"https://bob:{URL_PASS}@minio.internal:9000/bucket",
        f"note {AKIA}": "key names are cleaned too",
    }
    return Analysis(
        path=Path("/home/alice/runs/exp"),
        kind="run",
        findings=list(findings),
        run=RunFacts.from_dict(run),
        steps=steps,
        grads=pl.LazyFrame({"step": [0], "param_id": [0], "norm": [1.0]}),
        params=params,
        ops=ops,
        kernels=kernels,
        step_times=step_times,
    )


PLANTED_FINDINGS = [
    Finding(
        "slow-op",
        "warning",
        f"slow op with {GHP}",
        f"message carries an env dump: {ENV_DUMP}",
        rank=1,
        subject=f"op {AKIA}",
        evidence={"share": 0.5, "token": JWT, "cmd": f"curl -H 'Authorization: Bearer {SLACK}abcdefgh'"},
        suggestion=f"key file:\n{PEM}",
    ),
    Finding(
        "straggler-rank",
        "warning",
        f"rank 1 on {HOSTS[1]} is slow",
        f"{HOSTS[1]} lags {HOSTS[0]}",
        rank=1,
        subject=HOSTS[1].split(".")[0],
        evidence={"google": GOOGLE},
    ),
]


def _everything(analysis: Analysis) -> str:
    """Every string the analysis holds where a reporter could reach it, as one text."""
    parts = [json.dumps(analysis.to_dict(), default=str), str(analysis.path)]
    for frame in (analysis.steps, analysis.params, analysis.ops, analysis.kernels, analysis.step_times):
        parts.append(" ".join(frame.columns))
        for column in frame.columns:
            parts.extend(str(v) for v in frame[column].to_list())
    return "\n".join(parts)


def _planted() -> Analysis:
    return _analysis(
        extra_ops=[f"record_function: {ENV_DUMP}", f'{{"GH_TOKEN": "{GHP}"}}'],
        scalar_names=["tokens_per_s", f"auth_{JWT}"],
        findings=PLANTED_FINDINGS,
    )


@pytest.mark.parametrize("pseudonymize", [False, True])
def test_no_planted_secret_survives_anywhere(pseudonymize: bool) -> None:
    before = _planted()
    assert all(secret in _everything(before) for secret in SECRETS)  # the plant is real
    after = redact_analysis(before, pseudonymize=pseudonymize)
    text = _everything(after)
    for secret in SECRETS:
        assert secret not in text, secret
    assert "0123456789abcdef" not in text  # WANDB_API_KEY's value in the env dump
    for fmt in ("json", "md", "html", "text"):
        document = render(after, fmt)
        for secret in SECRETS:
            assert _core(secret) not in document, (fmt, secret)


def test_redaction_keeps_structure_and_context() -> None:
    after = redact_analysis(_planted(), pseudonymize=False)
    config = after.run.extra["config"]
    assert config["db_password"] == REDACTED and config["wandb"] == {"apiKey": REDACTED, "project": "llama"}
    assert config["lr"] == 0.1 and config["use_auth"] is True  # a flag says nothing secret
    assert config["credentials"] == {REDACTED: REDACTED, "n": [REDACTED, None]}
    assert config["notes"].startswith("PATH=/usr/bin HF_TOKEN=[redacted] WANDB_API_KEY=[redacted]")
    assert after.run.extra["env"] == {"HF_TOKEN": REDACTED, "GITHUB_TOKEN": REDACTED, "HOME": "/home/alice"}
    assert after.run.extra["url"] == "https://[redacted]@minio.internal:9000/bucket"
    assert "note [redacted]" in after.run.extra
    ops = after.ops["name"].to_list()
    assert ops[: len(ORDINARY_OPS)] == ORDINARY_OPS
    assert ops[-1] == '{"GH_TOKEN": [redacted]}'
    assert after.ops.schema["name"] == pl.Categorical
    assert after.kernels["name"].to_list() == ["ampere_sgemm_128x64_nn", "user_kernel<[redacted]>"]
    assert after.steps.columns == ["step", "loss", "rank", "tokens_per_s", "auth_[redacted]"]
    finding = after.findings[0]
    assert finding.evidence["token"] == REDACTED and finding.evidence["share"] == 0.5
    assert finding.suggestion == "key file:\n[redacted]"
    assert finding.evidence["cmd"] == "curl -H 'Authorization: [redacted]'"


def test_input_is_not_modified() -> None:
    before = _planted()
    snapshot = _everything(before)
    redact_analysis(before, pseudonymize=True)
    assert _everything(before) == snapshot


def test_clean_analysis_passes_through_unchanged() -> None:
    before = _analysis(hosts=["a", "b"], param_names=["model.keys.weight", "tokenizer.embed.weight", "monkey.bias"])
    before = dataclasses.replace(
        before,
        kernels=before.kernels.head(1),
        run=RunFacts.from_dict({"path": "runs/x", "max_tokens": 4096, "author": "Ada"}),
    )
    after = redact_analysis(before, pseudonymize=False)
    for name in ("steps", "params", "ops", "kernels", "step_times"):
        assert getattr(after, name).equals(getattr(before, name)), name
    assert after.run == before.run


def test_secret_key_names() -> None:
    secret = [
        "HF_TOKEN",
        "password",
        "db_passwd",
        "apiKey",
        "api_key",
        "AWS_SECRET_ACCESS_KEY",
        "privateKey",
        "Authorization",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "client_secret",
        "auth",
    ]
    ordinary = ["keys", "key", "monkey", "max_tokens", "tokenizer", "author", "hostname", "path", "sort", "keyword"]
    assert [k for k in secret if not is_secret_key(k)] == []
    assert [k for k in ordinary if is_secret_key(k)] == []


def test_token_shapes_inside_free_text() -> None:
    texts = {
        f"export HF_TOKEN={HF}": "export HF_TOKEN=[redacted]",
        f"clone https://{GHP}@github.com/x/y": "clone https://[redacted]@github.com/x/y",
        f"id={AKIA}, region=us-east-1": "id=[redacted], region=us-east-1",
        f"'password': '{PASSWORD}'": "'password': [redacted]",
        f'{{\\"MY_SECRET\\": \\"{PASSWORD}\\"}}': '{\\"MY_SECRET\\": [redacted]}',
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz": "[redacted]",
        f"jwt {JWT} end": "jwt [redacted] end",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==": "Authorization: [redacted]",
        "basic normalization of inputs": "basic normalization of inputs",
        "task-scheduler-worker-thread-pool-0001": "task-scheduler-worker-thread-pool-0001",
        "aten::scaled_dot_product_attention": "aten::scaled_dot_product_attention",
        "keys: 12 tokens: 4096": "keys: 12 tokens: 4096",
    }
    before = _analysis(extra_ops=list(texts))
    after = redact_analysis(before, pseudonymize=False)
    got = dict(zip(before.ops["name"].to_list(), after.ops["name"].to_list()))
    assert {k: got[k] for k in texts} == texts


def test_pseudonyms_are_stable_and_keep_hosts_apart() -> None:
    after = redact_analysis(_planted(), pseudonymize=True)
    text = _everything(after)
    for real in ("gpu-node-07", "gpu-node-12", "cluster.example.org", "alice"):
        assert real not in text, real
    assert after.run.hostnames == ("host-1", "host-2")
    assert [r.extra["hostname"] for r in after.run.ranks] == ["host-1", "host-2"]  # rank 0's host is host-1
    assert after.findings[1].title == "rank 1 on host-2 is slow" and after.findings[1].message == "host-2 lags host-1"
    assert after.findings[1].subject == "host-2"  # the short name is the same machine
    assert after.run.path == "/home/user-1/runs/exp" and after.path == Path("/home/user-1/runs/exp")
    assert after.run.extra["cache"] == "/tmp/torchinductor_user-1/ab/cabc.py"
    # the same input gives the same document
    assert render(after, "json") == render(redact_analysis(_planted(), pseudonymize=True), "json")


def test_without_redact_flag_hosts_and_paths_stay() -> None:
    after = redact_analysis(_planted(), pseudonymize=False)
    assert list(after.run.hostnames) == sorted(HOSTS) and after.run.path == "/home/alice/runs/exp"


def test_host_names_from_trace_file_names_and_recorder_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    # No hostname metadata at all: the tensorboard_trace_handler file names still give them away,
    # and the recorder writes `node.a` as `node_a`.
    monkeypatch.setenv("LOGNAME", "zoe")
    before = _analysis(hosts=[])
    before = dataclasses.replace(
        before,
        run=RunFacts.from_dict(
            {
                "files": [
                    "traces/trainer-3_991.1700000000000123.pt.trace.json",
                    "r/rank1_node_a_77.1700000000000.pt.trace.json.gz",
                ],
                "hostnames": ["node.a"],
                "who": "ran by zoe on trainer-3; root-cause unknown; /root/.cache/x; C:\\Users\\zoe\\x",
            }
        ),
    )
    after = redact_analysis(before, pseudonymize=True)
    assert after.run.extra["files"] == [
        "traces/host-2_991.1700000000000123.pt.trace.json",
        "r/rank1_host-1_77.1700000000000.pt.trace.json.gz",
    ]
    # users by name: alice (home paths in the run facts), root, zoe (getpass's login name, known as a
    # bare word); `root` is only a home directory, never a bare word
    assert (
        after.run.extra["who"]
        == "ran by user-3 on host-2; root-cause unknown; /home/user-2/.cache/x; C:\\Users\\user-3\\x"
    )


def test_names_that_clean_to_the_same_text_stay_distinct() -> None:
    other = JWT.replace("dozj", "zzzz")
    after = redact_analysis(_analysis(scalar_names=[f"a {JWT}", f"a {other}"]), pseudonymize=False)
    assert after.steps.columns[-2:] == ["a [redacted]", "a [redacted] #2"]
    assert after.steps["a [redacted] #2"].to_list() == [0.1, 0.2, 0.3, 0.4]


def test_a_large_run_is_cleaned_whole() -> None:
    """50,000 parameters (one with a token in its name), 20,000 op rows, 2,000 steps."""
    n = 50_000
    names = [f"model.layers.{i // 10}.block.{i % 10}.weight" for i in range(n)]
    names[12_345] = f"adapter.{HF}.weight"
    base = _analysis(param_names=names)
    ops = pl.DataFrame(
        {"name": [f"aten::op_{i % 500}" for i in range(20_000)], "input_dims": [f"[[{i}, 8]]" for i in range(20_000)]}
    ).with_columns(pl.col("name").cast(pl.Categorical))
    steps = pl.DataFrame({"step": list(range(2000)), "loss": [1.0] * 2000, "tokens_per_s": [1.0] * 2000})
    big = dataclasses.replace(base, ops=ops, steps=steps)
    after = redact_analysis(big, pseudonymize=True)
    assert after.params.height == n and after.ops["name"].to_list()[:2] == ["aten::op_0", "aten::op_1"]
    assert after.params["name"][12_345] == "adapter.[redacted].weight" and after.params["name"][0] == names[0]
