"""Per-parameter gradient, weight and update statistics computed on the device.

Everything here runs in the training thread, so it uses multi-tensor `torch._foreach_norm`
launches per (device, dtype) group, never a Python loop of per-tensor reductions (CPU absmax
is the exception, see `_cpu_block`), and it never reads a value back to the host (the
non-finite guard `guard` is the exception, and the recorder calls it only when asked to).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

_INF = float("inf")
# CPU tensors up to this size are reduced stacked by shape: a few ops for thousands of biases and
# norm weights, where one op per tensor costs ~10 us of dispatch each (docs/recorder.md, "Overhead").
# Above it, stacking's extra copy costs more than the dispatch it saves.
STACK_MAX_NUMEL = 1024
STACK_MAX_ELEMENTS = 1 << 22  # per stacked chunk: bounds the temporary copy to 16 MB of float32


@dataclass
class ParamTable:
    """Parameters in `named_parameters()` order; param_id is the index (shared tensors once)."""

    names: list[str]
    params: list[torch.Tensor]

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ParamTable:
        names, params, seen = [], [], set()
        for name, param in model.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            names.append(name)
            params.append(param)
        return cls(names, params)

    @functools.cached_property
    def _rows(self) -> list[dict]:
        return [
            {
                "param_id": i,
                "name": name,
                "shape": list(p.shape),
                "numel": p.numel(),
                "dtype": str(p.dtype).removeprefix("torch."),
                "requires_grad": p.requires_grad,
            }
            for i, (name, p) in enumerate(zip(self.names, self.params))
        ]

    def rows(self) -> list[dict]:
        """The table for meta.json. Built once: reading shape and dtype of 20,000 tensors takes
        a second of the GIL, and the status files are rewritten after every flush and at close.
        A table whose parameters change must be rebuilt (a new ParamTable)."""
        return self._rows


@dataclass
class GradBatch:
    """Device-side statistics of one recorded step, before the host copy.

    `matrix` is float32 [3, N]: rows grad L2 norm, grad absmax, weight L2 norm, for the
    parameters `ids` (those that had a gradient). `update` is float32 [N] on sampled steps.
    """

    ids: list[int]
    matrix: torch.Tensor
    groups: list[tuple[list[int], list[torch.Tensor]]] = field(repr=False)
    before: list[list[torch.Tensor]] | None = field(default=None, repr=False)  # one [stacked] copy for a stacked group
    update: torch.Tensor | None = None
    counts: dict[int, int] | None = None  # exact NaN/Inf counts; None = not computed
    stacked: list[bool] = field(default_factory=list, repr=False)  # per group: reduced stacked


class GradStats:
    def __init__(self, table: ParamTable):
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[int], list[torch.Tensor]]] = {}
        for i, p in enumerate(table.params):
            if not p.requires_grad or p.numel() == 0:  # nothing to measure
                continue
            ids, params = groups.setdefault((p.device, p.dtype), ([], []))
            ids.append(i)
            params.append(p.detach())
        self._groups = [part for ids, params in groups.values() for part in _split_small(ids, params)]
        self._owners = list(table.params)
        self._buffers: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self.device = table.params[0].device if table.params else torch.device("cpu")

    @torch.no_grad()
    def collect(self, keep_before: bool) -> GradBatch | None:
        """Grad norm/absmax and weight norm of every parameter that has a grad, on the device."""
        owners = self._owners
        used: list[tuple[list[int], list[torch.Tensor]]] = []
        stacked: list[bool] = []
        blocks: list[torch.Tensor] = []
        all_ids: list[int] = []
        for ids, params, is_stacked in self._groups:
            grads = [owners[i].grad for i in ids]
            if any(g is None for g in grads):
                keep = [k for k, g in enumerate(grads) if g is not None]
                if not keep:
                    continue
                ids = [ids[k] for k in keep]
                params = [params[k] for k in keep]
                grads = [grads[k] for k in keep]
            if is_stacked:
                block = _stacked_block(params, grads)
            else:
                block = (_cpu_block if params[0].device.type == "cpu" else _fused_block)(params, grads)
            blocks.append(block.to(self.device, non_blocking=True))
            used.append((ids, params))
            stacked.append(is_stacked)
            all_ids.extend(ids)
        if not blocks:
            return None
        matrix = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        before = [self._copy(params, s) for (_, params), s in zip(used, stacked)] if keep_before else None
        # No reference to the grads is kept: zero_grad frees them as usual.
        return GradBatch(all_ids, matrix, used, before, stacked=stacked)

    def _copy(self, params: list[torch.Tensor], stacked: bool) -> list[torch.Tensor]:
        """Pre-update weights. On CUDA a fresh copy each sampled step (the caching allocator
        makes it cheap and the memory is free between samples); on CPU a buffer kept per
        group, because fresh large host allocations page-fault on every sampled step. A
        stacked group's copy is its stack."""
        if stacked:
            return [torch.stack(params)]
        if params[0].device.type != "cpu":
            return torch._foreach_mul(params, 1.0)
        key = tuple(id(p) for p in params)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(buf, params)
        return buf

    @torch.no_grad()
    def guard(self, batch: GradBatch) -> bool:
        """The one host sync: is any gradient non-finite? If so, count NaN/Inf exactly.

        Must run while the grads still exist (optimizer pre-hook, or step() without one)."""
        # absmax is NaN/Inf exactly when an element is; the L2 norm can also overflow fp32
        # on finite values, so it is not the test.
        absmax = batch.matrix[1]
        if math.isfinite(absmax.max()):  # max propagates NaN
            batch.counts = {}
            return False
        flags = (~torch.isfinite(absmax)).tolist()
        owners = self._owners
        batch.counts = {
            pid: int((~torch.isfinite(owners[pid].grad)).sum())
            for pid, bad in zip(batch.ids, flags)
            if bad and owners[pid].grad is not None
        }
        return True

    @torch.no_grad()
    def finish_update(self, batch: GradBatch) -> None:
        """After the optimizer step: L2 norm of (weights before − weights after), per parameter."""
        if batch.before is None:
            return
        parts = []
        for (_, params), before, stacked in zip(batch.groups, batch.before, batch.stacked):
            if stacked:
                diff = before[0].sub_(torch.stack(params)).flatten(1)
                parts.append(torch.linalg.vector_norm(diff, 2, dim=1, dtype=torch.float32).to(self.device))
                continue
            torch._foreach_sub_(before, params)
            parts.append(torch.stack(torch._foreach_norm(before, 2, dtype=torch.float32)).to(self.device))
        batch.update = parts[0] if len(parts) == 1 else torch.cat(parts)
        batch.before = None


def _split_small(ids: list[int], params: list[torch.Tensor]) -> list[tuple[list[int], list[torch.Tensor], bool]]:
    """Split one (device, dtype) group: small CPU tensors of one shape go together in chunks
    (reduced stacked: True), everything else stays in one group reduced tensor by tensor."""
    if params[0].device.type != "cpu":
        return [(ids, params, False)]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    rest: list[int] = []
    for k, p in enumerate(params):
        (by_shape.setdefault(tuple(p.shape), []) if p.numel() <= STACK_MAX_NUMEL else rest).append(k)
    parts = []
    for shape, members in by_shape.items():
        if len(members) < 2:
            rest += members
            continue
        size = max(2, STACK_MAX_ELEMENTS // max(1, math.prod(shape)))
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            parts.append(([ids[k] for k in chunk], [params[k] for k in chunk], True))
    if rest:
        rest.sort()
        parts.append(([ids[k] for k in rest], [params[k] for k in rest], False))
    return parts


def _stacked_block(params: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """float32 [3, n] (grad L2, grad absmax, weight L2) of same-shape small CPU tensors: the
    tensors are stacked (one copy each of grads and weights) and reduced row by row."""
    acc = _accumulation(params[0].dtype)
    g = torch.stack(grads).flatten(1)
    w = torch.stack(params).flatten(1)
    rows = [
        torch.linalg.vector_norm(g, 2, dim=1, dtype=acc),
        g.abs().amax(dim=1),
        torch.linalg.vector_norm(w, 2, dim=1, dtype=acc),
    ]
    return torch.stack([r.to(torch.float32) for r in rows])


def _cpu_block(params: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """float32 [3, n] (grad L2, grad absmax, weight L2) of one CPU group. absmax from one
    `aminmax` pass per tensor: the inf-norm materialises |g| on CPU, which is far slower."""
    n = len(grads)
    norms = torch._foreach_norm(grads + params, 2, dtype=_accumulation(params[0].dtype))
    pairs = [torch.aminmax(g) for g in grads]
    block = torch.stack([*norms[:n], *(p.max for p in pairs), *norms[n:], *(p.min for p in pairs)])
    block = block.view(4, n).to(torch.float32)
    torch.maximum(block[1], block[3].neg_(), out=block[1])  # max |g|; NaN propagates
    return block[:3]


def _fused_block(params: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """float32 [3, n] (grad L2, grad absmax, weight L2) of one accelerator group: two fused
    multi-tensor launches and one stack."""
    n, acc = len(grads), _accumulation(params[0].dtype)
    norms = torch._foreach_norm(grads + params, 2, dtype=acc)
    absmax = torch._foreach_norm(grads, _INF, dtype=acc)
    return torch.stack([*norms[:n], *absmax, *norms[n:]]).view(3, n).to(torch.float32)


def _accumulation(dtype: torch.dtype) -> torch.dtype | None:
    """Norms of 16-bit floats in float32; float64 in float64 (the norm ops refuse a
    narrowing dtype), converted to float32 afterwards."""
    return torch.float32 if dtype.itemsize <= 4 else None
