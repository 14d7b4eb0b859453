"""The common trainer: every method, every procedure phase, every grouping candidate
trains through ``Trainer.fit``. It never branches on a method's name: the model comes
from an architecture, the update from a balancer.

Hot loop rules: no host sync per step (training losses are summed on the device and
read once per epoch; metrics are accumulated on the device and read once per
evaluation); gradients are released with ``zero_grad(set_to_none=True)``.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

from mtlbench.engine.checkpoint import CheckpointSlot, rng_state, set_rng_state
from mtlbench.core.data import MTLData, TensorSplit
from mtlbench.engine.speed import SpeedOptions
from mtlbench.engine.distributed import SINGLE, DistContext, average_grads, mean_over_ranks, reduce_metrics, shard
from mtlbench.core.tasks import Task

Scores = Dict[str, Dict[str, float]]


class TrainingError(RuntimeError):
    """A run that cannot continue (e.g. non-finite loss); ``str()`` names task and step."""


@dataclass
class FitResult:
    history: List[dict]
    selected_epoch: int
    val: Scores
    val_losses: Dict[str, float]
    test: Scores
    test_losses: Dict[str, float]
    wall_time_s: float
    extra: dict = field(default_factory=dict)


def _positive_int(key: str, value) -> int:
    try:
        v = int(value)
        ok = v == value and v >= 1 and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"trainer.{key} must be a positive integer (got {value!r})")
    return v


@dataclass
class _FitState:
    """What a fit carries from epoch to epoch (and into a checkpoint)."""
    epoch: int = 0                  # epochs completed
    step: int = 0                   # steps done in the epoch in progress
    partial: Optional[torch.Tensor] = None   # their per-task loss sum
    gen_epoch_start: Optional[torch.Tensor] = None
    history: List[dict] = field(default_factory=list)
    first_val: Optional[dict] = None
    best_score: float = math.inf
    best_state: Optional[dict] = None
    best_epoch: int = 0
    elapsed: float = 0.0


def resolve_device(name: str = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Config keys (``trainer.*``): epochs, batch_size, eval_batch_size, max_steps_per_epoch,
    optimizer (a ``_partial_`` Hydra node), scheduler (same, or null), selection
    ('last' | 'best'), grad_clip, progress, device, check_finite, checkpoint_every_steps.

    ``checkpoint`` (a ``CheckpointSlot``, set by the run for each fit; None = no
    checkpoints) is written at the end of every epoch and, with ``checkpoint_every_steps``,
    every that many steps; ``fit`` resumes from it when ``resume`` is true."""

    def __init__(self, epochs: int = 10, batch_size: int = 128, eval_batch_size: Optional[int] = None,
                 max_steps_per_epoch: Optional[int] = None, optimizer=None, scheduler=None,
                 selection: str = "last", grad_clip: Optional[float] = None, progress="auto",
                 device: str = "auto", check_finite: bool = True,
                 checkpoint_every_steps: Optional[int] = None, sync_batchnorm: bool = False,
                 find_unused_parameters: bool = False, amp: Optional[str] = None,
                 channels_last: bool = False, compile=False):
        epochs, batch_size = _positive_int("epochs", epochs), _positive_int("batch_size", batch_size)
        if eval_batch_size is not None:
            eval_batch_size = _positive_int("eval_batch_size", eval_batch_size)
        if max_steps_per_epoch is not None:
            max_steps_per_epoch = _positive_int("max_steps_per_epoch", max_steps_per_epoch)
        if selection not in ("last", "best"):
            raise ValueError(f"trainer.selection must be 'last' or 'best' (got '{selection}')")
        self.epochs, self.batch_size = epochs, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_steps = max_steps_per_epoch or math.inf
        self.optimizer_cfg = optimizer or {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
        self.scheduler_cfg = scheduler
        self.selection, self.grad_clip, self.progress = selection, grad_clip, progress
        self.device = resolve_device(device)
        self.check_finite = check_finite
        if checkpoint_every_steps is not None:
            checkpoint_every_steps = _positive_int("checkpoint_every_steps", checkpoint_every_steps)
        self.checkpoint_every_steps = checkpoint_every_steps
        self.checkpoint: Optional[CheckpointSlot] = None
        self.resume = True
        self.sync_batchnorm, self.find_unused_parameters = bool(sync_batchnorm), bool(find_unused_parameters)
        self.dist: DistContext = SINGLE   # set by the run under torchrun (see mtlbench.engine.distributed)
        self._ddp: dict = {}
        self.first_bad_step = None
        self.speed = SpeedOptions(amp, channels_last, compile, self.device)

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

    def check_distributed(self, balancer) -> None:
        if self.dist.active and not getattr(balancer, "distributed", True):
            raise ValueError(f"balancer {type(balancer).__name__} computes per-task gradients on each process's "
                             f"shard and cannot run under torchrun: run it on one process")

    # ----------------------------------------------------------------- building
    def make_optimizer(self, model, balancer) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        extra = [p for p in balancer.parameters() if p.requires_grad]
        groups = [{"params": params}] + ([{"params": extra}] if extra else [])
        return instantiate(self.optimizer_cfg)(groups)

    def make_scheduler(self, optimizer):
        return None if not self.scheduler_cfg else instantiate(self.scheduler_cfg)(optimizer)

    # ----------------------------------------------------------------- loops
    def train_epoch(self, model, balancer, optimizer, batches, tasks: Sequence[Task], bar=None, *,
                    start_step: int = 0, partial: Optional[torch.Tensor] = None,
                    on_step: Optional[Callable[[int, torch.Tensor], None]] = None):
        """One pass over ``batches``; returns the mean training loss per task (on device).
        A resumed epoch passes the steps already done (``start_step``, their loss sum
        ``partial``) and the remaining batches. ``on_step(steps_done, loss_sum)`` runs
        after each step (checkpoints use it)."""
        model.train()
        net, sp = self._net(model), self.speed
        balancer.grad_scaler = sp.scaler
        names = [t.name for t in tasks]
        total, steps, first_bad = partial, start_step, None
        for batch in batches:
            batch = shard(batch.to(self.device, non_blocking=True), self.dist)
            with sp.autocast():
                preds = net(sp.layout(batch.x))
            preds = sp.fp32(preds)
            masks = batch.masks
            losses = {t.name: t.loss(preds[t.name], batch.targets[t.name],
                                     None if masks is None else masks[t.name]) for t in tasks}
            optimizer.zero_grad(set_to_none=True)
            balancer.backward(losses, model)
            if self.dist.active:
                average_grads(balancer.parameters())
            sp.step(optimizer, model, self.grad_clip)
            stacked = torch.stack([losses[n] for n in names]).detach()
            total = stacked if total is None else total + stacked
            steps += 1
            if self.check_finite:  # first non-finite step per task, tracked on the device (no sync)
                if first_bad is None:
                    first_bad = torch.full_like(stacked, -1.0)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(stacked), float(steps), first_bad)
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(steps, total)
            if steps >= self.max_steps:
                break
        if total is None:
            raise TrainingError("the training split yielded no batch: check dataset.limit and trainer.batch_size")
        self.first_bad_step = None if first_bad is None else dict(zip(names, first_bad.tolist()))
        return total / steps if not self.dist.active else mean_over_ranks(total / steps)

    def _step_hook(self, snapshot: Callable[[int, torch.Tensor], None]):
        every = self.checkpoint_every_steps
        if self.checkpoint is None or not every:
            return None

        def on_step(steps: int, total: torch.Tensor) -> None:
            if steps % every == 0:
                snapshot(steps, total)
        return on_step

    @torch.no_grad()
    def evaluate(self, model, split: TensorSplit, tasks: Sequence[Task]):
        """Metrics and mean loss (over labelled samples) per task on ``split``."""
        model.eval()
        metrics = {t.name: t.metrics() for t in tasks}
        loss_sum = {t.name: 0.0 for t in tasks}
        count = {t.name: 0.0 for t in tasks}
        for i, batch in enumerate(split.batches(self.eval_batch_size)):
            if self.dist.active and i % self.dist.world != self.dist.rank:
                continue  # each rank evaluates every world-th batch; accumulators are combined below
            batch = batch.to(self.device, non_blocking=True)
            with self.speed.autocast():
                preds = self.speed.fp32(self.speed.compiled(model)(self.speed.layout(batch.x)))
            for t in tasks:
                mask = None if batch.masks is None else batch.masks[t.name]
                y, p = batch.targets[t.name], preds[t.name]
                n = len(batch) if mask is None else mask.sum()
                loss_sum[t.name] = loss_sum[t.name] + t.loss(p, y, mask) * n
                count[t.name] = count[t.name] + n
                for m in metrics[t.name]:
                    m.update(p, y, mask)
        if self.dist.active:
            reduce_metrics(metrics, loss_sum, count, self.device)
        scores = {t: {m.name: m.compute() for m in ms} for t, ms in metrics.items()}
        losses = {t: (float(loss_sum[t]) / float(count[t]) if float(count[t]) > 0 else float("nan"))
                  for t in loss_sum}
        return scores, losses

    # ----------------------------------------------------------------- fit
    def fit(self, model, balancer, data: MTLData, seed: int = 0,
            on_epoch: Optional[Callable[[dict], None]] = None) -> FitResult:
        t0 = time.perf_counter()
        tasks = data.tasks
        model.to(self.device)
        if self.speed.channels_last:
            model.to(memory_format=torch.channels_last)
        balancer.to(self.device)
        self.check_distributed(balancer)
        optimizer = self.make_optimizer(model, balancer)
        scheduler = self.make_scheduler(optimizer)
        gen = torch.Generator().manual_seed(seed)
        train = data.splits["train"]
        steps_per_epoch = min(train.num_batches(self.batch_size, drop_last=True), self.max_steps)
        st = _FitState(best_epoch=self.epochs)
        saved = self.checkpoint.load() if self.checkpoint is not None and self.resume else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            balancer.load_state_dict(saved["balancer"])
            if saved.get("done"):  # a finished phase of a resumed procedure: replay its result
                set_rng_state(saved["rng"])
                return FitResult(**saved["result"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            st = _FitState(**saved["fit_state"])
            t0 -= st.elapsed

        def snapshot(epoch: int, step: int, partial=None, done: Optional[FitResult] = None) -> None:
            if self.checkpoint is None:
                return
            st.elapsed = time.perf_counter() - t0
            state = {"epoch": epoch, "step": step, "model": model.state_dict(),
                     "balancer": balancer.state_dict(), "rng": rng_state()}
            if done is not None:
                state.update(done=True, result=dataclasses.asdict(done))
            else:
                state.update(optimizer=optimizer.state_dict(),
                             scheduler=None if scheduler is None else scheduler.state_dict(),
                             fit_state=dataclasses.asdict(dataclasses.replace(st, epoch=epoch, step=step,
                                                                              partial=partial)))
            self.checkpoint.save(state)

        for epoch in range(st.epoch + 1, self.epochs + 1):
            te = time.perf_counter()
            start, partial = st.step, st.partial
            if start:
                gen.set_state(st.gen_epoch_start)
            else:
                st.gen_epoch_start = gen.get_state()
            with tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                      disable=None if self.progress == "auto" else not self.progress,
                      dynamic_ncols=True) as bar:
                batches = iter(train.batches(self.batch_size, shuffle=True, generator=gen, drop_last=True))
                if start:  # replay the epoch's order, skip what was done, then the RNGs of then
                    for _ in itertools.islice(batches, start):
                        pass
                    set_rng_state(saved["rng"])
                    partial = partial.to(self.device)

                def on_step_ckpt(steps, total, _epoch=epoch):
                    self._check_finite_sum(total, data.task_names, steps, _epoch)
                    snapshot(_epoch - 1, steps, total.detach().cpu())
                train_loss_t = self.train_epoch(model, balancer, optimizer, batches, tasks, bar,
                                                start_step=start, partial=partial,
                                                on_step=self._step_hook(on_step_ckpt))
            st.step, st.partial = 0, None
            train_loss = dict(zip(data.task_names, train_loss_t.tolist()))
            self._check_finite(train_loss, epoch)
            balancer_state = balancer.epoch_end(train_loss)
            balancer_weights = balancer.weights()
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            val, val_loss = self.evaluate(model, data.splits["val"], tasks)
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val": val,
                   "lr": lr, "epoch_time_s": round(time.perf_counter() - te, 4)}
            if balancer_weights is not None:
                row["balancer_weights"] = balancer_weights
            if balancer_state:
                row["balancer"] = balancer_state
            st.history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if self.selection == "best":
                st.first_val = st.first_val or val_loss
                score = sum(val_loss[t] / st.first_val[t] if st.first_val[t] > 0 else val_loss[t]
                            for t in val_loss) / len(val_loss)
                if score < st.best_score:
                    st.best_score, st.best_epoch = score, epoch
                    st.best_state = copy.deepcopy(model.state_dict())
            st.gen_epoch_start = gen.get_state()
            snapshot(epoch, 0)
        if self.selection == "best" and st.best_state is not None:
            model.load_state_dict(st.best_state)
        history = st.history
        val, val_loss = history[st.best_epoch - 1]["val"], history[st.best_epoch - 1]["val_loss"]
        test, test_loss = self.evaluate(model, data.splits["test"], tasks)
        result = FitResult(history, st.best_epoch, val, val_loss, test, test_loss,
                           wall_time_s=time.perf_counter() - t0)
        snapshot(self.epochs, 0, done=result)
        return result

    def _check_finite_sum(self, total: torch.Tensor, names, steps: int, epoch: int) -> None:
        if self.check_finite and not bool(torch.isfinite(total).all()):
            bad = [n for n, ok in zip(names, torch.isfinite(total).tolist()) if not ok]
            raise TrainingError(f"non-finite training loss for task(s) {bad} by step {steps} of epoch {epoch}; "
                                f"lower trainer.optimizer.lr or set trainer.grad_clip")

    def _check_finite(self, train_loss: Dict[str, float], epoch: int) -> None:
        if not self.check_finite:
            return
        bad = [t for t, v in train_loss.items() if not math.isfinite(v)]
        if bad:
            first = getattr(self, "first_bad_step", None) or {}
            at = ", ".join(f"{t} at step {int(first[t])}" for t in bad if first.get(t, -1) > 0)
            raise TrainingError(f"non-finite training loss for task(s) {bad} in epoch {epoch}"
                                f"{f' ({at} of the epoch)' if at else ''}; "
                                f"lower trainer.optimizer.lr or set trainer.grad_clip")
