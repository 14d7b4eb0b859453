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
   cross-entropy towards "skip"); sharing (``sharing_form``, see ``search.py``):
   ``reference`` = the reference code's Σ_{i<j} Σ_l (l+1)/L |x_i,l − x_j,l| over all blocks
   with x the execute logit (the paper overlays use it), or ``log_odds`` (the default here)
   = Σ_{i<j} Σ_l w_l |z_i,l − z_j,l| over the curriculum blocks with z the execute log-odds
   and ``sharing_direction: paper`` w_l = (L − l) / L (l = 0..L−1: lower blocks weigh more, as
   the paper's text states) or ``reference`` w_l = (l + 1) / L. The two forms are different
   regularisers (not equal under equal initialisation). run.json ``procedure_info.sharing``
   records the form used.
3. **selection (validation only)**: after the weight pass of every cycle c > L ·
   curriculum_speed (once every block has had ``curriculum_speed`` policy passes, as the
   reference) and of the last cycle, the policy is evaluated on the val split with the
   current weights (``search_eval_policy: argmax``: the argmax policy; ``sample``: as the
   reference, a policy drawn from the execute probabilities for each val batch); the score is the mean over tasks of the mean over metrics of the signed
   relative change vs the warm-up model's val metrics (per task the val loss instead when no
   metric gives a relative change, or always with ``selection_score: loss``). The logits of
   the best cycle are kept. The reference selects on its test split; this never does.
4. **retrain**: from the same initial weights as the warm-up (the reference reloads its
   initial state), a fixed policy: ``retrain_policy: argmax`` or ``sample`` (drawn from the
   selected execute probabilities, seeded; ``retrain_samples`` of them, each retrained, the
   best on val kept: the reference's ``re-train.py`` retrains 8), ``Trainer.fit`` for
   ``retrain`` epochs.
5. **test**: the selected retrained model is evaluated on the test split: the only time the
   test split is read (``Trainer.fit`` runs with the val split as its test split).

Every phase logs to metrics.jsonl with a ``phase`` key (warmup / search / retrain) and is
recorded in ``procedure_info`` (policy, execute probabilities, selection, per-phase wall
time and epochs, total cost); ``policy.png`` (tasks x blocks heatmap) lands in the run
folder. ``params``: total = deployed (stem + blocks executed by >= 1 task + shortcut
projections of blocks skipped by a task + heads), trained = everything allocated (with the
logits), per_task = each task's path, hard_sharing = the same backbone + heads; ``flops``:
total = the deployed multi-task forward (shared prefixes computed once), per_task = each
task's path alone, hard_sharing = the same for every block executed; ``flops.paper`` = the
AdaShare paper's figure (see ``outputs.paper_macs``): multiply-adds of the backbone only,
each task's path counted separately and summed, with hard sharing's beside it.
"""
from __future__ import annotations

import copy
import time
from typing import List, Optional

import torch

from mtlbench.core.data import MTLData
from mtlbench.core.procedure import FitResult, Procedure, ProcedureResult, RunContext
from mtlbench.core.registry import PROCEDURES

from mtlbench.methods.adashare.arch import AdaShare
from mtlbench.methods.adashare.outputs import costs, draw_heatmap
from mtlbench.methods.adashare.search import relative_score
from mtlbench.methods.adashare.search import search as run_search

DIRECTIONS = ("paper", "reference")
SHARING_FORMS = ("log_odds", "reference")
EVAL_POLICIES = ("argmax", "sample")
RETRAIN_POLICIES = ("argmax", "sample")
SCORES = ("metrics", "loss")


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
    # the search toggles which parameters train between the weight and the policy pass,
    # which DDP (its gradient hooks are fixed at wrapping) cannot follow
    distributed = False

    def __init__(self, warmup: float = 0.2, search: float = 0.8, retrain: float = 1.0,
                 policy_fraction: float = 0.5, weight_steps: Optional[int] = None,
                 policy_steps: Optional[int] = None, curriculum: bool = True, curriculum_speed: int = 1,
                 sparsity_weight: float = 0.003, sharing_weight: float = 0.01, sharing_direction: str = "paper",
                 init_temperature: float = 5.0, temperature_decay: float = 0.965, policy_lr: float = 0.05,
                 policy_weight_decay: float = 5e-4, search_optimizer: Optional[dict] = None,
                 selection_score: str = "metrics", retrain_policy: str = "argmax", retrain_samples: int = 1,
                 heatmap: bool = True, sharing_form: str = "log_odds", search_eval_policy: str = "argmax"):
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
        for key, val, allowed in (("sharing_form", sharing_form, SHARING_FORMS),
                                  ("search_eval_policy", search_eval_policy, EVAL_POLICIES)):
            if val not in allowed:
                raise ValueError(f"procedure.{key} must be one of {', '.join(allowed)} (got {val!r})")
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
        self.sharing_direction, self.sharing_form = sharing_direction, sharing_form
        self.search_eval_policy = search_eval_policy
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
        ctx.say(f"adashare: phase 1/4 warm-up ({n_warm} epochs)")
        model.set_mode("shared")
        if n_warm:
            wfit = ctx.make_trainer(epochs=n_warm).fit(model, balancer, val_only, seed=ctx.seed, slot="warmup",
                                                       on_epoch=self._logger(ctx, "warmup"))
            ref, ref_loss = wfit.val, wfit.val_losses
        else:
            model.to(trainer.device)
            ref, ref_loss = trainer.evaluate(model, data.splits["val"], tasks)
        phases.append({"phase": "warmup", "epochs": n_warm, "wall_time_s": round(time.perf_counter() - t0, 3)})

        # 2. search + selection on val
        t0 = time.perf_counter()
        ctx.say(f"adashare: phase 2/4 policy search ({n_cycles} cycles)")
        search = run_search(self, ctx, trainer, model, balancer, n_cycles, ref, ref_loss,
                            self._logger(ctx, "search"))
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
            ctx.say(f"adashare: phase 3/4 retrain, candidate {i + 1}/{len(candidates)} ({n_retrain} epochs)")
            m = ctx.build_model(tasks)
            m.load_state_dict(init_state)
            m.set_policy(policy)
            b = ctx.build_balancer(data.task_names)
            fit = ctx.make_trainer(epochs=n_retrain).fit(m, b, val_only, seed=ctx.seed, slot=f"retrain-{i}",
                                                         on_epoch=self._logger(ctx, "retrain", candidate=i))
            score = relative_score(fit.val, fit.val_losses, ref, ref_loss, tasks, self.selection_score)
            retrained.append({"candidate": i, "policy": policy.int().tolist(), "val_score": score})
            if best is None or score > best[0]:
                best = (score, i, m, fit)
        phases.append({"phase": "retrain", "epochs": n_retrain, "candidates": len(candidates),
                       "wall_time_s": round(time.perf_counter() - t0, 3)})

        # 4. test: the only read of the test split
        t0 = time.perf_counter()
        ctx.say("adashare: phase 4/4 test")
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
            "sharing_direction": self.sharing_direction, "sharing": self._sharing_info(),
            "search_eval_policy": self.search_eval_policy, "phases": phases,
            "cost": {"wall_time_s": round(total_time, 3),
                     "epochs": n_warm + n_cycles + n_retrain * len(candidates),
                     "epochs_by_phase": {"warmup": n_warm, "search_cycles": n_cycles,
                                         "retrain": n_retrain * len(candidates)}},
            "heatmap": None,
        }
        if self.heatmap and ctx.folder is not None:
            info["heatmap"] = draw_heatmap(ctx.folder / "policy.png", data.task_names, search["probs"], policy)
        return ProcedureResult(fit=fit, model=final, info=info, params=params, flops=flops)

    def _sharing_info(self) -> dict:
        if self.sharing_form == "reference":
            return {"form": "reference", "logit": "execute", "blocks": "all", "weights": "(l+1)/L",
                    "weight": self.sharing_weight}
        return {"form": "log_odds", "logit": "execute - skip", "blocks": "curriculum",
                "weights": "(L-l)/L" if self.sharing_direction == "paper" else "(l+1)/L", "weight": self.sharing_weight}

    @staticmethod
    def _logger(ctx: RunContext, phase: str, **extra):
        return lambda row: ctx.log_epoch({"phase": phase, **extra, **row})
