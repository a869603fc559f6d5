"""Replay of the failing step: real models whose first NaN/Inf is born in a known module and op
and arrives elsewhere; the origin must be named exactly, offline (`tracemortem replay`) and
in-process (`Recorder(replay=fn)`), and turned into a `nonfinite-origin` finding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import replay_models as rm
from cli_helpers import cli
from tracemortem import analyze

HELPERS = Path(rm.__file__)


def _attention_batches() -> list[Any]:
    # One outlier batch: finite, but q·k of its embeddings exceeds float16's range.
    return [(x * 250 if i == 5 else x, y) for i, (x, y) in enumerate(rm.data(8, shape=(4, 6, 8)))]


def _planted_inf_batches() -> list[Any]:
    out = []
    for i, (x, y) in enumerate(rm.data(8)):
        if i == 4:
            x = x.clone()
            x[2, 3] = float("inf")
        out.append((x, y))
    return out


@dataclass(frozen=True)
class Case:
    factory: str
    loss: str
    lr: float
    batches: Any
    module: str
    module_class: str
    op: str
    phase: str
    family: str
    step: int


CASES = {
    "log-of-nonpositive": Case(
        "log_net", "log_loss", 0.5, lambda: rm.data(10), "block", "LogBlock", "log", "forward", "log-domain", 3
    ),
    "vanishing-norm": Case(
        "norm_net", "norm_loss", 0.5, lambda: rm.data(10), "norm", "Normalize", "div", "forward", "division", 6
    ),
    "fp16-attention-logits": Case(
        "attention_net", "mse", 0.01, _attention_batches, "attn", "Attention", "matmul", "forward", "overflow-half", 5
    ),
    "sqrt-gradient-at-zero": Case(
        "pair_net", "mse", 0.1, lambda: rm.data(4), "dist", "PairDistance", "sqrt", "backward", "log-domain", 0
    ),
    "inf-in-one-batch": Case(
        "plain_net", "mse", 0.1, _planted_inf_batches, "inp", "Linear", "linear", "backward", "data", 4
    ),
}


def _train(run: Path, case: Case, replay: bool) -> list[float]:
    torch.manual_seed(0)
    loss_fn = getattr(rm, case.loss)
    model = getattr(rm, case.factory)()
    return rm.train(run, model, case.batches(), loss_fn, lr=case.lr, replay=loss_fn if replay else None)


def _origin(run: Path) -> dict[str, Any]:
    return json.loads((run / "rank0" / "snapshot" / "origin.json").read_text())


def _check_origin(origin: dict[str, Any], case: Case, run: Path) -> None:
    assert origin["reproduced"] is True, origin["reason"]
    assert (origin["module"], origin["module_class"], origin["op"], origin["phase"]) == (
        case.module,
        case.module_class,
        case.op,
        case.phase,
    )
    assert origin["step"] == case.step
    info = json.loads((run / "rank0" / "snapshot" / "info.json").read_text())
    arrived = info["nonfinite_params"][0]
    if case.family != "data":  # an Inf in the batch arrives in the first layer's weight gradient
        assert not arrived.startswith(case.module + "."), "the case must be born away from where it arrives"
    finding = next(f for f in analyze(run).findings if f.rule == "nonfinite-origin")
    assert (finding.severity, finding.subject, finding.step) == ("error", case.module, case.step)
    assert finding.evidence["op"] == case.op and finding.evidence["family"] == case.family


@pytest.mark.parametrize("name", list(CASES))
def test_in_process_replay_names_the_origin(tmp_path, name):
    case = CASES[name]
    _train(tmp_path, case, replay=True)
    origin = _origin(tmp_path)
    assert origin["mode"] == "in-process"
    _check_origin(origin, case, tmp_path)


@pytest.mark.parametrize("name", list(CASES))
def test_offline_replay_names_the_origin(tmp_path, name):
    case = CASES[name]
    _train(tmp_path, case, replay=False)
    assert not (tmp_path / "rank0" / "snapshot" / "origin.json").exists()
    result = cli("replay", str(tmp_path), "--model", f"{HELPERS}:{case.factory}", "--loss", f"{HELPERS}:{case.loss}")
    assert result.code == 0, result.output
    assert f"born in {case.module}: {case.op}" in result.stdout
    origin = _origin(tmp_path)
    assert origin["mode"] == "offline" and origin["device"] == "cpu"
    _check_origin(origin, case, tmp_path)


def test_input_ranges_explain_the_op(tmp_path):
    _train(tmp_path, CASES["log-of-nonpositive"], replay=True)
    origin = _origin(tmp_path)
    (log_input,) = origin["inputs"]
    assert log_input["finite"] and log_input["min"] <= 0 < log_input["nonpositive"]
    assert origin["replay"]["forward"]["born_here"] is True
    _train(tmp_path / "norm", CASES["vanishing-norm"], replay=True)
    divisor = _origin(tmp_path / "norm")["inputs"][1]
    assert divisor["shape"][-1] == 1 and divisor["absmin"] == 0.0
    _train(tmp_path / "data", CASES["inf-in-one-batch"], replay=True)
    data = _origin(tmp_path / "data")
    assert data["replay"]["batch_nonfinite"] == 1
    assert any(i["what"] == "tensor" and i["posinf"] == 1 for i in data["inputs"])
    assert (
        "non-finite value(s)"
        in next(f for f in analyze(tmp_path / "data").findings if f.rule == "nonfinite-origin").suggestion
    )


def test_backward_origin_catches_the_inf_anomaly_mode_does_not_check(tmp_path):
    # sqrt's gradient at 0 is +Inf; detect_anomaly checks NaN only, so it blames the next node.
    _train(tmp_path, CASES["sqrt-gradient-at-zero"], replay=True)
    origin = _origin(tmp_path)
    assert origin["backward_op"] == "SqrtBackward0"
    assert origin["replay"]["backward"]["gradients"][0]["posinf"] > 0
    assert "PowBackward0" in origin["replay"]["anomaly"]


def test_in_process_replay_leaves_training_unharmed(tmp_path):
    """Same losses, same final weights and the same random stream as without the replay (the model
    has dropout, so a replay that consumed random numbers would change all three)."""

    def run(folder: Path, replay: Any) -> tuple[list[float], dict[str, torch.Tensor], torch.Tensor]:
        torch.manual_seed(0)
        model = rm.drop_log_net()
        losses = rm.train(folder, model, rm.data(8), rm.drop_log_loss, lr=0.5, replay=replay)
        return losses, {k: v.clone() for k, v in model.state_dict().items()}, torch.rand(4)

    plain = run(tmp_path / "plain", None)
    replayed = run(tmp_path / "replayed", rm.drop_log_loss)
    assert _origin(tmp_path / "replayed")["module"] == "block"
    assert str(plain[0]) == str(replayed[0])  # NaN-aware equality
    for key, value in plain[1].items():
        assert torch.equal(value.nan_to_num(0.0), replayed[1][key].nan_to_num(0.0)), key
    assert torch.equal(plain[2], replayed[2])


def test_a_failing_replay_function_is_reported_and_training_goes_on(tmp_path):
    def broken(model: Any, batch: Any) -> Any:
        raise ValueError("user bug")

    torch.manual_seed(0)
    losses = rm.train(tmp_path, rm.log_net(), rm.data(6), rm.log_loss, lr=0.5, replay=broken)
    assert len(losses) == 6
    origin = _origin(tmp_path)
    assert origin["reproduced"] is False and origin["causes"] == ["error"]
    assert "user bug" in origin["reason"]
    finding = next(f for f in analyze(tmp_path).findings if f.rule == "nonfinite-origin")
    assert finding.severity == "info" and "did not reproduce" in finding.title


def test_no_batch_captured_says_so_in_both_modes(tmp_path):
    torch.manual_seed(0)
    rm.train(tmp_path / "in", rm.log_net(), rm.data(6), rm.log_loss, lr=0.5, replay=rm.log_loss, observe=False)
    assert _origin(tmp_path / "in")["causes"] == ["batch-not-captured"]
    torch.manual_seed(0)
    rm.train(tmp_path / "off", rm.log_net(), rm.data(6), rm.log_loss, lr=0.5, observe=False)
    result = cli("replay", str(tmp_path / "off"), "--model", f"{HELPERS}:log_net")
    assert result.code == 0, result.output
    origin = _origin(tmp_path / "off")
    assert origin["reproduced"] is False and origin["causes"] == ["batch-not-captured"]
    assert "did not reproduce" in result.stdout


def test_a_failure_the_snapshot_cannot_reproduce_says_why(tmp_path):
    """The loop corrupts the batch after observing it (an augmentation bug): the saved batch is
    clean, so the replay runs finite and must say so rather than name an origin."""

    def corrupt(step: int, batch: Any) -> Any:
        x, y = batch
        return (x * float("inf"), y) if step == 3 else batch

    torch.manual_seed(0)
    rm.train(tmp_path, rm.plain_net(), rm.data(6), rm.mse, lr=0.1, transform=corrupt)
    result = cli("replay", str(tmp_path), "--model", f"{HELPERS}:plain_net", "--loss", f"{HELPERS}:mse")
    assert result.code == 0, result.output
    origin = _origin(tmp_path)
    assert origin["reproduced"] is False and origin["phase"] is None and origin["module"] is None
    assert origin["causes"] == ["non-determinism"] and "ran finite" in origin["reason"]


def test_dotted_module_name_and_default_loss(tmp_path):
    """MODULE as a module name on sys.path (pytest puts tests/ there); no --loss: the model's
    scalar output is the loss."""
    torch.manual_seed(0)
    model = rm.ScalarLossNet()
    batches = [x for x, _ in rm.data(6)]
    rm.train(tmp_path, model, batches, lambda m, b: m(b), lr=0.5)
    result = cli("replay", str(tmp_path), "--model", "replay_models:ScalarLossNet")
    assert result.code == 0, result.output
    origin = _origin(tmp_path)
    assert (origin["module"], origin["op"], origin["loss"]) == ("block", "log", "default")


# --- bad input and bad usage -----------------------------------------------------------------


@pytest.fixture(scope="module")
def log_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("log-run")
    torch.manual_seed(0)
    rm.train(run, rm.log_net(), rm.data(6), rm.log_loss, lr=0.5)
    return run


def _replay(run: Path, *args: str) -> Any:
    return cli("replay", str(run), *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_colon"], "expects MODULE:NAME"),
        (["--model", "no_such_module_xyz:build"], "no module named"),
        (["--model", f"{HELPERS}:missing"], "has no attribute"),
        (["--model", f"{HELPERS}:plain_net"], "does not match the snapshot"),
        (["--model", f"{HELPERS}:Path"], "not a torch.nn.Module"),
        (["--model", f"{HELPERS}:log_net", "--rank", "3"], "no snapshot"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2_or_3(log_run, args, message):
    result = _replay(log_run, *args)
    assert result.code in (2, 3), result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tracemortem: error:") and message in line


def test_run_without_snapshot_is_unreadable_input(tmp_path):
    torch.manual_seed(0)
    rm.train(tmp_path, rm.plain_net(), rm.data(3), rm.mse, lr=0.01)
    result = _replay(tmp_path, "--model", f"{HELPERS}:plain_net")
    assert result.code == 3 and "no rank has a snapshot" in result.stderr


class _Exploit:
    def __reduce__(self) -> Any:
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).touch()",))


def test_snapshot_files_are_never_unpickled(tmp_path, monkeypatch, log_run):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(log_run, run)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    torch.save({"x": _Exploit()}, run / "rank0" / "snapshot" / "batch.pt")
    result = _replay(run, "--model", f"{HELPERS}:log_net")
    assert result.code == 3 and "weights_only" in result.stderr
    assert not marker.exists()
    (run / "rank0" / "snapshot" / "model.pt").write_bytes(b"not a zip file")
    assert _replay(run, "--model", f"{HELPERS}:log_net").code == 3


def test_code_beside_the_run_is_never_imported(tmp_path, monkeypatch, log_run):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(log_run, run)
    (run / "planted.py").write_text("raise SystemExit('imported code from the run directory')\n")
    monkeypatch.syspath_prepend(str(run))
    result = _replay(run, "--model", "planted:build")
    assert result.code == 2 and "refusing to import planted from inside the run directory" in result.stderr


@pytest.mark.parametrize(
    "content",
    ['{"reproduced": "yes"}', '{"reproduced": true, "phase": "sideways"}', "[1, 2]", "{not json"],
)
def test_malformed_origin_is_an_input_note_not_a_crash(tmp_path, log_run, content):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(log_run, run)
    (run / "rank0" / "snapshot" / "origin.json").write_text(content)
    analysis = analyze(run)
    assert not [f for f in analysis.findings if f.rule == "nonfinite-origin"]
    assert any(f.rule == "input-error" and "origin.json" in f.message for f in analysis.findings)


class _InPlaceLog(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).log_()  # in place: its input is overwritten by the op


class _InPlaceNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _InPlaceLog()
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x)).mean()


def test_an_in_place_op_is_judged_on_its_inputs_before_it_ran():
    from tracemortem.replay.engine import replay_step

    torch.manual_seed(0)
    found = replay_step(_InPlaceNet(), torch.randn(16, 8), lambda model, batch: model(batch))
    forward = found["forward"]
    assert (forward["module"], forward["op"], forward["born_here"]) == ("block", "log", True)
    assert forward["inputs"][0]["finite"] and forward["inputs"][0]["min"] < 0


class _Wrapper(torch.nn.Module):
    """Lays its state_dict out as DistributedDataParallel does (`module.` prefix)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_a_wrapped_model_and_16_bit_weights_are_replayed_as_trained(tmp_path):
    torch.manual_seed(0)
    rm.train(tmp_path / "wrapped", _Wrapper(rm.log_net()), rm.data(6), lambda m, b: rm.log_loss(m.module, b), lr=0.5)
    torch.manual_seed(0)
    rm.train(tmp_path / "bf16", rm.log_net().to(torch.bfloat16), rm.data(6), _bf16_log_loss, lr=0.5)
    for name, loss in (("wrapped", "log_loss"), ("bf16", "_bf16_log_loss")):
        helpers = HELPERS if name == "wrapped" else Path(__file__)
        result = _replay(tmp_path / name, "--model", f"{HELPERS}:log_net", "--loss", f"{helpers}:{loss}")
        assert result.code == 0, result.output
        origin = _origin(tmp_path / name)
        assert (origin["module"], origin["op"]) == ("block", "log")
    assert _origin(tmp_path / "bf16")["dtype"] == "bfloat16"


def _bf16_log_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return rm.log_loss(model, (x.to(torch.bfloat16), y.to(torch.bfloat16))).float()


def test_a_replay_function_that_uses_the_live_model_cannot_change_its_gradients(tmp_path):
    """A closure over the training model instead of the copy it is given: the replay's backward
    lands in set-aside gradients. The planted Inf makes only inp.weight's gradient non-finite, so
    the head's update at that step is finite and would show any gradient added by the replay."""

    def run(folder: Path, with_replay: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = rm.plain_net()
        replay = (lambda _copy, batch: rm.mse(model, batch)) if with_replay else None
        rm.train(folder, model, _planted_inf_batches()[:5], rm.mse, lr=0.1, replay=replay)
        return model.head.weight.detach().clone()

    plain, closure = run(tmp_path / "plain", False), run(tmp_path / "closure", True)
    assert torch.isfinite(plain).all() and torch.equal(plain, closure)
    assert _origin(tmp_path / "closure")["reproduced"] is True


@pytest.mark.slow
def test_transformers_gpt2_attention_overflow_in_both_modes(tmp_path):
    """A Hugging Face GPT-2 (from a config) whose second block's query and key projections were scaled up:
    under float16 autocast its attention scores overflow; the loss is the model's own `.loss`."""
    pytest.importorskip("transformers")

    def train(folder: Path, replay: Any) -> None:
        torch.manual_seed(0)
        model = rm.tiny_gpt2()
        with torch.no_grad():
            model.transformer.h[1].attn.c_attn.weight[:, :64].mul_(3000.0)  # queries and keys
        tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
        batches = [{"input_ids": tokens, "labels": tokens}] * 2
        rm.train(folder, model, batches, rm.gpt2_fp16_loss, lr=0.01, replay=replay)

    train(tmp_path / "in", rm.gpt2_fp16_loss)
    train(tmp_path / "off", None)
    result = _replay(tmp_path / "off", "--model", f"{HELPERS}:tiny_gpt2", "--loss", f"{HELPERS}:gpt2_fp16_loss")
    assert result.code == 0, result.output
    for folder in ("in", "off"):
        origin = _origin(tmp_path / folder)
        assert (origin["module"], origin["module_class"], origin["op"], origin["dtype"]) == (
            "transformer.h.1.attn",
            "GPT2Attention",
            "matmul",
            "float16",
        )
        finding = next(f for f in analyze(tmp_path / folder).findings if f.rule == "nonfinite-origin")
        assert finding.evidence["family"] == "overflow-half"


def test_a_failure_that_hangs_on_a_random_draw_is_not_reproduced_and_says_why(tmp_path):
    """GatedNet divides by zero when a 1-in-10 draw lands; the snapshot's RNG state is the one after
    the failing forward, so the replay draws anew (with seed 1: finite). Offline, a run recorded on
    another device also says so."""
    torch.manual_seed(1)
    rm.train(tmp_path, rm.gated_net(), rm.data(30), rm.mse, lr=0.05, replay=rm.mse)
    origin = _origin(tmp_path)
    assert origin["reproduced"] is False and origin["causes"] == ["non-determinism"]
    assert origin["replay"]["random_ops"] == ["rand"] and "rand" in origin["reason"]

    meta_path = tmp_path / "rank0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "device": "cuda:0"}))
    result = _replay(
        tmp_path, "--model", f"{HELPERS}:gated_net", "--loss", f"{HELPERS}:mse", "-o", str(tmp_path / "o.json")
    )
    assert result.code == 0, result.output
    offline = json.loads((tmp_path / "o.json").read_text())
    assert offline["reproduced"] is False
    assert offline["causes"] == ["different-device", "non-determinism"]
    assert "recorded on cuda:0, replayed on cpu" in offline["reason"]


class _NanGradient(torch.autograd.Function):
    """A custom op (as fused kernels are written) whose backward returns NaN; torch's function
    mode does not see `Function.apply`, so only the module hooks can place it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class _Fused(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NanGradient.apply(x) + 1


class _FusedNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(8, 8)
        self.fused = _Fused()
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fused(self.inp(x))).mean()


def test_a_custom_autograd_function_is_placed_in_its_module(tmp_path):
    torch.manual_seed(0)
    rm.train(tmp_path, _FusedNet(), [x for x, _ in rm.data(2)], lambda m, b: m(b), lr=0.1, replay=lambda m, b: m(b))
    origin = _origin(tmp_path)
    assert (origin["phase"], origin["module"], origin["backward_op"]) == ("backward", "fused", "_NanGradientBackward")
    assert origin["op"] == "_NanGradient"
    assert "_NanGradientBackward" in origin["replay"]["anomaly"]


def test_without_torch_the_command_says_what_to_install(tmp_path, monkeypatch, log_run):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = _replay(log_run, "--model", f"{HELPERS}:log_net")
    assert result.code == 2
    assert result.stderr.strip() == "tracemortem: error: replay needs torch: pip install 'tracemortem[record]'"
