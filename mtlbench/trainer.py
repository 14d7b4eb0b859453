"""The common trainer: every method, every procedure phase, every grouping candidate
trains through ``Trainer.fit``. It never branches on a method's name: the model comes
from an architecture, the update from a balancer.

Hot loop rules: no host sync per step (training losses are summed on the device and
read once per epoch; metrics are accumulated on the device and read once per
evaluation); gradients are released with ``zero_grad(set_to_none=True)``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

from .data import Batch, MTLData, TensorSplit
from .tasks import Task

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


def resolve_device(name: str = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Config keys (``trainer.*``): epochs, batch_size, eval_batch_size, max_steps_per_epoch,
    optimizer (a ``_partial_`` Hydra node), scheduler (same, or null), selection
    ('last' | 'best'), grad_clip, progress, device."""

    def __init__(self, epochs: int = 10, batch_size: int = 128, eval_batch_size: Optional[int] = None,
                 max_steps_per_epoch: Optional[int] = None, optimizer=None, scheduler=None,
                 selection: str = "last", grad_clip: Optional[float] = None, progress="auto",
                 device: str = "auto", check_finite: bool = True):
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

    # ----------------------------------------------------------------- building
    def make_optimizer(self, model, balancer) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        extra = [p for p in balancer.parameters() if p.requires_grad]
        groups = [{"params": params}] + ([{"params": extra}] if extra else [])
        return instantiate(self.optimizer_cfg)(groups)

    def make_scheduler(self, optimizer):
        return None if not self.scheduler_cfg else instantiate(self.scheduler_cfg)(optimizer)

    # ----------------------------------------------------------------- loops
    def train_epoch(self, model, balancer, optimizer, batches, tasks: Sequence[Task], bar=None):
        """One pass over ``batches``; returns the mean training loss per task (on device)."""
        model.train()
        names = [t.name for t in tasks]
        total, steps = None, 0
        for batch in batches:
            batch = batch.to(self.device)
            preds = model(batch.x)
            masks = batch.masks
            losses = {t.name: t.loss(preds[t.name], batch.targets[t.name],
                                     None if masks is None else masks[t.name]) for t in tasks}
            optimizer.zero_grad(set_to_none=True)
            balancer.backward(losses, model)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            optimizer.step()
            stacked = torch.stack([losses[n] for n in names]).detach()
            total = stacked if total is None else total + stacked
            steps += 1
            if bar is not None:
                bar.update(1)
            if steps >= self.max_steps:
                break
        if total is None:
            raise TrainingError("the training split yielded no batch: check dataset.limit and trainer.batch_size")
        return total / steps

    @torch.no_grad()
    def evaluate(self, model, split: TensorSplit, tasks: Sequence[Task]):
        """Metrics and mean loss (over labelled samples) per task on ``split``."""
        model.eval()
        metrics = {t.name: t.metrics() for t in tasks}
        loss_sum = {t.name: 0.0 for t in tasks}
        count = {t.name: 0.0 for t in tasks}
        for batch in split.batches(self.eval_batch_size):
            batch = batch.to(self.device)
            preds = model(batch.x)
            for t in tasks:
                mask = None if batch.masks is None else batch.masks[t.name]
                y, p = batch.targets[t.name], preds[t.name]
                n = len(batch) if mask is None else mask.sum()
                loss_sum[t.name] = loss_sum[t.name] + t.loss(p, y, mask) * n
                count[t.name] = count[t.name] + n
                for m in metrics[t.name]:
                    m.update(p, y, mask)
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
        balancer.to(self.device)
        optimizer = self.make_optimizer(model, balancer)
        scheduler = self.make_scheduler(optimizer)
        gen = torch.Generator().manual_seed(seed)
        train = data.splits["train"]
        steps_per_epoch = min(train.num_batches(self.batch_size, drop_last=True), self.max_steps)
        history: List[dict] = []
        first_val, best_score, best_state, best_epoch = None, math.inf, None, self.epochs
        for epoch in range(1, self.epochs + 1):
            te = time.perf_counter()
            with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                      disable=None if self.progress == "auto" else not self.progress,
                      dynamic_ncols=True) as bar:
                batches = train.batches(self.batch_size, shuffle=True, generator=gen, drop_last=True)
                train_loss_t = self.train_epoch(model, balancer, optimizer, batches, tasks, bar)
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
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if self.selection == "best":
                first_val = first_val or val_loss
                score = sum(val_loss[t] / first_val[t] if first_val[t] > 0 else val_loss[t]
                            for t in val_loss) / len(val_loss)
                if score < best_score:
                    best_score, best_epoch = score, epoch
                    best_state = copy.deepcopy(model.state_dict())
        if self.selection == "best" and best_state is not None:
            model.load_state_dict(best_state)
        val, val_loss = history[best_epoch - 1]["val"], history[best_epoch - 1]["val_loss"]
        test, test_loss = self.evaluate(model, data.splits["test"], tasks)
        return FitResult(history, best_epoch, val, val_loss, test, test_loss,
                         wall_time_s=time.perf_counter() - t0)

    def _check_finite(self, train_loss: Dict[str, float], epoch: int) -> None:
        if not self.check_finite:
            return
        bad = [t for t, v in train_loss.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"non-finite training loss for task(s) {bad} in epoch {epoch}; "
                                f"lower trainer.optimizer.lr or set trainer.grad_clip")
