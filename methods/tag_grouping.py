"""Task grouping at scale from one run's lookahead affinity (``method=tag_grouping``).

The scalable path of Standley et al. (ICML 2020) with TAG affinities (Fifty et al.,
NeurIPS 2021) in place of trained pair networks:

1. one hard-sharing run over ALL tasks records the lookahead inter-task affinity Z
   (``mtlbench.grouping.affinity``, every ``every`` steps; ``lookahead: optimizer`` = the
   reference's: the training optimiser's own update on the current training batch, batch-norm
   in training mode, divided by the learning rate; ``sgd_probe`` = mtlbench's earlier fixed
   SGD step ``lookahead_lr`` on a probe batch in eval mode);
2. ``pair[i, j] = −Z_{j→i}`` -> ``mtlbench.grouping.tag``: candidates = every task subset for
   T <= ``exhaustive_max`` (12; the reference enumerates every subset), else every singleton
   plus the groups ``candidate_groups`` grows (``max_size``, ``n_candidates``); a lone task
   scores as the reference's −1e6 (``singleton: reference``) or 0 (``singleton: zero``, the
   earlier rule) -> ``select`` under ``budget`` networks (null: ceil(2T / max_size)), exact;
3. each chosen group is trained as its own hard-sharing network (the configured balancer
   and trainer; samples labelled for none of its tasks dropped), and every task is served
   by the network the selection assigns it to.

The run's metrics are those of the grouped solution, so ``report`` gives its Δ_T against
``method=stl`` runs of the same dataset and seeds. ``params`` = the chosen networks (what a
deployment needs); ``procedure_info`` holds Z, the candidates' count, the groups, the
assignment and the time of each phase.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from mtlbench.core.procedure import FitResult, Procedure, ProcedureResult
from mtlbench.core.registry import PROCEDURES
from mtlbench.grouping.affinity import LOOKAHEADS, default_budget, grouping_scores, labelled_subset, tag_affinity
from mtlbench.grouping.tag import EXHAUSTIVE_MAX, SINGLETON_RULES, tag_selection_inputs
from mtlbench.grouping.networks import GroupedNetworks


@PROCEDURES.register("tag_grouping")
class TagGrouping(Procedure):
    def __init__(self, every: int = 10, lookahead_lr: float = 0.01, probe_per_task: int = 16,
                 probe_size: int = 1024, max_size: int = 8, n_candidates=None, budget=None,
                 select_method: str = "auto", lookahead: str = "optimizer", singleton: str = "reference",
                 exhaustive_max: int = EXHAUSTIVE_MAX):
        for key, val, allowed in (("lookahead", lookahead, LOOKAHEADS), ("singleton", singleton, SINGLETON_RULES)):
            if val not in allowed:
                raise ValueError(f"procedure.{key} must be one of {', '.join(allowed)} (got {val!r})")
        for key, v, none in (("every", every, False), ("probe_per_task", probe_per_task, False),
                             ("probe_size", probe_size, False), ("max_size", max_size, False),
                             ("n_candidates", n_candidates, True), ("exhaustive_max", exhaustive_max, False)):
            if not (none and v is None) and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"procedure.{key} must be an integer >= 1{' or null' if none else ''} (got {v!r})")
        for key, v, none in (("lookahead_lr", lookahead_lr, False), ("budget", budget, True)):
            if not (none and v is None) and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and 0 < v < float("inf")):
                raise ValueError(f"procedure.{key} must be a finite number > 0{' or null' if none else ''} (got {v!r})")
        self.lookahead, self.singleton, self.exhaustive_max = lookahead, singleton, int(exhaustive_max)
        self.every, self.lr, self.per_task, self.probe_size = int(every), float(lookahead_lr), probe_per_task, probe_size
        self.max_size, self.budget, self.select_method = int(max_size), budget, select_method
        self.n_candidates = None if n_candidates is None else int(n_candidates)

    def __call__(self, ctx) -> ProcedureResult:
        from mtlbench.grouping.selection import select

        data, names, T = ctx.data, ctx.data.task_names, len(ctx.data.tasks)
        hs = {"name": "hard_sharing"}
        trainer = ctx.make_trainer()
        t0 = time.perf_counter()
        torch.manual_seed(ctx.seed)
        model = ctx.build_model(data.tasks, arch=hs)
        z = tag_affinity(model, ctx.build_balancer(names), data, trainer, ctx.seed, self.every, self.lr,
                         self.per_task, self.probe_size, on_epoch=ctx.log_epoch, lookahead=self.lookahead)
        t_aff = time.perf_counter() - t0
        _, pair = grouping_scores(z)
        table, groups = tag_selection_inputs(names, pair, self.max_size, self.n_candidates or 20 * T,
                                             self.singleton, self.exhaustive_max, ctx.seed)
        budget = default_budget(T, self.max_size) if self.budget is None else float(self.budget)
        if self.budget is None:  # the default budget is raised to the cheapest cover when needed
            from mtlbench.grouping.search import min_cover_cost

            need = float(min_cover_cost(table))
            if need > budget:
                ctx.say(f"tag_grouping: default budget {budget:g} cannot cover all {T} tasks with these "
                        f"candidates; using the cheapest cover, {need:g} (set procedure.budget to choose)")
                budget = need
        sel = select(table, budget, method=self.select_method)
        t_sel = time.perf_counter() - t0 - t_aff
        members = {net: [names[i] for i in g] for net, g in zip(table.networks, groups)}
        nets, rows = {}, {}
        for k, net in enumerate(sel.networks):
            tasks = members[net]
            ctx.say(f"tag_grouping: group {k + 1}/{len(sel.networks)} ({net})")
            sub = labelled_subset(data, tasks)
            torch.manual_seed(ctx.seed)
            m = ctx.build_model(sub.tasks, arch=hs)
            fit = ctx.make_trainer().fit(m, ctx.build_balancer(tasks), sub, seed=ctx.seed, slot=f"group-{k}",
                                         on_epoch=lambda r, net=net: ctx.log_epoch({**r, "phase": f"group {net}"}))
            nets[net], rows[net] = m, fit.history[-1]
        grouped = GroupedNetworks(data.tasks, nets, sel.assignment).to(trainer.device)
        val, val_loss = trainer.evaluate(grouped, data.splits["val"], data.tasks)
        test, test_loss = trainer.evaluate(grouped, data.splits["test"], data.tasks)
        last = {"epoch": trainer.epochs, "train_loss": {t: rows[sel.assignment[t]]["train_loss"][t] for t in names}}
        fit = FitResult([last], trainer.epochs, val, val_loss, test, test_loss, time.perf_counter() - t0)
        info = {"affinity": np.round(z, 6).tolist(), "n_candidates": len(groups), "budget": budget,
                "lookahead": self.lookahead, "singleton": self.singleton,
                "candidates": "exhaustive" if T <= self.exhaustive_max else "generated",
                "groups": {net: members[net] for net in sel.networks}, "assignment": sel.assignment,
                "selection": sel.to_dict(), "time_s": {"affinity": round(t_aff, 3), "select": round(t_sel, 3),
                                                      "groups": round(time.perf_counter() - t0 - t_aff - t_sel, 3)}}
        return ProcedureResult(fit=fit, model=grouped, info=info)
