"""Per-parameter gradient, weight and update statistics computed on the device.

Everything here runs in the training thread, so it uses multi-tensor `torch._foreach_norm`
launches per (device, dtype) group, never a Python loop of per-tensor reductions (CPU absmax
is the exception, see `_cpu_block`), and it never reads a value back to the host (the
non-finite guard `guard` is the exception, and the recorder calls it only when asked to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
from torch.nn.parameter import is_lazy

_INF = float("inf")
# What torch's multi-tensor (_foreach_*) ops take, and return as a tuple.
Tensors: TypeAlias = "list[torch.Tensor] | tuple[torch.Tensor, ...]"


@dataclass
class ParamTable:
    """Parameters in `named_parameters()` order; param_id is the index (shared tensors once)."""

    names: list[str]
    params: list[torch.Tensor]
    index: dict[int, int] = field(default_factory=dict)  # id(param) -> param_id

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
        return [_row(i, name, p) for i, (name, p) in enumerate(zip(self.names, self.params))]


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
    before: list[Tensors] | None = field(default=None, repr=False)
    update: torch.Tensor | None = None
    counts: dict[int, int] | None = None  # exact NaN/Inf counts; None = not computed


class GradStats:
    """Statistics of the parameters `ids` of `table` (all of them by default), gathered on `device`.

    Parameters are grouped by (device, dtype) once; a lazy parameter (`nn.LazyLinear` before its
    first input) joins its group when it has been materialised, a frozen one when it is unfrozen. A group whose fast path fails
    (sparse or complex gradients, an exotic dtype) is measured tensor by tensor; a tensor that
    cannot be measured even then is left out and listed in `unmeasured`.
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
            params.append(p.detach())
        self._groups = list(groups.values())

    def _refresh(self) -> None:
        owners = self._owners
        if any(not is_lazy(owners[i]) for i in self._lazy) or any(owners[i].requires_grad for i in self._frozen):
            self._build()

    @torch.no_grad()
    def collect(self, keep_before: bool) -> GradBatch | None:
        """Grad norm/absmax and weight norm of every parameter that has a grad, on the device."""
        if self._lazy or self._frozen:
            self._refresh()
        owners = self._owners
        used: list[tuple[list[int], list[torch.Tensor]]] = []
        blocks: list[torch.Tensor] = []
        all_ids: list[int] = []
        for ids, params in self._groups:
            grads = [owners[i].grad for i in ids]
            if any(g is None for g in grads):
                keep = [k for k, g in enumerate(grads) if g is not None]
                if not keep:
                    continue
                ids = [ids[k] for k in keep]
                params = [params[k] for k in keep]
                grads = [grads[k] for k in keep]
            for part_ids, part_params, block in self._measure(ids, params, grads):  # type: ignore[arg-type]
                blocks.append(block.to(self.device, non_blocking=True))
                used.append((part_ids, part_params))
                all_ids.extend(part_ids)
        if not blocks:
            return None
        matrix = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        before = [self._copy(params) for _, params in used] if keep_before else None
        # No reference to the grads is kept: zero_grad frees them as usual.
        return GradBatch(all_ids, matrix, used, before)

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

    def _copy(self, params: list[torch.Tensor]) -> Tensors:
        """Pre-update weights. On CUDA a fresh copy each sampled step (the caching allocator
        makes it cheap and the memory is free between samples); on CPU a buffer kept per
        group, because fresh large host allocations page-fault on every sampled step."""
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
        for (_, params), before in zip(batch.groups, batch.before):
            torch._foreach_sub_(before, params)
            try:
                norms = list(torch._foreach_norm(before, 2, dtype=_accumulation(params[0].dtype)))
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
        update=torch.cat(updates) if len(updates) == len(batches) else None,
        counts={k: v for c in counts for k, v in c.items()} if len(counts) == len(batches) else None,
    )


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
