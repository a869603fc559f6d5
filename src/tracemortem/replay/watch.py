"""What the replay watches: every torch function the step calls, the module it ran in, and
every backward node that computes a gradient (docs/replay.md, "How the origin is found").

Statistics rows stay on the device; each tensor's finite test reads one flag back (see
stats.py), and the rows are copied to the host once, after the step (`host_rows`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .stats import WIDTH, flat_tensors, is_finite, is_float, stats_row

MAX_TENSORS = 8  # per op, inputs and outputs each: enough for every op we name, bounded for cat/stack


@dataclass
class Call:
    """One torch function call in the forward pass."""

    index: int
    op: str
    module: str | None  # qualified name of the innermost module running it; None: outside the model
    inputs: list[tuple[str, list[int], str]]  # (what it is, shape, dtype) of its floating inputs
    output_dtypes: list[str]
    input_rows: torch.Tensor | None = None
    output_rows: torch.Tensor | None = None


@dataclass
class Gradient:
    """One backward node that produced gradients: its own name and the forward call it belongs to."""

    node: str
    call: int
    produced: torch.Tensor | None  # stats rows of the gradients it computed
    incoming: torch.Tensor | None  # stats rows of the gradients it received


@dataclass
class Watch:
    model: torch.nn.Module
    calls: list[Call] = field(default_factory=list)
    module_outputs: list[tuple[str, torch.Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.module_names = {id(m): name for name, m in self.model.named_modules()}
        self.param_names = {id(p): name for name, p in self.model.named_parameters()}
        self.buffer_names = {id(b): name for name, b in self.model.named_buffers()}
        self.stack: list[tuple[str, int]] = []  # (module name, autograd clock when it was entered)
        self.busy = False  # our own statistics ops must not be watched
        self.settled = False  # a forward NaN was seen: later calls are only mapped, not measured
        self.first_gradient: Gradient | None = None
        self._weights: dict[int, torch.Tensor] = {}  # statistics of parameters and buffers, once each
        self.nodes: dict[int, tuple[Any, int]] = {}  # id(node) -> (node kept alive, call index)
        self.handles: list[Any] = []
        self.mode = _Mode(self)
        self.active = ExitStack()
        self._tick = torch.zeros((), requires_grad=True)

    # --- forward -------------------------------------------------------------------------

    def __enter__(self) -> Watch:
        for module in self.model.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter_module))
            self.handles.append(module.register_forward_hook(self._leave_module, always_call=True))
        self.active.enter_context(self.mode)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.active.close()
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def clock(self) -> int:
        """Autograd's node counter now: nodes created later have a larger sequence number."""
        if not torch.is_grad_enabled():
            return -1
        return int((self._tick * 1).grad_fn._sequence_nr())  # type: ignore[union-attr]

    @property
    def module(self) -> str | None:
        return self.stack[-1][0] if self.stack else None

    def _enter_module(self, module: torch.nn.Module, _args: Any) -> None:
        self.busy = True
        try:
            self.stack.append((self.module_names.get(id(module), type(module).__name__), self.clock()))
        finally:
            self.busy = False

    def _leave_module(self, module: torch.nn.Module, _args: Any, output: Any) -> None:
        name, entered = self.stack.pop() if self.stack else (self.module_names.get(id(module), ""), -1)
        self.busy = True
        try:
            outs = [t for t in flat_tensors(output) if is_float(t)][:MAX_TENSORS]
            if outs:
                flags = torch.stack([(~torch.isfinite(t.detach())).any() for t in outs]).any()
                self.module_outputs.append((name, flags))
            # Nodes made inside this module by code the mode does not see (custom autograd
            # Functions, C++ extensions) belong to this module.
            for t in flat_tensors(output):
                if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                    self._adopt(t.grad_fn, entered, functools.partial(self._unseen_call, module=name))
        finally:
            self.busy = False

    def _unseen_call(self, node: Any, module: str) -> int:
        """A call for a backward node whose forward op was not seen: named after the node."""
        op = re.sub(r"Backward\d*$", "", node.name()) or node.name()
        self.calls.append(Call(index=len(self.calls), op=op, module=module, inputs=[], output_dtypes=[]))
        return len(self.calls) - 1

    def describe(self, tensor: torch.Tensor) -> str:
        if id(tensor) in self.param_names:
            return f"parameter {self.param_names[id(tensor)]}"
        if id(tensor) in self.buffer_names:
            return f"buffer {self.buffer_names[id(tensor)]}"
        return "activation" if tensor.grad_fn is not None else "tensor"

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The call's floating inputs and their statistics, taken before it runs (an in-place op
        overwrites them)."""
        ins = [t for t in flat_tensors([args, kwargs]) if is_float(t)][:MAX_TENSORS]
        if not ins or self.settled:
            return ins, None
        return ins, torch.stack([self._row(t) for t in ins])

    def _row(self, tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in self.param_names and id(tensor) not in self.buffer_names:
            return stats_row(tensor)
        if id(tensor) not in self._weights:
            self._weights[id(tensor)] = stats_row(tensor)
        return self._weights[id(tensor)]

    def record(
        self, func: Any, ins: list[torch.Tensor], input_rows: torch.Tensor | None, out: Any, started: int
    ) -> None:
        outs = [t for t in flat_tensors(out) if isinstance(t, torch.Tensor)]
        if not outs:
            return
        float_outs = [t for t in outs if is_float(t)][:MAX_TENSORS]
        call = Call(
            index=len(self.calls),
            op=op_name(func),
            module=self.module,
            inputs=[(self.describe(t), list(t.shape), str(t.dtype).removeprefix("torch.")) for t in ins],
            output_dtypes=[str(t.dtype).removeprefix("torch.") for t in float_outs],
            input_rows=input_rows,
        )
        if float_outs and not self.settled:
            call.output_rows = torch.stack([stats_row(t) for t in float_outs])
            self.settled = bool((call.output_rows[:, 1] > 0).any())  # a NaN: the origin is at or before it
        self.calls.append(call)
        for t in outs:
            if t.grad_fn is not None:
                self._adopt(t.grad_fn, started, lambda _node: call.index)

    def _adopt(self, root: Any, since: int, owner: Callable[[Any], int]) -> None:
        """Give the nodes created since autograd clock `since` (a composite function makes
        several) to the call `owner(node)` returns, and hook each so that backward reports the
        gradients it computes. Older nodes are left to whoever made them."""
        pending, visited = [root], set()
        while pending:
            node = pending.pop()
            if node is None or id(node) in visited or type(node).__name__ == "AccumulateGrad":
                continue
            visited.add(id(node))
            if node._sequence_nr() <= since:
                continue
            if id(node) not in self.nodes:
                index = owner(node)
                self.nodes[id(node)] = (node, index)
                node.register_hook(self._gradient_hook(node.name(), index))
            pending.extend(next_node for next_node, _ in node.next_functions)

    # --- backward ------------------------------------------------------------------------

    def _gradient_hook(self, node: str, index: int) -> Any:
        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            if self.first_gradient is not None:
                return
            produced = [g for g in grad_inputs if is_float(g)][:MAX_TENSORS]
            if all(is_finite(g) for g in produced):
                return
            incoming = [g for g in grad_outputs if is_float(g)][:MAX_TENSORS]
            self.first_gradient = Gradient(
                node=node,
                call=index,
                produced=torch.stack([stats_row(g) for g in produced]),
                incoming=torch.stack([stats_row(g) for g in incoming]) if incoming else None,
            )

        return hook


class _Mode(TorchFunctionMode):
    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        watch = self.watch
        if watch.busy:
            return func(*args, **kwargs)
        watch.busy = True
        try:
            ins, rows = watch.inputs(args, kwargs)
            started = watch.clock()
        finally:
            watch.busy = False
        out = func(*args, **kwargs)
        watch.busy = True
        try:
            watch.record(func, ins, rows, out, started)
        finally:
            watch.busy = False
        return out


def op_name(func: Any) -> str:
    """`torch.log` -> "log", `Tensor.__truediv__` -> "truediv", `F.softmax` -> "softmax"."""
    name = getattr(func, "__name__", None) or type(func).__name__
    return str(name).strip("_") or "op"


def host_rows(rows: list[torch.Tensor | None]) -> list[list[list[float]] | None]:
    """Copy many stats blocks to the host in one transfer."""
    present = [r for r in rows if r is not None]
    if not present:
        return [None for _ in rows]
    device = present[0].device
    flat = torch.cat([r.to(device).reshape(-1, WIDTH) for r in present]).cpu().tolist()
    out: list[list[list[float]] | None] = []
    at = 0
    for r in rows:
        if r is None:
            out.append(None)
        else:
            out.append(flat[at : at + r.shape[0]])
            at += r.shape[0]
    return out
