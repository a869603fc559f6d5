"""origin.json: what a replay found, in the schema of docs/format.md ("origin.json")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import format as fmt
from ..version import __version__

ORIGIN_FORMAT = 1


def not_replayed(context: dict[str, Any], cause: str, reason: str) -> dict[str, Any]:
    """origin.json for a step that could not be re-run at all (no batch, the user's code failed)."""
    return _document(context, reproduced=False, causes=[cause], reason=reason, replay={})


def build_origin(context: dict[str, Any], replay: dict[str, Any]) -> dict[str, Any]:
    """The origin of the first non-finite value (forward first: a NaN born in forward is what
    backward then spreads), or why the replay did not reproduce the failure."""
    forward, backward = replay.get("forward"), replay.get("backward")
    loss = replay.get("loss") or {}
    failed = bool(
        forward
        or backward
        or replay.get("anomaly")
        or replay.get("grads_nonfinite")
        or (loss and not loss.get("finite"))
    )
    if failed:
        return _document(context, reproduced=True, causes=[], reason=None, replay=replay)
    causes, reasons = [], []
    if replay.get("error"):
        causes.append("error")
        reasons.append(f"the replayed step raised {replay['error']}")
    recorded, used = context.get("recorded_device"), context.get("device")
    if recorded and used and str(recorded).split(":")[0] != str(used).split(":")[0]:
        causes.append("different-device")
        reasons.append(f"recorded on {recorded}, replayed on {used}: kernels and their rounding differ")
    random_ops = replay.get("random_ops") or []
    if random_ops:
        causes.append("non-determinism")
        reasons.append(
            f"the step draws random numbers ({', '.join(random_ops)}) and the snapshot's RNG state "
            "was saved after the step's forward pass, so the replay drew different ones"
        )
    if not causes:
        causes.append("non-determinism")
        reasons.append(
            "the replay ran finite: the failure depends on something the snapshot does not hold (non-deterministic "
            "kernels, data changed after observe_batch, a different loss function, autocast or dtype settings)"
        )
    return _document(context, reproduced=False, causes=causes, reason="; ".join(reasons), replay=replay)


def _document(
    context: dict[str, Any], *, reproduced: bool, causes: list[str], reason: str | None, replay: dict[str, Any]
) -> dict[str, Any]:
    forward, backward = replay.get("forward"), replay.get("backward")
    chosen = forward or backward
    phase = "forward" if forward else "backward" if backward else None
    doc: dict[str, Any] = {
        "format": ORIGIN_FORMAT,
        "tool": fmt.TOOL,
        "version": __version__,
        **context,
        "reproduced": reproduced,
        "causes": causes,
        "reason": reason,
        "phase": phase if reproduced else None,
        "module": None,
        "module_class": None,
        "op": None,
        "backward_op": None,
        "dtype": None,
        "inputs": [],
        "params": [],
    }
    if reproduced and chosen:
        doc.update(
            module=chosen.get("module"),
            module_class=chosen.get("module_class") or _class_from(replay, chosen.get("module")),
            op=chosen.get("op"),
            backward_op=backward.get("node") if phase == "backward" and backward else None,
            dtype=chosen.get("dtype"),
            inputs=chosen.get("inputs", []),
            params=chosen.get("params", []),
        )
    doc["replay"] = replay
    return doc


def _class_from(replay: dict[str, Any], module: str | None) -> str | None:
    first = replay.get("first_module_output") or {}
    return first.get("module_class") if first.get("module") == module else None


def write_origin(path: Path, origin: dict[str, Any]) -> Path:
    fmt.write_json_atomic(path, origin)
    return path
