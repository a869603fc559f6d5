"""Per-parameter gradient, weight and update statistics computed on the device.

Everything here runs in the training thread, so it uses multi-tensor `torch._foreach_norm`
launches per (device, dtype) group, never a Python loop of per-tensor reductions (CPU absmax
is the exception, see `_cpu_block`), and it never reads a value back to the host (the
non-finite guard `guard` is the exception, and the recorder calls it only when asked to).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
from torch.nn.parameter import is_lazy

_INF = float("inf")
_GRAD = operator.attrgetter("grad")  # mapped over a group's parameters: no Python frame per tensor
# What torch's multi-tensor (_foreach_*) ops take, and return as a tuple.
Tensors: TypeAlias = "list[torch.Tensor] | tuple[torch.Tensor, ...]"
# CPU tensors up to this size are reduced stacked by shape: a few ops for thousands of biases,
# norm weights and small matrices, where one op per tensor costs 5-10 us of dispatch each
# (docs/recorder.md, "Overhead"). Around it, stacking's extra copy costs what the dispatch saves.
STACK_MAX_NUMEL = 4096
STACK_MAX_ELEMENTS = 1 << 22  # per stacked chunk: bounds the temporary copy to 16 MB of float32


@dataclass
class ParamTable:
    """Parameters in `named_parameters()` order; param_id is the index (shared tensors once)."""

    names: list[str]
    params: list[torch.Tensor]
    index: dict[int, int] = field(default_factory=dict)  # id(param) -> param_id
    _rows: list[dict[str, Any]] = field(default_factory=list, repr=False)  # rows() so far
    _lazy_rows: list[int] = field(default_factory=list, repr=False)  # rows of parameters still lazy

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ParamTable:
        table = cls([], [])
        for name, param in model.named_parameters():
            table.add(name, param)
        return table

    def add(self, name: str, param: torch.Tensor) -> int:
        """The param_id of `param`, appended if new (ids of known parameters never change)."""
        pid = self.index.get(id(param))
        if pid is None:
            pid = self.index[id(param)] = len(self.params)
            # a module inserted later can take an old parameter's name: names stay unique
            self.names.append(name if name not in self.names else f"{name}#{pid}")
            self.params.append(param)
        return pid

    def rows(self) -> list[dict[str, Any]]:
        """The table for meta.json. Each parameter's row is built once: reading shape and dtype of
        20,000 tensors takes a second of the GIL, and the status files are rewritten after every
        flush and at close. Rows of parameters added since, and of lazy parameters (until they are
        materialised), are built anew; `requires_grad` is read afresh (freezing, unfreezing)."""
        rows, params = self._rows, self.params
        for pid in range(len(rows), len(params)):
            rows.append(_row(pid, self.names[pid], params[pid]))
            if rows[pid].get("lazy"):
                self._lazy_rows.append(pid)
        if self._lazy_rows:
            for pid in self._lazy_rows:
                rows[pid] = _row(pid, self.names[pid], params[pid])
            self._lazy_rows = [pid for pid in self._lazy_rows if rows[pid].get("lazy")]
        for row, p in zip(rows, params):
            if row["requires_grad"] is not p.requires_grad:
                row["requires_grad"] = p.requires_grad
        return list(rows)


def _row(pid: int, name: str, p: torch.Tensor) -> dict[str, Any]:
    lazy = is_lazy(p)  # shape and numel exist only once the module has seen its first input
    return {
        "param_id": pid,
        "name": name,
        "shape": None if lazy else list(p.shape),
        "numel": 0 if lazy else p.numel(),
        "dtype": str(p.dtype).removeprefix("torch."),
        "requires_grad": p.requires_grad,
        **({"lazy": True} if lazy else {}),
    }


@dataclass
class GradBatch:
    """Device-side statistics of one recorded step, before the host copy.

    `matrix` is float32 [3, N]: rows grad L2 norm, grad absmax, weight L2 norm, for the
    parameters `ids` (those that had a gradient). `update` is float32 [N] on sampled steps.
    """

    ids: list[int]
    matrix: torch.Tensor
    groups: list[tuple[list[int], list[torch.Tensor]]] = field(repr=False)
    before: list[Tensors] | None = field(default=None, repr=False)  # one [stacked] copy for a stacked group
    update: torch.Tensor | None = None
    counts: dict[int, int] | None = None  # exact NaN/Inf counts; None = not computed
    stacked: list[bool] = field(default_factory=list, repr=False)  # per group: reduced stacked


class GradStats:
    """Statistics of the parameters `ids` of `table` (all of them by default), gathered on `device`.

    Parameters are grouped by (device, dtype) once; a lazy parameter (`nn.LazyLinear` before its
    first input) joins its group when it has been materialised, a frozen one when it is unfrozen. A group whose fast path fails
    (sparse or complex gradients, an exotic dtype) is measured tensor by tensor; a tensor that
    cannot be measured even then is left out and listed in `unmeasured`. Small CPU tensors of
    one shape are reduced stacked (`_split_small`), unless their gradients are sparse.
    """

    def __init__(self, table: ParamTable, device: torch.device, ids: list[int] | None = None):
        self._owners = table.params
        self._ids = list(range(len(table.params))) if ids is None else list(ids)
        self._buffers: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self.device = device
        self.unmeasured: dict[int, str] = {}  # param_id -> why its statistics are missing
        self._build()

    def _build(self) -> None:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[int], list[torch.Tensor]]] = {}
        self._lazy: list[int] = []
        self._frozen: list[int] = []  # joins its group if it is unfrozen (requires_grad set) later
        for i in self._ids:
            p = self._owners[i]
            if is_lazy(p):
                self._lazy.append(i)
                continue
            if not p.requires_grad:
                self._frozen.append(i)
                continue
            if p.numel() == 0:  # nothing to measure
                continue
            ids, params = groups.setdefault((p.device, p.dtype), ([], []))
            ids.append(i)
            params.append(p)
        self._groups = [part for ids, params in groups.values() for part in _split_small(ids, params)]

    def _refresh(self) -> None:
        owners = self._owners
        if any(not is_lazy(owners[i]) for i in self._lazy) or any(owners[i].requires_grad for i in self._frozen):
            self._build()

    @torch.no_grad()
    def collect(self, keep_before: bool) -> GradBatch | None:
        """Grad norm/absmax and weight norm of every parameter that has a grad, on the device.

        The only per-tensor Python work is reading `.grad`: each group goes through its fast path
        as it is, and only where that raises (a missing, sparse or odd gradient) is it sorted out
        tensor by tensor (`_careful`)."""
        if self._lazy or self._frozen:
            self._refresh()
        used: list[tuple[list[int], list[torch.Tensor]]] = []
        stacked: list[bool] = []
        blocks: list[torch.Tensor] = []
        all_ids: list[int] = []
        for group in self._groups:
            grads = list(map(_GRAD, group.owners))
            try:
                parts = [(group.ids, group.params, _fast_block(group, grads), group.stacked)]
            except Exception:
                parts = self._careful(group, grads)
            for part_ids, part_params, block, part_stacked in parts:
                blocks.append(block.to(self.device, non_blocking=True))
                used.append((part_ids, part_params))
                stacked.append(part_stacked)
                all_ids.extend(part_ids)
        if not blocks:
            return None
        matrix = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        before = [self._copy(params, s) for (_, params), s in zip(used, stacked)] if keep_before else None
        # No reference to the grads is kept: zero_grad frees them as usual.
        return GradBatch(all_ids, matrix, used, before, stacked=stacked)

    def _careful(
        self, group: _Group, grads: list[Any]
    ) -> list[tuple[list[int], list[torch.Tensor], torch.Tensor, bool]]:
        """A group whose fast path raised: parameters without a gradient are left out, the rest
        stacked again where that works, else measured by `_measure`."""
        keep = [k for k, g in enumerate(grads) if g is not None]
        if not keep:
            return []
        ids = [group.ids[k] for k in keep]
        params, kept = _pick(keep, group.params, grads)
        if group.stacked:
            try:
                return [(ids, params, _stacked_block(params, kept), True)]
            except Exception:
                pass
        return [(i, p, b, False) for i, p, b in self._measure(ids, params, kept)]

    def _measure(
        self, ids: list[int], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> list[tuple[list[int], list[torch.Tensor], torch.Tensor]]:
        """[3, n] blocks of one group: the fused path, else its dense gradients fused and the
        rest (sparse, or what the fused kernels refuse) one by one."""
        fast = _cpu_block if params[0].device.type == "cpu" else _fused_block
        try:
            return [(ids, params, fast(params, grads))]
        except Exception:
            pass
        out = []
        dense = [k for k, g in enumerate(grads) if not g.is_sparse]
        rest = list(range(len(grads)))
        if dense and len(dense) < len(grads):
            try:
                out.append(([ids[k] for k in dense], [params[k] for k in dense], fast(*_pick(dense, params, grads))))
                rest = [k for k in rest if grads[k].is_sparse]
            except Exception:
                pass
        slow_ids, slow_params, block = self._one_by_one([ids[k] for k in rest], *_pick(rest, params, grads))
        if slow_ids:
            out.append((slow_ids, slow_params, block))
        return out

    def _one_by_one(
        self, ids: list[int], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> tuple[list[int], list[torch.Tensor], torch.Tensor]:
        """The slow path: one tensor at a time, for what the foreach kernels refuse."""
        kept_ids, kept_params, columns = [], [], []
        for pid, p, g in zip(ids, params, grads):
            try:
                values = _dense_values(g)
                columns.append(
                    torch.stack(
                        [
                            torch.linalg.vector_norm(values, 2).float(),
                            values.abs().max().float() if values.numel() else torch.zeros((), device=values.device),
                            torch.linalg.vector_norm(p, 2).float(),
                        ]
                    )
                )
                kept_ids.append(pid)
                kept_params.append(p)
            except Exception as exc:
                self.unmeasured.setdefault(pid, f"{type(exc).__name__}: {exc}"[:200])
        block = torch.stack(columns, dim=1) if columns else torch.empty(3, 0)
        return kept_ids, kept_params, block

    def _copy(self, params: list[torch.Tensor], stacked: bool = False) -> Tensors:
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
            pid: int((~torch.isfinite(_dense_values(grad))).sum())
            for pid, bad in zip(batch.ids, flags)
            if bad and (grad := owners[pid].grad) is not None
        }
        return True

    @torch.no_grad()
    def finish_update(self, batch: GradBatch) -> None:
        """After the optimizer step: L2 norm of (weights before − weights after), per parameter."""
        if batch.before is None:
            return
        parts = []
        stacked = batch.stacked or [False] * len(batch.groups)
        for (_, params), before, is_stacked in zip(batch.groups, batch.before, stacked):
            acc = _accumulation(params[0].dtype)
            if is_stacked:
                diff = before[0].sub_(torch.stack(params)).reshape(len(params), -1)
                parts.append(torch.linalg.vector_norm(diff, 2, dim=1, dtype=acc).float().to(self.device))
                continue
            torch._foreach_sub_(before, params)
            try:
                norms = list(torch._foreach_norm(before, 2, dtype=acc))
            except Exception:  # complex weights and other dtypes the fused norm refuses
                norms = [torch.linalg.vector_norm(b, 2) for b in before]
            parts.append(torch.stack([n.float() for n in norms]).to(self.device))
        batch.update = parts[0] if len(parts) == 1 else torch.cat(parts)
        batch.before = None


def merge(batches: list[GradBatch]) -> GradBatch | None:
    """One step's batches from several optimizers as one (each parameter belongs to one). Update
    norms are kept only when every batch has them (a step some optimizer skipped has none)."""
    if len(batches) <= 1:
        return batches[0] if batches else None
    updates = [b.update for b in batches if b.update is not None]
    counts = [b.counts for b in batches if b.counts is not None]
    return GradBatch(
        ids=[i for b in batches for i in b.ids],
        matrix=torch.cat([b.matrix for b in batches], dim=1),
        groups=[g for b in batches for g in b.groups],
        stacked=[s for b in batches for s in (b.stacked or [False] * len(b.groups))],
        update=torch.cat(updates) if len(updates) == len(batches) else None,
        counts={k: v for c in counts for k, v in c.items()} if len(counts) == len(batches) else None,
    )


@dataclass
class _Group:
    """Parameters measured together: one (device, dtype), and when `stacked`, one shape.
    `owners` are the parameters (their `.grad` is read), `params` their detached weights."""

    ids: list[int]
    owners: list[torch.Tensor]
    stacked: bool
    params: list[torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.params = [p.detach() for p in self.owners]


def _split_small(ids: list[int], params: list[torch.Tensor]) -> list[_Group]:
    """Split one (device, dtype) group: small real floating-point CPU tensors of one shape go
    together in chunks (reduced stacked), everything else stays in one group reduced tensor by
    tensor."""
    if params[0].device.type != "cpu" or not params[0].dtype.is_floating_point:
        return [_Group(ids, params, False)]
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
            parts.append(_Group([ids[k] for k in chunk], [params[k] for k in chunk], True))
    if rest:
        rest.sort()
        parts.append(_Group([ids[k] for k in rest], [params[k] for k in rest], False))
    return parts


def _fast_block(group: _Group, grads: list[Any]) -> torch.Tensor:
    """The group's [3, n] block by its fast path, which raises on what it cannot take."""
    if group.stacked:
        return _stacked_block(group.params, grads)
    if group.params[0].device.type == "cpu":
        return _cpu_block(group.params, grads)
    return _fused_block(group.params, grads)


def _stacked_block(params: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """float32 [3, n] (grad L2, grad absmax, weight L2) of same-shape small CPU tensors: the
    tensors are stacked (one copy each of grads and weights) and reduced row by row. Raises
    where the gradients cannot be stacked (missing, sparse, or of another shape)."""
    acc = _accumulation(params[0].dtype)
    n = len(grads)
    g = torch.stack(grads)
    if g.layout != torch.strided:
        raise TypeError("sparse gradients are measured one by one")
    g = g.reshape(n, -1)  # reshape, not flatten(1): 0-d parameters stack to [n]
    w = torch.stack(params).reshape(n, -1)
    # max |g| as max(max, -min), NaN propagating: two vectorised row passes are faster on CPU
    # than one aminmax(dim=1), or than abs(), which materialises |g| first.
    rows = [
        torch.linalg.vector_norm(g, 2, dim=1, dtype=acc),
        torch.maximum(g.amax(dim=1), g.amin(dim=1).neg_()),
        torch.linalg.vector_norm(w, 2, dim=1, dtype=acc),
    ]
    return torch.stack([r.to(torch.float32) for r in rows])


def _pick(
    keep: list[int], params: list[torch.Tensor], grads: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [params[k] for k in keep], [grads[k] for k in keep]


def _dense_values(grad: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: a sparse gradient's implicit zeros change neither its
    L2 norm nor its absmax, nor its NaN/Inf count."""
    return grad.coalesce().values() if grad.is_sparse else grad


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
