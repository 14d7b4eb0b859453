"""Pairwise inter-task affinity from ONE multi-task run: the lookahead affinity of TAG
(Fifty, Amid, Zhao, Yu, Anil & Finn, "Efficiently Identifying Task Groupings for Multi-Task
Learning", NeurIPS 2021; reference code google-research/google-research, ``tag/``).

At a training step with shared parameters θ_s (``model.shared_parameters()``) and batch b,
Z_{i→j} measures how much a step on task i's loss lowers (> 0) or raises (< 0) task j's
loss on b, task-specific parameters unchanged. Z is computed every ``every`` training steps
of a hard-sharing run and averaged over those steps (a step where task j has no labelled
sample leaves Z_{·→j} out of its mean). The T×T result is ``Z[i, j] = Z_{i→j}``; its
diagonal is each task's own lookahead gain. Two lookaheads (``lookahead``):

* ``optimizer`` (default; the reference's ``train_step`` in ``tag/celeba/CelebA.ipynb``):
  ``Z_{i→j} = (1 − L_j(θ_s + Δ_i; b) / L_j(θ_s; b)) / η`` on the CURRENT TRAINING BATCH b,
  just before the trainer's own step on it, where Δ_i is the update the training optimiser
  would apply for the gradient ∇_{θ_s} L_i from its current state (SGD: −η g; SGD with
  momentum: −η (μ·buf + g), −η g before the first step, as the reference's first_step; Adam
  and AdamW: their bias-corrected moment update; any torch optimiser: a copy of it with a
  copy of its state takes the step) and η is the optimiser's current learning rate. Both
  losses are taken with batch-norm in training mode (batch statistics, as the reference's
  ``training=True`` forward and ``base_step``'s ``tf.nn.moments``); the running statistics
  and the random-number stream are restored afterwards, and every lookahead forward starts
  from the same RNG state (same dropout masks), so the training run is not disturbed.
* ``sgd_probe`` (mtlbench's earlier lookahead): ``Z_{i→j} = 1 − L_j(θ_s − η ∇L_i; b) /
  L_j(θ_s; b)`` with a fixed plain-SGD step ``lookahead_lr`` = η, not divided by η, the model
  in eval mode (running statistics, no dropout), on a PROBE batch b drawn from the training
  split: up to ``probe_per_task`` labelled samples of every task on label-masked data (one
  sample, one task: School, Landmine, where a training batch labels few samples per task),
  else ``probe_size`` random rows.

In both the parameters are swapped in with ``torch.func.functional_call``, so the trained
model is never modified.

``grouping_scores(Z)`` turns Z into the inputs of ``mtlbench.grouping.selection``: ``pair[i, j] =
−Z_{j→i}`` (task i's score in a network shared with j; lower is better: j helps i) and
``single[i] = 0``; ``mtlbench.grouping.tag`` builds TAG's selection table from ``pair``
(the reference's singleton rule, exhaustive enumeration up to 12 tasks).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mtlbench.core.data import Batch, MTLData
from mtlbench.core.procedure import TrainingError


def _masks(batch: Batch, name: str):
    return None if batch.masks is None else batch.masks[name]


def task_losses(model, batch: Batch, tasks) -> torch.Tensor:
    preds = model(batch.x)
    return torch.stack([t.loss(preds[t.name], batch.targets[t.name], _masks(batch, t.name)) for t in tasks])


def lookahead_affinity(model, batch: Batch, tasks, lookahead_lr: float) -> np.ndarray:
    """One step's Z [T, T] (nan where task j has no labelled sample or task i none)."""
    from torch.func import functional_call

    shared_ids = {id(p) for p in model.shared_parameters()}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in shared_ids]
    T = len(tasks)
    z = np.full((T, T), np.nan)
    if not named:
        return z
    was_training = model.training
    model.eval()
    try:
        losses = task_losses(model, batch, tasks)
        base = losses.detach()
        _check_finite(batch, tasks, base)
        present = _present(batch, tasks, base)
        for i in range(T):
            if not present[i]:
                continue
            grads = torch.autograd.grad(losses[i], [p for _, p in named], retain_graph=True, allow_unused=True)
            moved = {n: (p if g is None else p - lookahead_lr * g).detach() for (n, p), g in zip(named, grads)}
            with torch.no_grad():
                ahead = task_losses(lambda x: functional_call(model, moved, (x,)), batch, tasks)
            ratio = (ahead / base.clamp_min(1e-12)).cpu().numpy()
            z[i] = np.where(present, 1.0 - ratio, np.nan)
            _check_row(z, i, present, tasks, f"the lookahead step diverged); lower procedure.lookahead_lr "
                                             f"(got {lookahead_lr:g})")
    finally:
        model.train(was_training)
    return z


LOOKAHEADS = ("optimizer", "sgd_probe")


def optimizer_update(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                     grads: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    """The update Δ (new − old) that ``optimizer`` would apply to ``params`` for ``grads`` from
    its current state, computed by a copy of it (same class, hyper-parameters and state) on
    copies of the parameters; the optimiser and the parameters are left untouched. None
    where the gradient is None (an optimiser skips a parameter without gradient)."""
    where = {id(p): (k, g) for k, g in enumerate(optimizer.param_groups) for p in g["params"]}
    groups: Dict[int, dict] = {}
    clones: List[Optional[torch.Tensor]] = []
    for p, g in zip(params, grads):
        if g is None or id(p) not in where:
            clones.append(None)
            continue
        k, group = where[id(p)]
        c = p.detach().clone().requires_grad_(True)
        c.grad = g.detach().clone()
        groups.setdefault(k, {**{n: v for n, v in group.items() if n != "params"}, "params": []})["params"].append(c)
        clones.append(c)
    if not groups:
        return [None] * len(params)
    twin = type(optimizer)(list(groups.values()))
    for p, c in zip(params, clones):
        if c is not None and optimizer.state.get(p):
            twin.state[c] = copy.deepcopy(optimizer.state[p])
    twin.step()
    return [None if c is None else (c.detach() - p.detach()) for p, c in zip(params, clones)]


def _rng_devices(model) -> list:
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    return [dev.index or 0] if dev.type == "cuda" else []


def optimizer_affinity(model, batch: Batch, tasks, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """One step's Z [T, T] with the training optimiser's own update, divided by its learning
    rate, batch-norm in training mode (see the module docstring); nan where a task is absent."""
    from torch.func import functional_call

    shared = {id(p) for p in model.shared_parameters()}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in shared and p.requires_grad]
    T = len(tasks)
    z = np.full((T, T), np.nan)
    group = next((g for g in optimizer.param_groups for p in g["params"] if named and p is named[0][1]), None)
    if not named or group is None:
        return z
    lr, devices = float(group["lr"]), _rng_devices(model)
    was_training, saved = model.training, {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train()
    try:
        with torch.random.fork_rng(devices=devices):
            losses = task_losses(model, batch, tasks)
        base = losses.detach()
        _check_finite(batch, tasks, base)
        present = _present(batch, tasks, base)
        for i in np.flatnonzero(present):
            grads = torch.autograd.grad(losses[i], [p for _, p in named], retain_graph=True, allow_unused=True)
            deltas = optimizer_update(optimizer, [p for _, p in named], grads)
            moved = {n: (p if d is None else p + d).detach() for (n, p), d in zip(named, deltas)}
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                ahead = task_losses(lambda x: functional_call(model, moved, (x,)), batch, tasks)
            z[i] = np.where(present, (1.0 - (ahead / base.clamp_min(1e-12)).cpu().numpy()) / lr, np.nan)
            _check_row(z, i, present, tasks, f"the optimiser's lookahead step diverged); lower "
                                             f"trainer.optimizer.lr (got {lr:g}) or use procedure.lookahead=sgd_probe")
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])
        model.train(was_training)
    return z


def _check_row(z: np.ndarray, i: int, present: np.ndarray, tasks, why: str) -> None:
    """Row i of Z must be finite where task j is present; else one line (``why`` closes the
    parenthesis opened here and names the setting to change)."""
    bad = [j for j in range(len(tasks)) if present[j] and not np.isfinite(z[i, j])]
    if bad:
        raise TrainingError(f"non-finite lookahead affinity Z[{tasks[i].name} -> {tasks[bad[0]].name}] ({why}")


def _check_finite(batch: Batch, tasks, base: torch.Tensor) -> None:
    """A NaN/inf loss of a labelled task on the probe: the model diverged."""
    ok = torch.isfinite(base).cpu().numpy()
    for k, t in enumerate(tasks):
        if not ok[k] and (batch.masks is None or bool(batch.masks[t.name].any())):
            raise TrainingError(f"non-finite loss of task {t.name} on the affinity probe (the model diverged); "
                                f"lower trainer.optimizer.lr or set trainer.grad_clip")


def _present(batch: Batch, tasks, base: torch.Tensor) -> np.ndarray:
    ok = (base > 0).cpu().numpy()
    if batch.masks is not None:
        ok &= np.array([bool(batch.masks[t.name].any()) for t in tasks])
    return ok


def probe_batch(split, task_names: Sequence[str], generator: torch.Generator, probe_per_task: int = 16,
                probe_size: int = 1024) -> Batch:
    """A batch of the training split for one affinity step (see the module docstring)."""
    n = len(split)
    masks = getattr(split, "masks", None)
    if masks is None:
        idx = torch.randperm(n, generator=generator)[:probe_size]
    else:
        parts = []
        for t in task_names:
            rows = torch.nonzero(masks[t], as_tuple=False).reshape(-1)
            if len(rows):
                parts.append(rows[torch.randperm(len(rows), generator=generator)[:probe_per_task]])
        idx = torch.unique(torch.cat(parts)) if parts else torch.arange(min(n, probe_size))
    sub = split.subset(idx)
    return next(iter(sub.batches(len(sub))))


class AffinityTracker:
    """Wraps the training batches of a run: before every ``every``-th step it computes Z with
    the model's current parameters (``lookahead='optimizer'``: on that training batch with
    ``optimizer``'s update; ``'sgd_probe'``: on a probe batch) and adds it to a running nan-mean."""

    def __init__(self, model, data: MTLData, every: int = 10, lookahead_lr: float = 0.01,
                 probe_per_task: int = 16, probe_size: int = 1024, seed: int = 0, device="cpu",
                 lookahead: str = "optimizer", optimizer: Optional[torch.optim.Optimizer] = None):
        if int(every) < 1 or float(lookahead_lr) <= 0:
            raise ValueError(f"affinity: every must be >= 1 and lookahead_lr > 0 (got {every}, {lookahead_lr})")
        if lookahead not in LOOKAHEADS:
            raise ValueError(f"procedure.lookahead must be one of {', '.join(LOOKAHEADS)} (got {lookahead!r})")
        self.lookahead, self.optimizer = lookahead, optimizer
        self.model, self.data, self.every, self.lr = model, data, int(every), float(lookahead_lr)
        self.per_task, self.size, self.device = int(probe_per_task), int(probe_size), device
        self.gen = torch.Generator().manual_seed(seed)
        T = len(data.tasks)
        self.sum, self.count, self.steps, self.updates = np.zeros((T, T)), np.zeros((T, T)), 0, 0

    def wrap(self, batches):
        for b in batches:
            if self.steps % self.every == 0:
                self.update(b)
            self.steps += 1
            yield b

    def update(self, batch: Optional[Batch] = None) -> None:
        try:
            if self.lookahead == "optimizer":
                z = optimizer_affinity(self.model, batch.to(self.device), self.data.tasks, self.optimizer)
            else:
                batch = probe_batch(self.data.splits["train"], self.data.task_names, self.gen, self.per_task,
                                    self.size).to(self.device)
                z = lookahead_affinity(self.model, batch, self.data.tasks, self.lr)
        except TrainingError as exc:
            raise TrainingError(f"{exc} [affinity update at training step {self.steps + 1}]") from None
        ok = np.isfinite(z)
        self.sum[ok] += z[ok]
        self.count += ok
        self.updates += 1

    def state(self) -> dict:
        return {"sum": self.sum.copy(), "count": self.count.copy(), "steps": self.steps, "updates": self.updates}

    def load(self, state: dict) -> None:
        self.sum, self.count = np.array(state["sum"]), np.array(state["count"])
        self.steps, self.updates = int(state["steps"]), int(state["updates"])

    def result(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan)


def tag_affinity(model, balancer, data: MTLData, trainer, seed: int = 0, every: int = 10,
                 lookahead_lr: float = 0.01, probe_per_task: int = 16, probe_size: int = 1024,
                 on_epoch=None, slot: Optional[str] = "affinity", lookahead: str = "optimizer") -> np.ndarray:
    """Train ``model`` (a hard-sharing model of all of ``data``'s tasks) with ``trainer`` for
    ``trainer.epochs`` epochs on its building blocks (scheduler, finite-loss check, autocast,
    checkpoint slot ``slot`` at every epoch end), recording Z; returns Z [T, T]. A killed
    run resumes at the last finished epoch with the tracker's sums and probe generator."""
    s = trainer.prepare(model, balancer, data.tasks)
    tracker = AffinityTracker(model, data, every, lookahead_lr, probe_per_task, probe_size, seed, trainer.device,
                              lookahead, s.optimizer)
    s.generators.update(data=torch.Generator().manual_seed(seed), probe=tracker.gen)
    s.state["affinity"] = tracker.state()
    ckpt = trainer.slot(slot)
    done = trainer.restore(s, ckpt)
    if done is not None:
        return np.asarray(done["affinity"], dtype=float)
    tracker.load(s.state["affinity"])

    def epoch(e: int) -> dict:
        batches = data.splits["train"].batches(trainer.batch_size, shuffle=True, generator=s.generators["data"],
                                               drop_last=True)
        loss = trainer.train_pass(s, tracker.wrap(batches), where=f"affinity epoch {e}")
        s.state["affinity"] = tracker.state()
        return {"phase": "affinity", **trainer.epoch_row(s, e, loss), "val": {}, "affinity_updates": tracker.updates}

    trainer.run_epochs(s, trainer.epochs, epoch, ckpt, on_epoch)
    z = tracker.result()
    trainer.finish(s, ckpt, {"affinity": z.tolist()})
    return z


def grouping_scores(z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(single [T], pair [T, T]) for ``mtlbench.grouping.selection``: pair[i, j] = −Z_{j→i}, single = 0.
    Pairs never measured (nan) score 0, as a task alone."""
    z = np.asarray(z, dtype=float)
    pair = -z.T.copy()
    pair[~np.isfinite(pair)] = 0.0
    np.fill_diagonal(pair, np.nan)
    return np.zeros(len(z)), pair


def labelled_subset(data: MTLData, names: Sequence[str]) -> MTLData:
    """``data`` restricted to ``names``, dropping samples labelled for none of them (label-masked data)."""
    sub = data.select_tasks(list(names))
    splits: Dict[str, object] = {}
    for k, s in sub.splits.items():
        masks = getattr(s, "masks", None)
        if masks is None:
            splits[k] = s
            continue
        keep = torch.stack([masks[n] for n in names]).any(0)
        splits[k] = s.subset(torch.nonzero(keep, as_tuple=False).reshape(-1))
    sub.splits = splits
    return sub


def group_names(groups: Sequence[tuple], tasks: Sequence[str]) -> List[List[str]]:
    return [[tasks[i] for i in g] for g in groups]


def with_singletons(groups: Sequence[tuple], n: int) -> List[tuple]:
    out = [tuple(int(i) for i in g) for g in groups]
    have = {g for g in out}
    return out + [(i,) for i in range(n) if (i,) not in have]


def default_budget(n_tasks: int, max_size: int) -> float:
    return float(max(1, int(np.ceil(2 * n_tasks / max(2, max_size)))))


__all__ = ["lookahead_affinity", "optimizer_affinity", "optimizer_update", "LOOKAHEADS", "AffinityTracker", "tag_affinity", "grouping_scores", "probe_batch",
           "labelled_subset", "with_singletons", "default_budget"]
