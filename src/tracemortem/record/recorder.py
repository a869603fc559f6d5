"""The Recorder (docs/recorder.md): attach to a training loop, write a run directory (docs/format.md).

Training-thread cost is kept to a few foreach launches and one device->host copy per recorded
step; conversion and Parquet writing happen on a background thread. Every entry point catches
its own errors: recording may degrade, training never sees an exception from here.
"""

from __future__ import annotations

import atexit
import math
import os
import platform
import socket
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from .. import format as fmt
from ..replay.inprocess import replay_in_process
from ..version import __version__
from . import attempts, clipping, signals
from .activations import ActivationStats
from .backward_end import BackwardEnd
from .checkpoints import Checkpointer
from .gradstats import GradBatch, GradStats, ParamTable, merge
from .profiling import ProfileSchedule, resolve_schedule, start_profiler
from .ranks import discover_rank
from .scalars import StepValues
from .snapshot import set_snapshot_loss, write_snapshot
from .stepping import OptimizerTap, ScalerWatch
from .writer import ChunkWriter, HostRing, StepItem

_STANDARD = {f.name for f in fmt.STEPS_SCHEMA}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Recorder:
    """Record gradient statistics, step metrics, profiler traces, checkpoints and an anomaly
    snapshot of one training run into `run_dir` (one `rank{R}/` folder per process)."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        model: torch.nn.Module,
        optimizer: Any = None,
        *,
        grad_every: int = 1,
        update_every: int = 10,
        profile: bool | ProfileSchedule | None = None,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 3,
        snapshot_on_nonfinite: bool = True,
        scaler: Any = None,
        config: dict[str, Any] | None = None,
        flush_every: int = 1000,
        flush_seconds: float | None = 30.0,
        max_queue: int = 4096,
        start_step: int = 0,
        replay: Any = None,
        activations: int | None = None,
    ):
        # One optimizer, several (a list), a framework's wrapper of one, or None.
        given = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        self.optimizers = [o for o in given if o is not None]
        self.optimizer = self.optimizers[0] if self.optimizers else None
        self.model, self.scaler = model, scaler
        self.grad_every = max(1, int(grad_every))
        self.update_every = int(update_every) if update_every else 0
        self.checkpoint_every = int(checkpoint_every) if checkpoint_every else None
        self.guard = bool(snapshot_on_nonfinite)
        self.replay = replay  # fn(model, batch) -> loss: re-run the first non-finite step (docs/replay.md)
        self.schedule = resolve_schedule(profile)
        self.config = dict(config or {})
        self.rank, self.world_size = discover_rank()
        self.paths = fmt.RunPaths(Path(run_dir))
        self.started = _now()
        self.status = fmt.STATUS_RUNNING
        # Never over an earlier recording of this rank: a restart gets an attempt of its own.
        self.attempt = attempts.claim(self.paths.rank(self.rank), self._identity(int(start_step)))
        self.rank_paths = self.attempt.paths

        self._closed = False
        # Reentrant: the SIGTERM handler runs close() in the training thread, possibly while the
        # code it interrupted holds one of these.
        self._close_lock = threading.RLock()
        self._meta_lock = threading.RLock()
        self._warn_lock = threading.RLock()
        self._warned = False
        self._disabled: set[str] = set()
        self._notes: list[str] = []
        self.start_step = self._step = int(start_step)
        self._recorded = 0  # grad-recorded steps so far (update norms are sampled on these)
        self._last_t = time.perf_counter()
        self._batch: Any = None
        self._snapshot_step: int | None = None
        self._order: list[int] = []
        self._order_hooks: list[Any] = []
        self._order_source = "reverse-registration"
        self._prof: torch.profiler.profile | None = None
        self._pid = os.getpid()  # a forked copy of this object (another pid) must never write
        self._sigterm_installed: bool = False
        self._prev_sigterm: Any = None
        self._stepped_rows = 0  # steps so far in which an optimizer step happened or was attempted
        self._plan: tuple[bool, bool] | None = None  # this step's (grads due, update sampled)
        self._clips: list[tuple[Any, float]] = []  # this step's clip_grad_norm_ (total norm, max_norm)
        self._backward_batch: GradBatch | None = None
        self._backward: BackwardEnd | None = None
        self._scaler_watch: ScalerWatch | None = None
        self._dropped_scalars: dict[str, int] = {}
        self._step_lr: Any = None

        self.table = ParamTable.from_model(model)
        self.device = next((p.device for p in self.table.params), torch.device("cpu"))
        self._taps = [OptimizerTap(o, self._grads_ready, self._update_applied) for o in self.optimizers]
        self.stats = GradStats(self.table, self.device)
        self._guarded("grads", self._assign_params)
        self.settings = {
            "grad_every": self.grad_every,
            "update_every": self.update_every,
            "profile": self.schedule.to_dict() if self.schedule else None,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": keep_checkpoints,
            "snapshot_on_nonfinite": self.guard,
            "optimizer": ", ".join(type(o).__name__ for o in self.optimizers) or None,
            "scaler": type(scaler).__name__ if scaler is not None else None,
            "flush_every": flush_every,
            "flush_seconds": flush_seconds,
            "max_queue": max_queue,
            "replay": getattr(replay, "__qualname__", None) if replay is not None else None,
            "activations": int(activations) if activations else None,
        }

        try:
            self.rank_paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only or unusable: every write is then counted as lost
            self._note_write_error(exc)
        ring = None
        if self.device.type == "cuda":
            ring = HostRing(slots=min(max_queue, 256), length=4 * len(self.table.params) + 256)
        self.writer = ChunkWriter(
            self.rank_paths.steps,
            self.rank_paths.grads,
            flush_every=max(1, int(flush_every)),
            flush_seconds=math.inf if flush_seconds is None else float(flush_seconds),
            max_queue=max(1, int(max_queue)),
            warn=self._warn,
            ring=ring,
            after_flush=self._write_status,
        )
        self.checkpointer = Checkpointer(self.rank_paths, self.table, keep_checkpoints)
        self._guarded("grads", self._install_hooks)
        self.acts = None
        if activations:
            self.acts = self._guarded(
                "activations",
                lambda: ActivationStats(
                    model, activations, self.rank_paths.acts, self.start_step, lambda e: self._fail("activations", e)
                ),
            )
        self._note_earlier_attempts()
        self._write_status()
        self.writer.start()
        if self.schedule is not None:
            self._guarded(
                "profiler",
                lambda: setattr(self, "_prof", start_profiler(self.schedule, self.rank_paths.traces, self.rank)),
            )
        atexit.register(self._close_at_exit)
        signals.track(self)
        self._sigterm_installed, self._prev_sigterm = signals.install_sigterm(self._on_sigterm)

    # --- public API --------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is KeyboardInterrupt:
            self._notes.append("interrupted by SIGINT (KeyboardInterrupt)")
        held = self._finish(fmt.STATUS_CRASHED if exc_type is not None else fmt.STATUS_CLOSED)
        # A signal held during the close is delivered now; an exception from the training loop
        # propagates unchanged, so one raised by a held signal's handler is dropped then.
        signals.release(held, drop_errors=exc_type is not None)
        return False

    def observe_batch(self, batch: Any) -> None:
        """Keep a reference to the current batch; it is saved only if a snapshot is taken."""
        self._batch = batch

    def step(self, loss: Any = None, **scalars: Any) -> None:
        """End of one training step. `loss` and scalars may be tensors: no `.item()` is done."""
        if self._closed or "step" in self._disabled:
            return
        try:
            self._end_step(loss, scalars)
        except Exception as exc:
            self._fail("step", exc)
        finally:
            self._step += 1

    def checkpoint(self) -> Path | None:
        """Save model (+ optimizer, scaler) state now, named by the last completed step."""
        if self._closed or self._step == 0:
            return None
        return self._guarded("checkpoints", lambda: self._save_checkpoint(self._step - 1))

    def close(self, status: str | None = None) -> None:
        """Flush and finish the run directory. Idempotent; also runs at exit and on SIGTERM.
        SIGCHLD, SIGTERM and SIGINT arriving meanwhile are delivered when it is done."""
        signals.release(self._finish(status))

    def _close_at_exit(self) -> None:
        signals.release(self._finish(None), drop_errors=True)

    def _finish(self, status: str | None, timeout: float = 60.0) -> signals.Held:
        """Everything close() does, with the held signals still held; never raises."""
        held = signals.Held()
        if os.getpid() != self._pid:  # a forked copy: the parent owns the run directory
            return held
        with self._close_lock:
            if self._closed:
                return held
            self._closed = True
        held = signals.hold()
        try:
            self.status = status or fmt.STATUS_CLOSED
            for handle in self._order_hooks:
                handle.remove()
            self._order_hooks = []
            self._remove_taps()
            if self._prof is not None:
                self._guarded("profiler", self._prof.stop)
            if self.acts is not None:
                self._guarded("activations", self.acts.close)
            self.writer.stop(timeout=timeout)
            self._write_status(ended=_now())
            atexit.unregister(self._close_at_exit)
            signals.untrack(self)
            if self._sigterm_installed:
                signals.restore_sigterm(self._on_sigterm, _live_handler(self._prev_sigterm), held)
        except Exception as exc:
            self._fail("close", exc)
        return held

    def forget_in_child(self) -> None:
        """Called in a forked child (signals.track): this copy records nothing, writes nothing,
        and leaves the child's SIGTERM and exit to what they were before the Recorder."""
        self._closed = True
        for handle in self._order_hooks:
            handle.remove()
        self._order_hooks = []
        try:
            self._remove_taps()
        except Exception:
            pass
        if self.acts is not None:
            self.acts.detach()
        atexit.unregister(self._close_at_exit)
        if self._sigterm_installed:
            signals.restore_sigterm(self._on_sigterm, _live_handler(self._prev_sigterm), None)

    @property
    def dropped_steps(self) -> int:
        return self.writer.dropped_steps

    # --- hooks -------------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        for tap in list(self._taps):
            try:
                tap.install()
            except Exception as exc:  # nothing to hook or patch: this one is not watched
                self._taps.remove(tap)
                note = f"optimizer {type(tap.source).__name__} cannot be watched ({type(exc).__name__}: {exc})"
                self._notes.append(note)
                self._warn(f"{note}; gradients are read without its help")
        if len(self._taps) < len(self.optimizers) and self._taps:
            self._assign_params()  # the parameters of the one dropped go with the first left
        if self.scaler is not None:
            self._scaler_watch = ScalerWatch(self.scaler)
        if not self._taps:
            self._backward = BackwardEnd(self.table.params, self._backward_ended)
        clipping.attach(self._clipped)
        try:
            # Grad-ready order of the first backward pass: nearest the output first.
            for pid, p in enumerate(self.table.params):
                if p.requires_grad:
                    self._order_hooks.append(p.register_post_accumulate_grad_hook(self._order_hook(pid)))
            self._order_source = "first-backward"
        except Exception:
            for handle in self._order_hooks:
                handle.remove()
            self._order_hooks = []

    def _remove_taps(self) -> None:
        clipping.detach(self._clipped)
        for tap in self._taps:
            tap.remove()
        if self._scaler_watch is not None:
            self._scaler_watch.undo()
        if self._backward is not None:
            self._backward.remove()

    def _order_hook(self, pid: int):
        def hook(_param: torch.Tensor) -> None:
            self._order.append(pid)

        return hook

    def backward_order(self) -> list[int]:
        seen = dict.fromkeys(self._order)
        return [*seen, *(pid for pid in reversed(range(len(self.table.params))) if pid not in seen)]

    def _assign_params(self) -> None:
        """Each parameter is measured at the step of the (first) optimizer that holds it; model
        parameters no optimizer holds, with the first optimizer. Parameters of param groups added
        later get new param_ids, named after the model's parameters where they are the model's."""
        if not self._taps:
            return
        names = {id(p): n for n, p in self.model.named_parameters()}
        owner: dict[int, int] = {}
        for k, tap in enumerate(self._taps):
            tap.signature = tap.current_signature()
            for g, group in enumerate(tap.param_groups()):
                for i, p in enumerate(group.get("params", ())):
                    pid = self.table.add(names.get(id(p), f"optimizer{k}.group{g}.{i}"), p)
                    owner.setdefault(pid, k)
        for pid in range(len(self.table.params)):
            owner.setdefault(pid, 0)
        for k, tap in enumerate(self._taps):
            tap.stats = GradStats(self.table, self.device, [pid for pid, o in owner.items() if o == k])

    def _row_plan(self) -> tuple[bool, bool]:
        """Whether this step's grads are recorded, and its update norms: decided once per step,
        so that every optimizer of the step agrees. Counted in optimizer steps, so that a loop
        calling `rec.step()` per micro-batch records every `grad_every`-th update."""
        if self._plan is None:
            index = self.start_step + self._stepped_rows if self._taps else self._step
            due = "grads" not in self._disabled and index % self.grad_every == 0
            sampled = due and self.update_every > 0 and self._recorded % self.update_every == 0
            self._plan = (due, sampled)
        return self._plan

    def _measure(self, stats: GradStats, keep_before: bool, pre_update: bool) -> GradBatch | None:
        batch = stats.collect(keep_before=keep_before)
        if batch is not None and self.guard and stats.guard(batch) and self._snapshot_step is None:
            self._take_snapshot(batch, "nonfinite-gradient", pre_update=pre_update, loss=None)
        return batch

    def _grads_ready(self, tap: OptimizerTap) -> None:
        """The gradients this optimizer is about to apply are complete (after any closure)."""
        if self._closed:
            return
        if tap is self._taps[0] and tap.param_groups():
            self._step_lr = tap.param_groups()[0].get("lr")  # the rate this update uses
        due, sampled = self._row_plan()
        if not due:
            return
        try:
            if tap.current_signature() != tap.signature or tap.stats is None:
                self._assign_params()
            assert tap.stats is not None  # _assign_params gave every tap its statistics
            tap.pending = self._measure(tap.stats, keep_before=sampled, pre_update=True)
        except Exception as exc:
            tap.pending = None
            self._fail("grads", exc)

    def _update_applied(self, tap: OptimizerTap) -> None:
        batch = tap.pending
        if batch is None or batch.before is None or tap.stats is None or self._closed:
            return
        try:
            tap.stats.finish_update(batch)
        except Exception as exc:
            batch.before = None
            self._fail("update norms", exc)

    def _backward_ended(self) -> None:
        """Without an optimizer: measure at the end of each backward pass, before the loop's own
        update touches the weights (the last pass before `rec.step()` is the one applied)."""
        if self._closed or not self._row_plan()[0]:
            return
        try:
            self._backward_batch = self._measure(self.stats, keep_before=False, pre_update=True)
        except Exception as exc:
            self._backward_batch = None
            self._fail("grads", exc)

    def _clipped(self, params: list[torch.Tensor], total_norm: Any, max_norm: float) -> None:
        """clip_grad_norm_ ran: keep its norm and cap for this step if it clipped our parameters."""
        if self._closed or not any(id(p) in self.table.index for p in params):
            return
        if any(norm is total_norm for norm, _ in self._clips):
            return  # one clip applied in parts (per device mesh) with one total norm
        self._clips.append((total_norm, max_norm))
        if self._backward_batch is not None:  # no optimizer: the applied grads are the clipped ones
            self._backward_ended()

    # --- the step ----------------------------------------------------------------------------

    def _end_step(self, loss: Any, scalars: dict[str, Any]) -> None:
        t = time.perf_counter()
        step = self._step
        row = StepValues({"step": step, "time": time.time(), "duration_s": t - self._last_t})
        self._last_t = t
        values, tensors = row.values, row.tensors

        batch, values["skipped"] = self._take_grads()
        self._plan = None
        if batch is not None:
            self._recorded += 1

        row.put("loss", loss)
        lr, self._step_lr = self._step_lr, None
        if lr is None and self._taps and self._taps[0].param_groups():  # no update in this row
            lr = self._taps[0].param_groups()[0].get("lr")
        row.put("lr", lr)
        if self.scaler is not None:
            row.put("scale", _scale_of(self.scaler))
        self._put_clipping(row)
        if self.device.type == "cuda":
            values["mem_allocated"] = torch.cuda.memory_allocated(self.device)
            values["mem_reserved"] = torch.cuda.memory_reserved(self.device)
            values["max_mem_allocated"] = torch.cuda.max_memory_allocated(self.device)
        for name, value in scalars.items():
            row.put(f"scalar_{name}" if name in _STANDARD else name, value)
        self._count_rejected(row.rejected)

        loss_value = tensors.get("loss", values.get("loss"))
        # The loss is read back only where no update was applied (a skipped step), or where
        # there is no optimizer to tell: elsewhere a NaN loss shows up in its gradients.
        if (
            self.guard
            and self._snapshot_step is None
            and loss_value is not None
            and (values["skipped"] is True or not self._taps)
            and not math.isfinite(_as_float(loss_value))
        ):
            self._take_snapshot(batch, "nonfinite-loss", pre_update=bool(self._taps), loss=loss_value)
        if self._snapshot_step == step and loss_value is not None:
            self._guarded("snapshot", lambda: set_snapshot_loss(self.rank_paths.snapshot, _as_float(loss_value)))

        self.writer.put(self._item(step, values, tensors, batch))

        if self._order_hooks:
            for handle in self._order_hooks:
                handle.remove()
            self._order_hooks = []
            self.writer.request_status()  # backward order is known now
        if self._prof is not None:
            self._guarded("profiler", self._prof.step)
        if self.acts is not None:
            self._guarded("activations", lambda: self.acts.end_step(step))
        if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0:
            self._guarded("checkpoints", lambda: self._save_checkpoint(step))

    def _take_grads(self) -> tuple[GradBatch | None, bool | None]:
        """This step's gradient batch and `skipped`: False when an update was applied, True when
        one was attempted but not applied (a GradScaler overflow), None when no optimizer step
        happened (no optimizer, or a micro-batch of gradient accumulation)."""
        if not self._taps:
            batch, self._backward_batch = self._backward_batch, None
            fired = self._backward is not None and self._backward.passes > 0
            if batch is None and not fired and self._row_plan()[0]:
                # no end-of-backward callback (not available here): read now, after any update
                batch = self._measure(self.stats, keep_before=False, pre_update=False)
            return batch, None
        batch = merge([tap.pending for tap in self._taps if tap.pending is not None])
        applied = any(tap.applied for tap in self._taps)
        attempted = any(tap.attempted for tap in self._taps)
        if self._scaler_watch is not None:
            attempted = attempted or self._scaler_watch.called
            self._scaler_watch.called = False
        for tap in self._taps:
            tap.reset()
        if attempted or applied:
            self._stepped_rows += 1
        return batch, (False if applied else True if attempted else None)

    def _put_clipping(self, row: StepValues) -> None:
        clips, self._clips = self._clips, []
        if not clips:
            return
        norms = [torch.as_tensor(norm).detach().to(self.device, torch.float64).reshape(()) for norm, _ in clips]
        row.put("preclip_norm", norms[0] if len(norms) == 1 else torch.stack(norms).square().sum().sqrt())
        row.put("clip_max", clips[-1][1])

    def _count_rejected(self, rejected: list[tuple[str, str]]) -> None:
        for name, why in rejected:
            if name not in self._dropped_scalars:
                note = f"a value of scalar {name!r} was dropped ({why}); its numeric values are still recorded"
                self._notes.append(note)
                self._warn(f"{note}; recording continues")
                self.writer.request_status()
            self._dropped_scalars[name] = self._dropped_scalars.get(name, 0) + 1

    def _item(self, step: int, values: dict, tensors: dict[str, torch.Tensor], batch: GradBatch | None) -> StepItem:
        """Stack this step's device values into one vector and start its host copy."""
        parts: list[torch.Tensor] = []
        item = StepItem(step=step, values=values)
        offset = 0
        if batch is not None:
            parts.append(batch.matrix.reshape(-1))
            offset = batch.matrix.numel()
            if batch.update is not None:
                parts.append(batch.update)
                offset += batch.update.numel()
            item.ids, item.has_update, item.counts = batch.ids, batch.update is not None, batch.counts
        if tensors:
            # float64 values travel as their bits, two float32 words each, in the one copy
            names = list(tensors)
            stacked = torch.stack([tensors[n].to(self.device, non_blocking=True) for n in names])
            parts.append(stacked.view(torch.float32))
            item.tensor_cols = {n: offset + 2 * k for k, n in enumerate(names)}
        if not parts:
            return item
        vec = parts[0] if len(parts) == 1 else torch.cat(parts)
        item.length = vec.numel()
        if self.writer.ring is not None:
            item.slot = self.writer.ring.send(vec)
            if item.slot is None:  # the writer is behind by a whole ring: drop, never wait
                self.writer.dropped_steps += 1
                return StepItem(step=step, values=values)
        else:
            item.vec = vec
        return item

    # --- snapshot / checkpoints --------------------------------------------------------------

    def _take_snapshot(self, batch: GradBatch | None, reason: str, pre_update: bool, loss: Any) -> None:
        def write() -> None:
            counts = batch.counts if batch is not None and batch.counts else {}
            order = self.backward_order()
            bad = [pid for pid in order if pid in counts]
            write_snapshot(
                self.rank_paths.snapshot,
                step=self._step,
                rank=self.rank,
                reason=reason,
                pre_update=pre_update,
                model=self.model,
                optimizers=self._optimizer_objects(),
                batch=self._batch,
                nonfinite_params=[self.table.names[pid] for pid in bad],
                nonfinite_counts={self.table.names[pid]: counts[pid] for pid in bad},
                loss=None if loss is None else _as_float(loss),
            )

        self._snapshot_step = self._step  # once per run, even if writing it fails
        self._guarded("snapshot", write)
        if self.replay is not None and "snapshot" not in self._disabled:
            step, folder, batch = self._step, self.rank_paths.snapshot, self._batch
            self._guarded(
                "replay",
                lambda: replay_in_process(
                    self.model, batch, self.replay, folder, step=step, rank=self.rank, device=self.device
                ),
            )

    def _optimizer_objects(self) -> list[Any]:
        """What holds each optimizer's state: the torch optimizer found inside a wrapper."""
        found = [tap.optimizer if tap.optimizer is not None else tap.source for tap in self._taps]
        # ZeroRedundancyOptimizer's full state needs a collective (consolidate_state_dict) that
        # every rank must join: each rank saves its own shard instead.
        found = [o.optim if callable(getattr(o, "consolidate_state_dict", None)) else o for o in found]
        return [o for o in found if callable(getattr(o, "state_dict", None))]

    def _save_checkpoint(self, step: int) -> Path:
        state: dict[str, Any] = {"step": step, "model": self.model.state_dict()}
        states = [o.state_dict() for o in self._optimizer_objects()]
        if states:
            state["optimizer"] = states[0] if len(states) == 1 else states
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return self.checkpointer.save(step, state)

    # --- failure handling, status files, signals ---------------------------------------------

    def _guarded(self, part: str, fn):
        if part in self._disabled:
            return None
        try:
            return fn()
        except Exception as exc:
            self._fail(part, exc)
            return None

    def _fail(self, part: str, exc: BaseException) -> None:
        if part in self._disabled:
            return
        self._disabled.add(part)
        note = f"{part} disabled after {type(exc).__name__}: {exc}"
        self._notes.append(note)
        try:
            self._warn(f"{note}; training continues")
            if self.writer.is_alive():
                self.writer.request_status()
            else:  # closing: no writer thread left to do it
                self._write_status()
        except Exception:
            pass

    def _identity(self, start_step: int) -> dict[str, Any]:
        """Who is recording here: enough to tell attempts apart before the full meta.json."""
        return {
            "format": fmt.FORMAT_VERSION,
            "tool": fmt.TOOL,
            "version": __version__,
            "rank": self.rank,
            "world_size": self.world_size,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "ended": None,
            "status": fmt.STATUS_RUNNING,
            "start_step": start_step,
        }

    def _note_earlier_attempts(self) -> None:
        """Warn when another process may still be recording this rank: both keep their data,
        and the analyzer lets the later attempt supersede the earlier one's steps."""
        if self.attempt.note:
            self._notes.append(self.attempt.note)
        for other in self.attempt.live_earlier():
            note = (
                f"rank {self.rank} is also being recorded by pid {other.get('pid')} on {other.get('hostname')} "
                f"(attempt {other['attempt']}, started {other.get('started')}); this Recorder writes attempt "
                f"{self.attempt.number} in {self.rank_paths.root}, and the analyzer lets it supersede that "
                f"attempt's steps from its own first step on"
            )
            self._notes.append(note)
            self._warn(note)

    def _counters(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "steps": self._step - self.start_step,  # rec.step() calls
            "dropped_steps": self.writer.dropped_steps,
            "lost_steps": self.writer.lost_steps,
            "warnings": self._notes + self.writer.errors,
            "disabled": sorted(self._disabled),
        }

    def _write_status(self, ended: str | None = None) -> None:
        """meta.json of this rank, and (rank 0) manifest.json. Failures are only counted:
        an unwritable run directory must not stop training."""
        with self._meta_lock:
            counters = self._counters()
            try:
                fmt.write_json_atomic(self.rank_paths.meta, self._meta(counters, ended))
            except Exception as exc:
                self._note_write_error(exc)
            if self.rank == 0:
                try:
                    fmt.write_json_atomic(self.paths.manifest, self._manifest(counters, ended))
                except Exception as exc:
                    self._note_write_error(exc)

    def _note_write_error(self, exc: Exception) -> None:
        message = f"status write failed: {type(exc).__name__}: {exc}"
        if message not in self._notes:
            self._warn(f"{message}; training continues")
            self._notes.append(message)

    def _warn(self, message: str) -> None:
        """Warn about the first recorder problem only (docs/recorder.md: warn once, then degrade); every
        problem is listed under `warnings` in meta.json / manifest.json. Called from both threads."""
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        warnings.warn(
            f"tracemortem: {message}. Later recorder problems are listed in meta.json and manifest.json only",
            RuntimeWarning,
            stacklevel=3,
        )

    def _meta(self, counters: dict[str, Any], ended: str | None) -> dict[str, Any]:
        return {
            **self._identity(self.start_step),
            "attempt": self.attempt.number,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "python_version": platform.python_version(),
            "ended": ended,
            "recorder": self.settings,
            "params": self.table.rows(),
            "backward_order": self.backward_order(),
            "backward_order_source": self._order_source if self._order else "reverse-registration",
            "snapshot_step": self._snapshot_step,
            "stepping": self._stepping(),
            "dropped_scalars": dict(self._dropped_scalars),
            "unmeasured_params": self._unmeasured(),
            **counters,
        }

    def _stepping(self) -> dict[str, Any]:
        """How grads were read (docs/recorder.md, "Stepping styles")."""
        if self._taps:
            return {
                "mode": "optimizer",
                "optimizers": [
                    {
                        "type": type(t.source).__name__,
                        "hooked": type(t.optimizer).__name__ if t.optimizer else None,
                        "via": t.hooked,
                    }
                    for t in self._taps
                ],
            }
        fired = self._backward is not None and self._backward.passes > 0
        return {"mode": "end-of-backward" if fired else "step"}

    def _unmeasured(self) -> dict[str, str]:
        stats = [self.stats] + [t.stats for t in self._taps if t.stats is not None]
        return {self.table.names[pid]: why for st in stats for pid, why in st.unmeasured.items()}

    def _manifest(self, counters: dict[str, Any], ended: str | None) -> dict[str, Any]:
        """The run as a whole, from every attempt of every rank on disk (their meta.json) and this
        one's own counters. Status and end are those of rank 0's latest attempt."""
        own = attempts.summary(
            self.rank,
            self.attempt.number,
            self.rank_paths,
            self.paths.root,
            {**self._identity(self.start_step), **counters, "ended": ended},
        )
        listing = [own]
        ranks = sorted(set(self.paths.ranks()) | {self.rank})
        for rank in ranks:
            listing += attempts.survey_rank(self.paths.rank(rank), skip=own["attempt"] if rank == self.rank else None)
        listing.sort(key=lambda a: (a["rank"], a["attempt"]))
        latest = max((a for a in listing if a["rank"] == self.rank), key=lambda a: a["attempt"])
        started = [str(a["started"]) for a in listing if a.get("started")]
        return {
            "format": fmt.FORMAT_VERSION,
            "tool": fmt.TOOL,
            "version": __version__,
            "started": min(started, default=self.started),
            "ended": latest.get("ended"),
            "status": latest.get("status") or counters["status"],
            "world_size": self.world_size,
            "ranks": ranks,
            "attempts": listing,
            "config": self.config,
            "dropped_steps": sum(_count(a.get("dropped_steps")) for a in listing),
            "lost_steps": sum(_count(a.get("lost_steps")) for a in listing),
            "warnings": counters["warnings"],
        }

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        previous = self._prev_sigterm
        if os.getpid() == self._pid and not self._closed:
            self._notes.append("terminated by SIGTERM")
            # Shorter than the usual 30 s grace period of Slurm and Kubernetes before SIGKILL.
            held = self._finish(fmt.STATUS_CRASHED, timeout=20.0)
        else:
            held = signals.Held()
        signals.forward(signum, frame, previous)  # the default action ends the process here
        signals.release(held)


def _live_handler(handler: signals.Handler) -> signals.Handler:
    """The handler to put back for SIGTERM: a closed Recorder's handler only forwards to the one
    it replaced (Recorders closed out of order), and would keep that Recorder and its model alive."""
    while isinstance(owner := getattr(handler, "__self__", None), Recorder) and owner._closed:
        handler = owner._prev_sigterm
    return handler


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_float(value: Any) -> float:
    return float(value.detach().float().reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)


def _scale_of(scaler: Any) -> Any:
    """The scale in effect after this step's scaler.update(), read without a host sync."""
    if not getattr(scaler, "is_enabled", lambda: True)():
        return None
    scale = getattr(scaler, "_scale", None)
    return scale if isinstance(scale, torch.Tensor) else scaler.get_scale()
