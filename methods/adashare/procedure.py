"""The ``adashare`` procedure: warm-up, policy search, retrain with the fixed policy, test
(Sun et al., NeurIPS 2020; reference code github.com/sunxm2357/AdaShare ``train.py``,
``re-train.py``, ``envs/blockdrop_env.py``). Needs ``arch=adashare``.

Budgets are fractions of ``trainer.epochs`` = E (each phase gets max(1, round(f * E))):
``warmup`` epochs (0 = none), ``search`` cycles, ``retrain`` epochs. The defaults 0.2 /
0.8 / 1.0 are the reference's NYUv2 / Cityscapes proportions (4,000 warm-up and 16,000
search iterations, 20,000 retrain iterations, a search cycle being one pass over each half
of the train split). ``trainer.max_steps_per_epoch``, ``trainer.batch_size`` and
``dataset.limit`` bound every phase (a weight or policy pass is capped like an epoch).

1. **warm-up**: hard sharing (every block executed by every task), ``Trainer.fit``.
2. **search**: the train split is split (seeded by the run's seed) into a weight part and a
   disjoint policy part (``policy_fraction`` of it). Cycle c = a weight pass (soft
   Gumbel-Softmax gates, logits frozen, the trainer's optimizer or ``search_optimizer``)
   then a policy pass (weights frozen, Adam(``policy_lr``, ``policy_weight_decay``) on the
   logits). Curriculum: in cycle c the last k = min(L, (c-1) // ``curriculum_speed`` + 1)
   blocks are under the policy, earlier blocks execute and their logits do not change
   (``curriculum: false``: k = L). The temperature starts at ``init_temperature`` and is
   multiplied by ``temperature_decay`` after each policy pass. Policy loss =
   Σ_t λ_t L_t + ``sparsity_weight`` · sparsity + ``sharing_weight`` · sharing, with λ the
   balancer's per-task weights (the ``static`` balancer of the preset: the papers' λ; the
   same λ weight the task losses of the weight updates, warm-up and retrain):
   sparsity = Σ_t mean over the curriculum blocks of −log p_t,l(skip) (the reference's
   cross-entropy towards "skip"); sharing = Σ_{i<j} Σ_l w_l |z_i,l − z_j,l| over the
   curriculum blocks, z = logit(execute) − logit(skip) (the log-odds; the reference uses the
   execute logit alone, the same under its equal initialisation), with
   ``sharing_direction: paper`` w_l = (L − l) / L (l = 0..L−1: lower blocks weigh more, as
   the paper states) or ``reference`` w_l = (l + 1) / L (the reference code).
3. **selection (validation only)**: after the weight pass of every cycle c > L ·
   curriculum_speed (once every block has had ``curriculum_speed`` policy passes, as the
   reference) and of the last cycle, the argmax policy is evaluated on the val split with the
   current weights; the score is the mean over tasks of the mean over metrics of the signed
   relative change vs the warm-up model's val metrics (per task the val loss instead when no
   metric gives a relative change, or always with ``selection_score: loss``). The logits of
   the best cycle are kept. The reference selects on its test split; this never does.
4. **retrain**: from the same initial weights as the warm-up (the reference reloads its
   initial state), a fixed policy: ``retrain_policy: argmax`` or ``sample`` (drawn from the
   selected execute probabilities, seeded; ``retrain_samples`` of them, each retrained, the
   best on val kept), ``Trainer.fit`` for ``retrain`` epochs.
5. **test**: the selected retrained model is evaluated on the test split: the only time the
   test split is read (``Trainer.fit`` runs with the val split as its test split).

Every phase logs to metrics.jsonl with a ``phase`` key (warmup / search / retrain) and is
recorded in ``procedure_info`` (policy, execute probabilities, selection, per-phase wall
time and epochs, total cost); ``policy.png`` (tasks x blocks heatmap) lands in the run
folder. ``params``: total = deployed (stem + blocks executed by >= 1 task + shortcut
projections of blocks skipped by a task + heads), trained = everything allocated (with the
logits), per_task = each task's path, hard_sharing = the same backbone + heads; ``flops``:
total = the deployed multi-task forward (shared prefixes computed once), per_task = each
task's path alone, hard_sharing = the same for every block executed.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mtlbench.core.data import MTLData
from mtlbench.core.procedure import Procedure, ProcedureResult, RunContext
from mtlbench.core.registry import PROCEDURES
from mtlbench.engine.trainer import FitResult, TrainingError

from mtlbench.methods.adashare.arch import SKIP, AdaShare
from mtlbench.methods.adashare.outputs import costs, draw_heatmap

DIRECTIONS = ("paper", "reference")
RETRAIN_POLICIES = ("argmax", "sample")
SCORES = ("metrics", "loss")


def sparsity_loss(logits: torch.Tensor, start: int) -> torch.Tensor:
    """Σ_t mean_{l >= start} −log softmax(logits[t, l])[skip]."""
    return -F.log_softmax(logits[:, start:], dim=-1)[..., SKIP].mean(dim=1).sum()


def sharing_weights(num_blocks: int, direction: str = "paper") -> torch.Tensor:
    l = torch.arange(num_blocks, dtype=torch.float32)
    return (num_blocks - l) / num_blocks if direction == "paper" else (l + 1) / num_blocks


def sharing_loss(logits: torch.Tensor, start: int, weights: torch.Tensor) -> torch.Tensor:
    """Σ_{i<j} Σ_{l >= start} w_l |z_i,l − z_j,l| with z the execute log-odds."""
    z = logits[..., 0] - logits[..., 1]
    T = z.shape[0]
    if T < 2:
        return z.sum() * 0.0
    i, j = torch.triu_indices(T, T, offset=1)
    diff = (z[i, start:] - z[j, start:]).abs()
    return (diff * weights[start:].to(z)).sum()


def relative_score(val: dict, val_loss: dict, ref: dict, ref_loss: dict, tasks, use: str = "metrics") -> float:
    """Mean over tasks of the signed relative change vs ``ref`` (positive = better)."""
    terms = []
    for t in tasks:
        hib, per = t.higher_is_better, []
        if use == "metrics":
            for m, v in val.get(t.name, {}).items():
                r = ref.get(t.name, {}).get(m)
                if r is not None and math.isfinite(r) and math.isfinite(v) and r != 0:
                    per.append((1 if hib.get(m, True) else -1) * (v - r) / abs(r))
        if not per:
            v, r = val_loss.get(t.name, math.nan), ref_loss.get(t.name, math.nan)
            per = [-(v - r) / abs(r)] if math.isfinite(v) and math.isfinite(r) and r != 0 else []
        if per:
            terms.append(sum(per) / len(per))
    return sum(terms) / len(terms) if terms else -math.inf


def _fraction(name, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = -1.0
    if not v >= 0:
        raise ValueError(f"procedure.{name} must be a fraction of trainer.epochs >= 0 (got {value!r})")
    return v


@PROCEDURES.register("adashare")
class AdaShareProcedure(Procedure):
    def __init__(self, warmup: float = 0.2, search: float = 0.8, retrain: float = 1.0,
                 policy_fraction: float = 0.5, weight_steps: Optional[int] = None,
                 policy_steps: Optional[int] = None, curriculum: bool = True, curriculum_speed: int = 1,
                 sparsity_weight: float = 0.003, sharing_weight: float = 0.01, sharing_direction: str = "paper",
                 init_temperature: float = 5.0, temperature_decay: float = 0.965, policy_lr: float = 0.05,
                 policy_weight_decay: float = 5e-4, search_optimizer: Optional[dict] = None,
                 selection_score: str = "metrics", retrain_policy: str = "argmax", retrain_samples: int = 1,
                 heatmap: bool = True):
        self.warmup, self.search = _fraction("warmup", warmup), _fraction("search", search)
        self.retrain = _fraction("retrain", retrain)
        if self.search <= 0 or self.retrain <= 0:
            raise ValueError("procedure.search and procedure.retrain must be > 0 (fractions of trainer.epochs)")
        if not 0 < float(policy_fraction) < 1:
            raise ValueError(f"procedure.policy_fraction must lie in (0, 1) (got {policy_fraction!r})")
        for key, val in (("weight_steps", weight_steps), ("policy_steps", policy_steps)):
            if val is not None and (int(val) != val or val < 1):
                raise ValueError(f"procedure.{key} must be a positive integer or null (got {val!r})")
        if int(curriculum_speed) < 1:
            raise ValueError(f"procedure.curriculum_speed must be >= 1 (got {curriculum_speed!r})")
        if sharing_direction not in DIRECTIONS:
            raise ValueError(f"procedure.sharing_direction must be one of {', '.join(DIRECTIONS)} "
                             f"(got {sharing_direction!r})")
        if retrain_policy not in RETRAIN_POLICIES:
            raise ValueError(f"procedure.retrain_policy must be one of {', '.join(RETRAIN_POLICIES)} "
                             f"(got {retrain_policy!r})")
        if selection_score not in SCORES:
            raise ValueError(f"procedure.selection_score must be one of {', '.join(SCORES)} (got {selection_score!r})")
        if int(retrain_samples) < 1:
            raise ValueError(f"procedure.retrain_samples must be >= 1 (got {retrain_samples!r})")
        if not (float(init_temperature) > 0 and 0 < float(temperature_decay) <= 1):
            raise ValueError("procedure.init_temperature must be > 0 and temperature_decay in (0, 1]")
        self.policy_fraction, self.weight_steps, self.policy_steps = float(policy_fraction), weight_steps, policy_steps
        self.curriculum, self.curriculum_speed = bool(curriculum), int(curriculum_speed)
        self.sparsity_weight, self.sharing_weight = float(sparsity_weight), float(sharing_weight)
        self.sharing_direction = sharing_direction
        self.init_temperature, self.temperature_decay = float(init_temperature), float(temperature_decay)
        self.policy_lr, self.policy_weight_decay = float(policy_lr), float(policy_weight_decay)
        self.search_optimizer, self.selection_score = search_optimizer, selection_score
        self.retrain_policy, self.retrain_samples = retrain_policy, int(retrain_samples)
        self.heatmap = bool(heatmap)

    # ------------------------------------------------------------------ run
    def __call__(self, ctx: RunContext) -> ProcedureResult:
        t_start = time.perf_counter()
        data, tasks = ctx.data, ctx.data.tasks
        trainer = ctx.make_trainer()
        E = trainer.epochs
        n_warm = max(1, round(self.warmup * E)) if self.warmup > 0 else 0
        n_cycles, n_retrain = max(1, round(self.search * E)), max(1, round(self.retrain * E))
        model = ctx.build_model(tasks)
        if not isinstance(model, AdaShare):
            raise ValueError(f"procedure adashare needs arch=adashare (got arch={ctx.cfg['arch']['name']})")
        init_state = copy.deepcopy(model.state_dict())
        balancer = ctx.build_balancer(data.task_names)
        val_only = MTLData(data.name, tasks, data.input_shape,
                           {"train": data.splits["train"], "val": data.splits["val"], "test": data.splits["val"]},
                           dict(data.info))
        phases: List[dict] = []

        # 1. warm-up (hard sharing)
        t0 = time.perf_counter()
        model.set_mode("shared")
        if n_warm:
            wfit = ctx.make_trainer(epochs=n_warm).fit(model, balancer, val_only, seed=ctx.seed,
                                                       on_epoch=self._logger(ctx, "warmup"))
            ref, ref_loss = wfit.val, wfit.val_losses
        else:
            model.to(trainer.device)
            ref, ref_loss = trainer.evaluate(model, data.splits["val"], tasks)
        phases.append({"phase": "warmup", "epochs": n_warm, "wall_time_s": round(time.perf_counter() - t0, 3)})

        # 2. search + selection on val
        t0 = time.perf_counter()
        search = self._search(ctx, trainer, model, balancer, n_cycles, ref, ref_loss)
        phases.append({"phase": "search", "cycles": n_cycles, "wall_time_s": round(time.perf_counter() - t0, 3),
                       **search.pop("phase_info")})
        trained_params = sum(p.numel() for p in model.parameters())

        # 3. retrain from the initial weights with fixed policies, best on val
        t0 = time.perf_counter()
        model.policy_logits.data.copy_(search["logits"])
        model.num_train_blocks = search["num_train_blocks"]
        gen = torch.Generator().manual_seed(int(ctx.seed))
        if self.retrain_policy == "argmax":
            candidates = [model.argmax_policy()]
        else:
            candidates = [model.sample_policy(gen) for _ in range(self.retrain_samples)]
        best, retrained = None, []
        for i, policy in enumerate(candidates):
            m = ctx.build_model(tasks)
            m.load_state_dict(init_state)
            m.set_policy(policy)
            b = ctx.build_balancer(data.task_names)
            fit = ctx.make_trainer(epochs=n_retrain).fit(m, b, val_only, seed=ctx.seed,
                                                         on_epoch=self._logger(ctx, "retrain", candidate=i))
            score = relative_score(fit.val, fit.val_losses, ref, ref_loss, tasks, self.selection_score)
            retrained.append({"candidate": i, "policy": policy.int().tolist(), "val_score": score})
            if best is None or score > best[0]:
                best = (score, i, m, fit)
        phases.append({"phase": "retrain", "epochs": n_retrain, "candidates": len(candidates),
                       "wall_time_s": round(time.perf_counter() - t0, 3)})

        # 4. test: the only read of the test split
        t0 = time.perf_counter()
        _, chosen, final, rfit = best
        test, test_losses = trainer.evaluate(final, data.splits["test"], tasks)
        phases.append({"phase": "test", "wall_time_s": round(time.perf_counter() - t0, 3)})
        total_time = time.perf_counter() - t_start
        fit = FitResult(rfit.history, rfit.selected_epoch, rfit.val, rfit.val_losses, test, test_losses,
                        wall_time_s=total_time)

        params, flops = costs(final, data.input_shape, trained_params)
        policy = final.policy.int().tolist()
        info = {
            "policy": {"tasks": data.task_names, "num_blocks": final.num_blocks, "execute": policy,
                       "execute_prob": [[round(v, 4) for v in row] for row in search["probs"]]},
            "blocks_executed_by_all": int(final.policy.all(dim=0).sum()),
            "blocks_skipped_by_all": int((~final.policy).all(dim=0).sum()),
            "selection": {"split": "val", "score": self.selection_score, "cycle": search["cycle"],
                          "val_score": search["score"], "evaluated": search["evaluated"]},
            "retrain": {"policy": self.retrain_policy, "candidates": retrained, "selected": chosen},
            "sharing_direction": self.sharing_direction, "phases": phases,
            "cost": {"wall_time_s": round(total_time, 3),
                     "epochs": n_warm + n_cycles + n_retrain * len(candidates),
                     "epochs_by_phase": {"warmup": n_warm, "search_cycles": n_cycles,
                                         "retrain": n_retrain * len(candidates)}},
            "heatmap": None,
        }
        if self.heatmap and ctx.folder is not None:
            info["heatmap"] = draw_heatmap(ctx.folder / "policy.png", data.task_names, search["probs"], policy)
        return ProcedureResult(fit=fit, model=final, info=info, params=params, flops=flops)

    @staticmethod
    def _logger(ctx: RunContext, phase: str, **extra):
        return lambda row: ctx.log_epoch({"phase": phase, **extra, **row})

    # ------------------------------------------------------------------ search
    def _split_train(self, train, seed: int):
        n = len(train)
        n_policy = int(round(n * self.policy_fraction))
        if n_policy < 1 or n - n_policy < 1:
            raise ValueError(f"adashare: the train split ({n} samples) is too small to split into weight and "
                             f"policy parts (policy_fraction={self.policy_fraction}); raise dataset.limit")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        return train.subset(perm[n_policy:]), train.subset(perm[:n_policy])

    def _batches(self, trainer, split, gen, steps: Optional[int]):
        it = split.batches(trainer.batch_size, shuffle=True, generator=gen, drop_last=True)
        cap = min(steps or math.inf, trainer.max_steps)
        return itertools.islice(it, int(cap)) if math.isfinite(cap) else it

    def _search(self, ctx, trainer, model: AdaShare, balancer, n_cycles: int, ref, ref_loss) -> dict:
        data, tasks = ctx.data, ctx.data.tasks
        device = trainer.device
        model.to(device)
        balancer.to(device)
        weight_part, policy_part = self._split_train(data.splits["train"], ctx.seed)
        gen = torch.Generator().manual_seed(int(ctx.seed) + 1)
        L = model.num_blocks
        sw = sharing_weights(L, self.sharing_direction).to(device)
        logits = model.policy_logits
        weights = [p for p in list(model.parameters()) + list(balancer.parameters()) if p is not logits]

        def trainable(w: bool):
            for p in weights:
                p.requires_grad_(w)
            logits.requires_grad_(not w)

        trainable(True)
        if self.search_optimizer:
            opt_w = instantiate(self.search_optimizer)([p for p in weights if p.requires_grad])
        else:
            opt_w = trainer.make_optimizer(model, balancer)
        opt_p = torch.optim.Adam([logits], lr=self.policy_lr, weight_decay=self.policy_weight_decay)
        model.set_mode("search")
        tau, best, evaluated = self.init_temperature, None, []
        first_eligible = L * self.curriculum_speed + 1
        try:
            for c in range(1, n_cycles + 1):
                te = time.perf_counter()
                k = min(L, (c - 1) // self.curriculum_speed + 1) if self.curriculum else L
                model.num_train_blocks, model.temperature = k, tau
                trainable(True)
                model.set_mode("search")
                tl = trainer.train_epoch(model, balancer, opt_w,
                                         self._batches(trainer, weight_part, gen, self.weight_steps), tasks)
                train_loss = dict(zip(data.task_names, tl.tolist()))
                bad = [t for t, v in train_loss.items() if not math.isfinite(v)]
                if bad:
                    raise TrainingError(f"non-finite training loss for task(s) {bad} in search cycle {c}; "
                                        f"lower trainer.optimizer.lr or set trainer.grad_clip")
                row = {"phase": "search", "epoch": c, "cycle": c, "curriculum_blocks": k,
                       "temperature": tau, "train_loss": train_loss, "val": {}}
                if c >= first_eligible or c == n_cycles:
                    policy = model.argmax_policy()
                    model.set_policy(policy)
                    val, val_loss = trainer.evaluate(model, data.splits["val"], tasks)
                    score = relative_score(val, val_loss, ref, ref_loss, tasks, self.selection_score)
                    row.update(val=val, val_loss=val_loss, val_score=score, policy=policy.int().tolist())
                    evaluated.append({"cycle": c, "val_score": score})
                    if best is None or score > best["score"]:
                        best = {"score": score, "cycle": c, "logits": logits.detach().clone(),
                                "num_train_blocks": k, "probs": model.execute_probs().tolist()}
                    model.set_mode("search")
                trainable(False)
                row["policy_loss"] = self.policy_pass(trainer, model, balancer, opt_p,
                                                       self._batches(trainer, policy_part, gen, self.policy_steps),
                                                       tasks, sw)
                row["execute_prob"] = [[round(v, 4) for v in r] for r in model.execute_probs().tolist()]
                row["epoch_time_s"] = round(time.perf_counter() - te, 4)
                tau *= self.temperature_decay
                ctx.log_epoch(row)
        finally:
            for p in weights:
                p.requires_grad_(True)
            logits.requires_grad_(True)
        best["evaluated"] = evaluated
        best["phase_info"] = {"final_temperature": tau, "first_selection_cycle": min(first_eligible, n_cycles),
                              "weight_samples": len(weight_part), "policy_samples": len(policy_part)}
        return best

    def policy_pass(self, trainer, model: AdaShare, balancer, opt, batches, tasks, sw) -> Dict[str, float]:
        model.train()
        logits = model.policy_logits
        start = model.frozen_blocks()
        lam = balancer.weights() or {}
        lam_t = torch.tensor([float(lam.get(t.name, 1.0)) for t in tasks], device=trainer.device)
        total, steps = None, 0
        for batch in batches:
            batch = batch.to(trainer.device)
            preds = model(batch.x)
            masks = batch.masks
            losses = torch.stack([t.loss(preds[t.name], batch.targets[t.name],
                                         None if masks is None else masks[t.name]) for t in tasks])
            task_loss = (losses * lam_t).sum()
            sp, sh = sparsity_loss(logits, start), sharing_loss(logits, start, sw)
            loss = task_loss + self.sparsity_weight * sp + self.sharing_weight * sh
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if start:  # the curriculum: blocks before it keep their logits exactly
                logits.grad[:, :start] = 0
                kept = logits.detach()[:, :start].clone()
                opt.step()
                with torch.no_grad():
                    logits[:, :start] = kept
            else:
                opt.step()
            parts = torch.stack([task_loss, sp, sh]).detach()
            total = parts if total is None else total + parts
            steps += 1
        if total is None:
            raise TrainingError("adashare: the policy part of the train split yielded no batch; "
                                "check dataset.limit and trainer.batch_size")
        return dict(zip(("task", "sparsity", "sharing"), (total / steps).tolist()))
