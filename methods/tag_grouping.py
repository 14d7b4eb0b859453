"""Task grouping at scale from one run's lookahead affinity (``method=tag_grouping``).

The scalable path of Standley et al. (ICML 2020) with TAG affinities (Fifty et al.,
NeurIPS 2021) in place of trained pair networks:

1. one hard-sharing run over ALL tasks records the lookahead inter-task affinity Z
   (``mtlbench.grouping.affinity``, every ``every`` steps);
2. ``pair[i, j] = −Z_{j→i}``, ``single = 0`` -> ``mtlbench.grouping.selection.candidate_groups``
   (``max_size``, ``n_candidates``) plus every singleton -> ``hoa_table`` -> ``select`` under
   ``budget`` networks (null: ceil(2T / max_size));
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
from mtlbench.grouping.affinity import default_budget, grouping_scores, labelled_subset, tag_affinity, with_singletons
from mtlbench.grouping.networks import GroupedNetworks


@PROCEDURES.register("tag_grouping")
class TagGrouping(Procedure):
    def __init__(self, every: int = 10, lookahead_lr: float = 0.01, probe_per_task: int = 16,
                 probe_size: int = 1024, max_size: int = 8, n_candidates=None, budget=None,
                 select_method: str = "auto"):
        for key, v, none in (("every", every, False), ("probe_per_task", probe_per_task, False),
                             ("probe_size", probe_size, False), ("max_size", max_size, False),
                             ("n_candidates", n_candidates, True)):
            if not (none and v is None) and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"procedure.{key} must be an integer >= 1{' or null' if none else ''} (got {v!r})")
        for key, v, none in (("lookahead_lr", lookahead_lr, False), ("budget", budget, True)):
            if not (none and v is None) and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and 0 < v < float("inf")):
                raise ValueError(f"procedure.{key} must be a finite number > 0{' or null' if none else ''} (got {v!r})")
        self.every, self.lr, self.per_task, self.probe_size = int(every), float(lookahead_lr), probe_per_task, probe_size
        self.max_size, self.budget, self.select_method = int(max_size), budget, select_method
        self.n_candidates = None if n_candidates is None else int(n_candidates)

    def __call__(self, ctx) -> ProcedureResult:
        from mtlbench.grouping.selection import candidate_groups, hoa_table, select

        data, names, T = ctx.data, ctx.data.task_names, len(ctx.data.tasks)
        hs = {"name": "hard_sharing"}
        trainer = ctx.make_trainer()
        t0 = time.perf_counter()
        torch.manual_seed(ctx.seed)
        model = ctx.build_model(data.tasks, arch=hs)
        z = tag_affinity(model, ctx.build_balancer(names), data, trainer, ctx.seed, self.every, self.lr,
                         self.per_task, self.probe_size, on_epoch=ctx.log_epoch)
        t_aff = time.perf_counter() - t0
        single, pair = grouping_scores(z)
        groups = with_singletons(candidate_groups(pair, max_size=min(self.max_size, T),
                                                  n_candidates=self.n_candidates or 20 * T, seed=ctx.seed)
                                 if T > 1 else [], T)
        table = hoa_table(names, single, pair, groups)
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
                "groups": {net: members[net] for net in sel.networks}, "assignment": sel.assignment,
                "selection": sel.to_dict(), "time_s": {"affinity": round(t_aff, 3), "select": round(t_sel, 3),
                                                      "groups": round(time.perf_counter() - t0 - t_aff - t_sel, 3)}}
        return ProcedureResult(fit=fit, model=grouped, info=info)
