"""`nonfinite-origin`: where a replay of the failing step saw the first non-finite value born
(docs/findings-health.md). The replay's facts come from origin.json (load/origin.py); this
rule names the module and op, classifies the op's failure and suggests the matching fix."""

from __future__ import annotations

import re
from typing import Any

from ..findings import Finding
from ..load.run import RunData
from ..thresholds import Thresholds
from .health_series import HealthSeries

INPUTS_SHOWN = 3
_LOG_DOMAIN = re.compile(
    r"^(log|log2|log10|log1p|sqrt|rsqrt|acos|asin|acosh|atanh|lgamma|digamma|polygamma|erfinv)_?$"
    r"|^(Log|Log2|Log10|Log1p|Sqrt|Rsqrt|Acos|Asin|Acosh|Atanh|Lgamma|Digamma|Polygamma|Erfinv)Backward\d*$"
)
_DIVISION = re.compile(
    r"^(div|divide|true_divide|truediv|rtruediv|itruediv|reciprocal|normalize|floor_divide|fmod|remainder)_?$"
    r"|^(Div|Reciprocal|Norm|LinalgVectorNorm|Fmod|Remainder)Backward\d*$"
)
_EXPONENTIAL = re.compile(
    r"^(exp|exp2|expm1|softmax|log_softmax|logsumexp|softplus|cosh|sinh|pow|float_power)_?$"
    r"|^(Exp|Exp2|Expm1|Softmax|LogSoftmax|Logsumexp|Softplus|Cosh|Sinh|Pow)Backward\d*$"
)
HALF = ("float16", "bfloat16")

SUGGESTIONS = {
    "data": "The batch itself holds {batch_nonfinite} non-finite value(s): look at the data pipeline (a "
    "division by zero in normalisation, log of zero counts, a corrupt sample) and reject or repair batches with "
    "torch.isfinite before the step.",
    "parameter": "The weights were already non-finite before this step: an earlier update produced them. Look at "
    "the update ratio and gradient norm just before this step (the optimizer's eps, the learning rate, the loss "
    "scale).",
    "log-domain": "{op} received a value ≤ 0 (smallest input {min}). Clamp its argument (x.clamp_min(eps)), add an "
    "epsilon inside it, or use a log-space formulation (log_softmax, logsumexp, softplus) instead of log of a "
    "computed probability.",
    "division": "The divisor vanished (its smallest magnitude was {absmin}): a norm or count of an all-zero row "
    "(dead ReLU units, padding, an empty mask). Divide by norm.clamp_min(eps) or use F.normalize(x, eps=...).",
    "overflow-half": "{op} overflowed {dtype} (float16's largest value is 65504; bfloat16 overflows only at fp32's "
    "range but loses precision): compute attention logits, exp and softmax in float32, scale q·k by 1/sqrt(d) "
    "before the matmul, or use F.scaled_dot_product_attention.",
    "overflow": "{op} overflowed: subtract the maximum before exponentiating (torch.softmax / logsumexp do), bound "
    "its input, or lower the learning rate that let the input grow.",
    "other": "{op} produced the first non-finite value from finite inputs; the ranges of its inputs and parameters "
    "are in origin.json.",
}


def op_family(origin: dict[str, Any]) -> str:
    """Which kind of failure the origin op is: data, parameter, log-domain, division, overflow(-half), other."""
    if origin.get("batch_nonfinite"):
        return "data"
    if origin.get("params_nonfinite"):
        return "parameter"
    names = [n for n in (origin.get("backward_op"), origin.get("op")) if n]
    inputs = origin.get("inputs") or []
    nonpositive = any((i.get("nonpositive") or 0) > 0 for i in inputs)
    if any(_LOG_DOMAIN.match(n) for n in names) or (nonpositive and any(n.startswith(("pow", "Pow")) for n in names)):
        return "log-domain"
    if any(_DIVISION.match(n) for n in names):
        return "division"
    if origin.get("dtype") in HALF:
        return "overflow-half"
    if any(_EXPONENTIAL.match(n) for n in names):
        return "overflow"
    return "other"


def _describe(entry: dict[str, Any]) -> str:
    bad = sum(int(entry.get(k) or 0) for k in ("nan", "posinf", "neginf"))
    where = entry.get("what") or entry.get("name") or "input"
    span = f"[{_num(entry.get('min'))}, {_num(entry.get('max'))}]"
    return f"{where} {entry.get('dtype') or ''} in {span}" + (f" with {bad} NaN/Inf" if bad else "")


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}"


def _evidence(origin: dict[str, Any], family: str) -> dict[str, Any]:
    evidence: dict[str, Any] = {
        "op": origin.get("op"),
        "phase": origin.get("phase"),
        "module_class": origin.get("module_class"),
        "family": family,
        "replay": origin.get("mode"),
    }
    for key in ("backward_op", "dtype", "anomaly"):
        if origin.get(key):
            evidence[key] = origin[key]
    if origin.get("batch_nonfinite"):
        evidence["batch_nonfinite"] = origin["batch_nonfinite"]
    for k, entry in enumerate((origin.get("inputs") or [])[:INPUTS_SHOWN]):
        for key in ("min", "max", "absmin", "nonpositive"):
            evidence[f"input{k}_{key}"] = entry.get(key)
        evidence[f"input{k}_nonfinite"] = sum(int(entry.get(x) or 0) for x in ("nan", "posinf", "neginf"))
    bad_params = [p.get("name") for p in origin.get("params") or [] if p.get("finite") is False]
    if bad_params:
        evidence["nonfinite_params"] = bad_params
    return evidence


def _suggestion(origin: dict[str, Any], family: str) -> str:
    first = (origin.get("inputs") or [{}])[0]
    absmins = [i.get("absmin") for i in origin.get("inputs") or [] if i.get("absmin") is not None]
    values = {
        "op": origin.get("op") or "the op",
        "dtype": origin.get("dtype") or "16-bit floats",
        "min": _num(first.get("min")),
        "absmin": _num(min(absmins)) if absmins else "—",
        "batch_nonfinite": origin.get("batch_nonfinite"),
    }
    return SUGGESTIONS[family].format(**values)


def origin_finding(origin: dict[str, Any], rank: int | None) -> Finding:
    """The finding for one replay's origin (also the `tracemortem replay` summary)."""
    step = origin.get("step")
    if not origin.get("reproduced"):
        return Finding(
            "nonfinite-origin",
            "info",
            f"replay of step {step} did not reproduce the non-finite value",
            f"The {origin.get('mode') or ''} replay ran the snapshot's step without producing a NaN/Inf: "
            f"{origin.get('reason') or 'no reason recorded'}.",
            step=step,
            rank=rank,
            evidence={"causes": origin.get("causes") or [], "replay": origin.get("mode")},
            suggestion="Replay where the run was recorded (same device and dtype), with the loss function the training "
            "loop used (--loss), and capture the batch with rec.observe_batch(batch).",
        )
    if origin.get("phase") is None:
        return Finding(
            "nonfinite-origin",
            "error",
            f"replay of step {step} reproduced the non-finite value but could not place it",
            "The replayed step produced NaN/Inf, but in no op or backward node the replay could see "
            f"(anomaly mode said: {origin.get('anomaly') or 'nothing'}).",
            step=step,
            rank=rank,
            evidence={"replay": origin.get("mode"), "anomaly": origin.get("anomaly")},
            suggestion="Ops outside torch's Python API (C++ extensions called outside any module) are invisible to "
            "the replay; wrap them in a module, or look at origin.json's replay section.",
        )
    family = op_family(origin)
    module = origin.get("module")
    where = (
        f"module {module} ({origin.get('module_class')})" if module else "code outside the model (the loss function)"
    )
    if module == "":
        where = f"the top-level module ({origin.get('module_class')})"
    inputs = "; ".join(_describe(i) for i in (origin.get("inputs") or [])[:INPUTS_SHOWN]) or "no floating inputs"
    arrived = origin.get("snapshot_nonfinite_params") or []
    arrival = (
        f" The recorder first saw non-finite gradients in {', '.join(arrived[:3])}: where the value arrived, not where "
        "it was born."
        if arrived
        else ""
    )
    op = origin.get("op") or "an op"
    backward = f" (backward node {origin['backward_op']})" if origin.get("backward_op") else ""
    return Finding(
        "nonfinite-origin",
        "error",
        f"first non-finite value born in {module or origin.get('module_class') or 'the loss'}: {op} ({origin.get('phase')})",
        f"Replaying step {step}, the first NaN/Inf appeared in the {origin.get('phase')} pass at {op}{backward} in "
        f"{where}. Its inputs: {inputs}.{arrival}",
        step=step,
        rank=rank,
        subject=module if module else origin.get("module_class"),
        evidence=_evidence(origin, family),
        suggestion=_suggestion(origin, family),
    )


def nonfinite_origin(run: RunData, _series: HealthSeries, _config: Thresholds) -> list[Finding]:
    snapshot = run.facts.get("snapshot") or {}
    origin = snapshot.get("origin")
    if not origin:
        return []
    return [origin_finding(origin, snapshot.get("rank"))]
