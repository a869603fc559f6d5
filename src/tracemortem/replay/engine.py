"""Re-run one training step under watch and say where its first non-finite value was born
(docs/replay.md). Shared by the offline command and the in-process replay.

The forward pass runs under `Watch` (every torch function checked); the backward pass under
`torch.autograd.detect_anomaly`, whose error names the first backward op that returned NaN,
while the node hooks also catch an Inf it does not check for.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .stats import flat_tensors, is_float, row_dict, stats_row
from .watch import Call, Gradient, Watch, host_rows

LossFn = Callable[[torch.nn.Module, Any], Any]
_ANOMALY = re.compile(r"Function '(\w+)' returned nan values in its (\d+)th output")


class LossError(Exception):
    """The step's loss cannot be formed from what the model returned."""


def default_loss(model: torch.nn.Module, batch: Any) -> Any:
    """`model(**batch)` for a dict batch, else `model(batch)`; the loss is the output itself
    when it is a scalar tensor, else its `.loss` attribute or `"loss"` key (Hugging Face style)."""
    output = model(**batch) if isinstance(batch, dict) else model(batch)
    return loss_of(output)


def loss_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        if output.numel() != 1:
            raise LossError(f"the model returned a tensor of shape {tuple(output.shape)}, not a scalar loss")
        return output.reshape(())
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise LossError(f"cannot find a scalar loss in the model's {type(output).__name__} output")
    return loss.reshape(())


def replay_step(model: torch.nn.Module, batch: Any, loss_fn: LossFn) -> dict[str, Any]:
    """Forward and backward of one step on `model` (whose grads it overwrites); the findings
    as origin.json's replay fields (docs/format.md)."""
    model.zero_grad(set_to_none=True)
    result: dict[str, Any] = {"batch_nonfinite": _nonfinite_count(flat_tensors(batch))}
    result["params_nonfinite"] = [
        name for name, p in model.named_parameters() if is_float(p) and not bool(torch.isfinite(p).all())
    ]
    watch = Watch(model)
    loss: torch.Tensor | None = None
    error: str | None = None
    with watch:
        try:
            loss = loss_of(loss_fn(model, batch))
        except Exception as exc:  # the user's code, or a NaN that made it raise
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    anomaly = None
    if loss is not None:
        result["loss"] = row_dict(stats_row(loss).cpu().tolist())
        if loss.requires_grad:
            anomaly, error = _backward(loss)
        else:
            error = "the loss does not require grad: nothing to run backward on"
    result["error"] = error
    result["anomaly"] = anomaly
    loss_finite = loss is not None and result["loss"]["finite"]
    result["forward"] = _first_forward(watch, model, loss_finite)
    result["backward"] = _first_backward(watch)
    result["first_module_output"] = _first_module(watch, model)
    result["random_ops"] = sorted({c.op for c in watch.calls if _draws_random(c.op, model.training)})
    result["grads_nonfinite"] = [
        name
        for name, p in model.named_parameters()
        if p.grad is not None and is_float(p.grad) and not bool(torch.isfinite(p.grad).all())
    ]
    return result


def _backward(loss: torch.Tensor) -> tuple[str | None, str | None]:
    """Backward under anomaly mode: (its message naming the backward op that returned NaN, any
    other error the backward raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anomaly mode announces itself and prints forward stacks
        try:
            with torch.autograd.detect_anomaly(check_nan=True):
                torch.autograd.backward(loss)
        except Exception as exc:
            match = _ANOMALY.search(str(exc))
            if match is not None:
                return match.group(0), None
            return None, f"backward raised {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return None, None


RANDOM_OPS = frozenset({"rand", "randn", "randint", "randperm", "bernoulli", "normal", "multinomial", "exponential"})


def _draws_random(op: str, training: bool) -> bool:
    return op in RANDOM_OPS or ("dropout" in op and training)


def _nonfinite_count(tensors: list[torch.Tensor]) -> int:
    floats = [t for t in tensors if is_float(t)]
    if not floats:
        return 0
    return int(torch.stack([(~torch.isfinite(t.detach())).sum() for t in floats]).sum())


def _call_facts(call: Call, input_rows: list[list[float]] | None, model: torch.nn.Module) -> dict[str, Any]:
    inputs = []
    for k, (what, shape, dtype) in enumerate(call.inputs):
        entry: dict[str, Any] = {"index": k, "what": what, "shape": shape, "dtype": dtype}
        if input_rows is not None:
            entry.update(row_dict(input_rows[k]))
        inputs.append(entry)
    return {
        "module": call.module,
        "module_class": _module_class(model, call.module),
        "op": call.op,
        "call_index": call.index,
        "dtype": call.output_dtypes[0] if call.output_dtypes else None,
        "inputs": inputs,
        "params": _param_facts(model, call.module),
    }


# Ops that write -inf/+inf on purpose (attention masks): an Inf they make is not a birth.
MASKING_OPS = frozenset(
    {"masked_fill", "masked_fill_", "where", "full", "full_like", "new_full", "fill", "fill_", "triu", "tril"}
    | {"tensor", "as_tensor", "index_fill", "index_fill_", "masked_scatter", "clamp", "clip"}
)


def _first_forward(watch: Watch, model: torch.nn.Module, loss_finite: bool) -> dict[str, Any] | None:
    """The op where the forward pass's first harmful non-finite value was born: the first op
    that turned finite inputs into NaN/Inf (masks' deliberate -inf aside) at or before the first
    NaN; else the first op with a non-finite output (it came from the data or the weights)."""
    outputs = host_rows([c.output_rows for c in watch.calls])
    inputs = host_rows([c.input_rows for c in watch.calls])
    stats = [[row_dict(r) for r in rows or []] for rows in outputs]
    nan_at = next((k for k, rows in enumerate(stats) if any(r["nan"] for r in rows)), None)
    if nan_at is None and loss_finite:
        return None
    limit = len(stats) - 1 if nan_at is None else nan_at
    bad = [k for k in range(limit + 1) if any(not r["finite"] for r in stats[k])]
    if not bad:
        return None

    def born(k: int) -> bool:
        clean = all(row_dict(r)["finite"] for r in inputs[k] or [])
        masked = watch.calls[k].op in MASKING_OPS and not any(r["nan"] for r in stats[k])
        return clean and not masked

    first = next((k for k in bad if born(k)), bad[0])
    facts = _call_facts(watch.calls[first], inputs[first], model)
    facts["born_here"] = born(first)
    facts["output"] = stats[first]
    return facts


def _first_backward(watch: Watch) -> dict[str, Any] | None:
    gradient: Gradient | None = watch.first_gradient
    if gradient is None:
        return None
    call = watch.calls[gradient.call]
    produced, incoming = host_rows([gradient.produced, gradient.incoming])
    return {
        "node": gradient.node,
        "op": call.op,
        "module": call.module,
        "module_class": _module_class(watch.model, call.module),
        "call_index": call.index,
        "dtype": call.output_dtypes[0] if call.output_dtypes else None,
        "gradients": [row_dict(r) for r in produced or []],
        "incoming": [row_dict(r) for r in incoming or []],
        "inputs": _call_facts(call, host_rows([call.input_rows])[0], watch.model)["inputs"],
        "params": _param_facts(watch.model, call.module),
    }


def _first_module(watch: Watch, model: torch.nn.Module) -> dict[str, Any] | None:
    if not watch.module_outputs:
        return None
    flags = torch.stack([flag.to(watch.module_outputs[0][1].device) for _, flag in watch.module_outputs]).cpu()
    hits = flags.nonzero()
    if not hits.numel():
        return None
    name = watch.module_outputs[int(hits[0, 0])][0]
    return {"module": name, "module_class": _module_class(model, name)}


def _module_class(model: torch.nn.Module, name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return type(model.get_submodule(name)).__name__
    except AttributeError:
        return None


def _param_facts(model: torch.nn.Module, name: str | None) -> list[dict[str, Any]]:
    if name is None:
        return []
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return []
    params = [(n, p) for n, p in module.named_parameters(recurse=False) if is_float(p)]
    if not params:
        return []
    rows = torch.stack([stats_row(p) for _, p in params]).cpu().tolist()
    prefix = f"{name}." if name else ""
    return [
        {"name": prefix + n, "shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch."), **row_dict(r)}
        for (n, p), r in zip(params, rows)
    ]
