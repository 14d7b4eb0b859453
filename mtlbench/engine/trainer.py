"""The common trainer: every method, every procedure phase, every grouping candidate
trains through it. It never branches on a method's name: the model comes from an
architecture, the update from a balancer.

Public building blocks (procedures compose their phases from them):

* ``prepare(model, balancer, params=None) -> Session``: device, memory layout, DDP /
  compile wrapper, optimizer, scheduler and the ``BalancerContext``;
* ``restore(session, slot) / snapshot(session, slot) / finish(session, slot, result)``:
  named checkpoint slots (exact resume; a finished phase is replayed, not recomputed);
* ``forward(session, batch)``: DDP shard, autocast, layout -> (batch, predictions, rep);
* ``task_losses(tasks, preds, batch)``: per-task losses under label masks;
* ``train_step(session, batch)``: one optimisation step with the balancer;
* ``train_pass(session, batches, step=...)``: a pass over batches (progress bar, device-side
  loss sums, the finite-loss check naming task and step);
* ``epoch_row(session, epoch, train_loss)``: the balancer's epoch end and the log row;
* ``run_epochs(session, epochs, body, slot, on_epoch)``: the epoch loop (scheduler step,
  history, log row, checkpoint at every epoch end);
* ``evaluate(model, split, tasks)``: metrics and losses of a split (one metric-group
  update and one loss per task per batch).

``fit`` is these blocks composed: train pass + validation per epoch, selection, test.

Hot loop rules: no host sync per step (training losses are summed on the device and read
once per pass; metrics are accumulated on the device and read once per evaluation);
gradients are released with ``zero_grad(set_to_none=True)``.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

from mtlbench.core.balancer import BalancerContext
from mtlbench.core.data import MTLData, TensorSplit
from mtlbench.core.procedure import FitResult, TrainingError  # noqa: F401  (re-exported)
from mtlbench.core.tasks import Task
from mtlbench.engine import session as sess
from mtlbench.engine.checkpoint import CheckpointDir, CheckpointSlot
from mtlbench.engine.distributed import (SINGLE, DistContext, average_grads, mean_over_ranks, reduce_metrics,
                                         shard)
from mtlbench.engine.session import Session
from mtlbench.engine.speed import SpeedOptions

SELECTIONS = ("last", "best")


def _positive_int(key: str, value) -> int:
    try:
        v = int(value)
        ok = v == value and v >= 1 and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"trainer.{key} must be a positive integer (got {value!r})")
    return v


def resolve_device(name: str = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def task_losses(tasks: Sequence[Task], preds, batch) -> Dict[str, torch.Tensor]:
    """Each task's loss on ``batch`` (mean over its labelled samples; exact 0 when none)."""
    masks = batch.masks
    return {t.name: t.loss(preds[t.name], batch.targets[t.name], None if masks is None else masks[t.name])
            for t in tasks}


class Trainer:
    """Config keys (``trainer.*``): epochs, batch_size, eval_batch_size, max_steps_per_epoch,
    optimizer (a ``_partial_`` Hydra node), scheduler (same, or null), selection
    ('last' | 'best'), grad_clip, progress, device, check_finite, checkpoint_every_steps,
    sync_batchnorm, find_unused_parameters, amp, channels_last, compile.

    ``checkpoints`` (a ``CheckpointDir``, set by the run; None = no checkpoints) hands out
    the named slots; ``resume`` (True) continues from them."""

    def __init__(self, epochs: int = 10, batch_size: int = 128, eval_batch_size: Optional[int] = None,
                 max_steps_per_epoch: Optional[int] = None, optimizer=None, scheduler=None,
                 selection: str = "last", grad_clip: Optional[float] = None, progress="auto",
                 device: str = "auto", check_finite: bool = True,
                 checkpoint_every_steps: Optional[int] = None, sync_batchnorm: bool = False,
                 find_unused_parameters: bool = False, amp: Optional[str] = None,
                 channels_last: bool = False, compile=False):
        self.epochs, self.batch_size = _positive_int("epochs", epochs), _positive_int("batch_size", batch_size)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else _positive_int(
            "eval_batch_size", eval_batch_size)
        self.max_steps = math.inf if max_steps_per_epoch is None else _positive_int(
            "max_steps_per_epoch", max_steps_per_epoch)
        if selection not in SELECTIONS:
            raise ValueError(f"trainer.selection must be one of {', '.join(SELECTIONS)} (got '{selection}')")
        self.optimizer_cfg = optimizer or {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
        self.scheduler_cfg = scheduler
        self.selection, self.grad_clip, self.progress = selection, grad_clip, progress
        self.device = resolve_device(device)
        self.check_finite = check_finite
        self.checkpoint_every_steps = None if checkpoint_every_steps is None else _positive_int(
            "checkpoint_every_steps", checkpoint_every_steps)
        self.checkpoints: Optional[CheckpointDir] = None
        self.resume = True
        self.sync_batchnorm, self.find_unused_parameters = bool(sync_batchnorm), bool(find_unused_parameters)
        self.dist: DistContext = SINGLE   # set by the run under torchrun (see mtlbench.engine.distributed)
        self._ddp: dict = {}
        self.speed = SpeedOptions(amp, channels_last, compile, self.device)

    # ----------------------------------------------------------------- building
    def _net(self, model):
        """What the forward pass runs: the model, its DDP wrapper under torchrun, compiled
        when ``trainer.compile`` asks (falling back to eager with a message)."""
        if not self.dist.active:
            return self.speed.compiled(model)
        if id(model) not in self._ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if self.sync_batchnorm:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self._ddp[id(model)] = DDP(model, device_ids=ids, find_unused_parameters=self.find_unused_parameters)
        return self.speed.compiled(self._ddp[id(model)], owner=model)

    def check_distributed(self, *parts) -> None:
        """One-line refusal of a balancer (or procedure) that declares it cannot run under torchrun."""
        for part in parts:
            cls = part if isinstance(part, type) else type(part)
            if self.dist.active and not getattr(cls, "distributed", True):
                raise ValueError(f"{cls.__name__} declares distributed = False (it would work on one "
                                 f"process's shard only) and cannot run under torchrun: run it on one process")

    def make_optimizer(self, model, balancer, params: Optional[Iterable] = None) -> torch.optim.Optimizer:
        params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
        extra = [p for p in balancer.parameters() if p.requires_grad]
        groups = [{"params": params}] + ([{"params": extra}] if extra else [])
        return instantiate(self.optimizer_cfg)(groups)

    def make_scheduler(self, optimizer):
        return None if not self.scheduler_cfg else instantiate(self.scheduler_cfg)(optimizer)

    def balancer_context(self, model, balancer) -> BalancerContext:
        train = lambda ps: [p for p in ps if p.requires_grad]  # noqa: E731
        return BalancerContext(
            task_names=list(model.task_names), shared=train(model.shared_parameters()),
            task_specific={t: train(model.task_specific_parameters(t)) for t in model.task_names},
            last_shared=train(model.last_shared_parameters()), scaler=self.speed.scaler,
            world_size=self.dist.world, reduce_mean=mean_over_ranks)

    def prepare(self, model, balancer, tasks: Sequence[Task], params: Optional[Iterable] = None) -> Session:
        """A session for training ``model`` with ``balancer`` on ``tasks``: the model on the
        device (channels_last when asked), its optimizer over ``params`` (default: every
        parameter that trains) plus the balancer's, the scheduler, the balancer context."""
        model.to(self.device)
        if self.speed.channels_last:
            model.to(memory_format=torch.channels_last)
        balancer.to(self.device)
        self.check_distributed(balancer)
        params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
        optimizer = self.make_optimizer(model, balancer, params)
        s = Session(model=model, balancer=balancer, optimizer=optimizer, scheduler=self.make_scheduler(optimizer),
                    ctx=self.balancer_context(model, balancer), net=self._net(model), tasks=list(tasks),
                    params=params)
        s.optimizers["main"] = optimizer
        return s

    # ----------------------------------------------------------------- checkpoints
    def slot(self, name: Optional[str]) -> Optional[CheckpointSlot]:
        return None if name is None or self.checkpoints is None else self.checkpoints.slot(name)

    def restore(self, s: Session, slot: Optional[CheckpointSlot]):
        """Continue ``s`` from ``slot``; returns a finished phase's stored result, else None."""
        return sess.restore(s, slot, self.resume)

    def finish(self, s: Session, slot: Optional[CheckpointSlot], result) -> None:
        """Mark the phase finished: a resumed run replays ``result`` and the final weights."""
        sess.snapshot(s, slot, done=result)

    # ----------------------------------------------------------------- one step
    def forward(self, s: Session, batch, representation: bool = False):
        """(this rank's shard of ``batch`` on the device, fp32 predictions, representation or None)."""
        batch = shard(batch.to(self.device, non_blocking=True), self.dist)
        sp = self.speed
        with sp.autocast():
            out = s.net(sp.layout(batch.x), representation=True) if representation else s.net(sp.layout(batch.x))
        preds, rep = out if representation else (out, None)
        return batch, sp.fp32(preds), rep

    def train_step(self, s: Session, batch) -> torch.Tensor:
        """One optimisation step on ``batch``; the per-task losses [T] (detached)."""
        batch, preds, rep = self.forward(s, batch, representation=s.balancer.needs_representation)
        losses = task_losses(s.tasks, preds, batch)
        s.optimizer.zero_grad(set_to_none=True)
        s.ctx.representation = rep
        s.balancer.backward(losses, s.ctx)
        s.ctx.representation = None
        if self.dist.active:
            average_grads(s.balancer.parameters())
        self.speed.step(s.optimizer, s.params, self.grad_clip)
        s.ctx.step += 1
        return torch.stack([losses[t.name] for t in s.tasks]).detach()

    def train_pass(self, s: Session, batches: Iterable, *, step: Optional[Callable] = None,
                   names: Optional[Sequence[str]] = None, where: str = "", start: int = 0,
                   partial: Optional[torch.Tensor] = None, on_step: Optional[Callable] = None,
                   total: Optional[int] = None) -> Dict[str, float]:
        """``step(s, batch) -> loss vector`` (default ``train_step``) over at most
        ``max_steps_per_epoch - start`` batches; returns the mean of each entry (``names``:
        the tasks by default), after checking they are finite. A resumed pass passes the
        steps already done (``start``) and their loss sum (``partial``); ``on_step(steps,
        loss_sum)`` runs after each step (mid-epoch checkpoints); ``total``: steps expected
        (the progress bar)."""
        s.model.train()
        step, names = step or self.train_step, list(names or s.task_names)
        limit = self.max_steps - start
        batches = itertools.islice(batches, int(limit)) if math.isfinite(limit) else batches
        bar_total = total if total is not None else (None if math.isinf(self.max_steps) else int(self.max_steps))
        total, steps, first_bad = partial, start, None
        with tqdm(total=bar_total, initial=start, desc=where,
                  leave=False, disable=None if self.progress == "auto" else not self.progress) as bar:
            for batch in batches:
                vec = step(s, batch)
                total = vec if total is None else total + vec
                steps += 1
                if self.check_finite:  # the first non-finite step per entry, tracked on the device
                    first_bad = torch.full_like(vec, -1.0) if first_bad is None else first_bad
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(vec), float(steps), first_bad)
                bar.update(1)
                if on_step is not None:
                    on_step(steps, total)
        if total is None or steps == 0:
            raise TrainingError("the training split yielded no batch: check dataset.limit and trainer.batch_size")
        mean = total / steps if not self.dist.active else mean_over_ranks(total / steps)
        out = dict(zip(names, mean.tolist()))
        self._check_finite(out, where, None if first_bad is None else dict(zip(names, first_bad.tolist())))
        return out

    def _check_finite(self, values: Dict[str, float], where: str, first_bad: Optional[dict]) -> None:
        bad = [k for k, v in values.items() if not math.isfinite(v)] if self.check_finite else []
        if bad:
            at = ", ".join(f"{k} at step {int(first_bad[k])}" for k in bad if first_bad and first_bad.get(k, -1) > 0)
            raise TrainingError(f"non-finite training loss for {bad} in {where or 'training'}"
                                f"{f' ({at})' if at else ''}; lower trainer.optimizer.lr or set trainer.grad_clip")

    # ----------------------------------------------------------------- epochs
    def epoch_row(self, s: Session, epoch: int, train_loss: Dict[str, float]) -> dict:
        """The balancer's epoch end and the start of the epoch's log row."""
        row = {"epoch": epoch, "train_loss": train_loss, "lr": s.optimizer.param_groups[0]["lr"]}
        state = s.balancer.epoch_end(train_loss)
        weights = s.balancer.weights()
        if weights is not None:
            row["balancer_weights"] = weights
        if state:
            row["balancer"] = state
        return row

    def run_epochs(self, s: Session, epochs: int, body: Callable[[int], dict], slot: Optional[CheckpointSlot] = None,
                   on_epoch: Optional[Callable[[dict], None]] = None) -> List[dict]:
        """Epochs ``s.epoch + 1 .. epochs``: ``row = body(epoch)``, the scheduler step (with
        the mean val loss for ReduceLROnPlateau), the row appended to the history and
        logged, a checkpoint. Returns the history."""
        for epoch in range(s.epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            s.ctx.epoch = epoch
            row = body(epoch)
            row.setdefault("epoch_time_s", round(time.perf_counter() - t0, 4))
            self._scheduler_step(s, row)
            s.history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            s.epoch, s.cursor = epoch, None
            sess.snapshot(s, slot)
        return s.history

    @staticmethod
    def _scheduler_step(s: Session, row: dict) -> None:
        if s.scheduler is None:
            return
        if isinstance(s.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            losses = list((row.get("val_loss") or row.get("train_loss") or {}).values())
            s.scheduler.step(sum(losses) / max(len(losses), 1))
        else:
            s.scheduler.step()

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model, split: TensorSplit, tasks: Sequence[Task]):
        """Metrics and mean loss (over labelled samples) per task on ``split``: each task's
        metric group (``Task.metric_group``) and loss updated once per batch
        (``Task.eval_update``), on the device; read once at the end."""
        model.eval()
        groups = {t.name: t.metric_group().to(self.device) for t in tasks}
        loss_sum = {t.name: 0.0 for t in tasks}
        count = {t.name: 0.0 for t in tasks}
        net = self.speed.compiled(model)
        for i, batch in enumerate(split.batches(self.eval_batch_size)):
            if self.dist.active and i % self.dist.world != self.dist.rank:
                continue  # each rank evaluates every world-th batch; accumulators are combined below
            batch = batch.to(self.device, non_blocking=True)
            with self.speed.autocast():
                preds = self.speed.fp32(net(self.speed.layout(batch.x)))
            for t in tasks:
                mask = None if batch.masks is None else batch.masks[t.name]
                n = len(batch) if mask is None else mask.sum()
                loss = t.eval_update(groups[t.name], preds[t.name], batch.targets[t.name], mask)
                loss_sum[t.name] = loss_sum[t.name] + loss * n
                count[t.name] = count[t.name] + n
        if self.dist.active:
            reduce_metrics(groups, loss_sum, count, self.device)
        scores = {t: g.compute() for t, g in groups.items()}
        losses = {t: (float(loss_sum[t]) / float(count[t]) if float(count[t]) > 0 else float("nan"))
                  for t in loss_sum}
        return scores, losses

    # ----------------------------------------------------------------- fit
    def fit(self, model, balancer, data: MTLData, seed: int = 0, on_epoch: Optional[Callable[[dict], None]] = None,
            slot: Optional[str] = "fit") -> FitResult:
        """Train for ``epochs`` (a train pass and a validation per epoch), select the epoch
        (``selection``), test; checkpointed under ``slot`` (resumed / replayed from it)."""
        s = self.prepare(model, balancer, data.tasks)
        s.generators["data"] = torch.Generator().manual_seed(seed)
        slot_ = self.slot(slot)
        done = self.restore(s, slot_)
        if done is not None:
            return FitResult(**done)
        self.run_epochs(s, self.epochs, lambda epoch: self._fit_epoch(s, data, epoch, slot_), slot_, on_epoch)
        chosen = s.state.get("best_epoch", self.epochs) if self.selection == "best" else self.epochs
        if self.selection == "best" and s.state.get("best_state") is not None:
            model.load_state_dict(s.state["best_state"])
        val, val_loss = s.history[chosen - 1]["val"], s.history[chosen - 1]["val_loss"]
        test, test_loss = self.evaluate(model, data.splits["test"], data.tasks)
        result = FitResult(s.history, chosen, val, val_loss, test, test_loss, wall_time_s=s.wall_time())
        self.finish(s, slot_, result)
        return result

    def _fit_epoch(self, s: Session, data: MTLData, epoch: int, slot: Optional[CheckpointSlot]) -> dict:
        start, partial, cur = 0, None, s.cursor
        if cur is not None:  # resumed mid-epoch: replay the epoch's order, skip the steps done
            s.set_generator_states(cur["generators"])
            start, partial = cur["step"], cur["partial"].to(self.device)
        at_start = s.generator_states()
        batches = iter(data.splits["train"].batches(self.batch_size, shuffle=True, generator=s.generators["data"],
                                                    drop_last=True))
        for _ in itertools.islice(batches, start):
            pass
        every = self.checkpoint_every_steps if slot is not None else None

        def on_step(steps, total):
            if steps % every == 0:
                sess.snapshot(s, slot, cursor={"step": steps, "partial": total.detach().cpu(), "generators": at_start})
        total = min(data.splits["train"].num_batches(self.batch_size, drop_last=True), self.max_steps)
        train_loss = self.train_pass(s, batches, where=f"epoch {epoch}/{self.epochs}", start=start,
                                     partial=partial, on_step=on_step if every else None, total=total)
        row = self.epoch_row(s, epoch, train_loss)
        row["val"], row["val_loss"] = self.evaluate(s.model, data.splits["val"], data.tasks)
        self._track_best(s, epoch, row["val_loss"])
        return row

    def _track_best(self, s: Session, epoch: int, val_loss: Dict[str, float]) -> None:
        """``selection=best``: the epoch with the lowest mean over tasks of val loss / that
        task's first-epoch val loss."""
        if self.selection != "best":
            return
        first = s.state.setdefault("first_val", dict(val_loss))
        score = sum(val_loss[t] / first[t] if first[t] > 0 else val_loss[t] for t in val_loss) / len(val_loss)
        if score < s.state.get("best_score", math.inf):
            s.state.update(best_score=score, best_epoch=epoch, best_state=copy.deepcopy(s.model.state_dict()))
