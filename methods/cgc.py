"""CGC: Customized Gate Control (Tang, Liu, Zhao & Gong, "Progressive Layered Extraction
(PLE): A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
Sec. 4.2). Reference: LibMTL ``LibMTL/architecture/CGC.py`` (the authors released no code).

Shared experts plus ``task_experts`` experts per task; task k's output is

    g^k(x) = w^k(x)ᵀ S^k(x),   w^k(x) = softmax(W^k x),   S^k(x) = [E_(k,1..m_k), E_(s,1..m_s)]

(the paper's Eq. 2-3), i.e. a softmax gate per task over the shared experts and its own,
feeding task k's tower (its head). One extraction layer of PLE without the shared gate
(``methods/ple.py`` with ``layers: 1`` computes exactly this). Experts, trunk and gate inputs
(``expert_blocks``, ``expert_hidden``, ``gate_pool``): see ``methods/_moe.py``.

Defaults: ``shared_experts`` 2, ``task_experts`` 1 (CPU-sized; the paper tunes them, LibMTL
has no default). Deviations: gates have a bias (LibMTL); with a trunk they read its output.

Parameters: ``shared_parameters()`` = trunk + shared experts; ``task_parameters(t)`` adds t's
experts, gate and head. ``parameter_groups()``: ``trunk``, ``experts`` (shared),
``experts:<task>``, ``gates``, ``head:<task>``.
"""
from __future__ import annotations

from typing import Sequence

from mtlbench.core.model import MTLModel
from mtlbench.core.registry import ARCHS
from mtlbench.methods._moe import ExpertFactory, ExtractionLayer, GateStats, params, positive


def expert_counts(shared_experts, task_experts, arch: str):
    n_s = positive(shared_experts, "shared_experts", arch, minimum=0)
    n_t = positive(task_experts, "task_experts", arch, minimum=0)
    if n_s + n_t < 1:
        raise ValueError(f"{arch}: a task gate needs at least one expert (shared_experts + task_experts >= 1)")
    return n_s, n_t


@ARCHS.register("cgc")
class CGC(MTLModel):
    def __init__(self, backbone_fn, tasks, shared_experts: int = 2, task_experts: int = 1, expert_blocks=1,
                 expert_hidden=None, gate_pool: int = 1):
        super().__init__(tasks)
        n_s, n_t = expert_counts(shared_experts, task_experts, "cgc")
        f = ExpertFactory(backbone_fn, "cgc", expert_blocks, expert_hidden, 1, gate_pool)
        self.trunk = f.trunk
        self.layer = ExtractionLayer(f, 0, self.task_names, n_s, n_t, shared_gate=False)
        self.heads = f.heads(tasks)
        self.gate_stats = GateStats({t: self.layer.expert_names(t) for t in self.task_names})

    def forward_tasks(self, x, tasks: Sequence[str]):
        h, state = self.trunk(x)
        record = self.gate_stats.add if self.training else None
        _, out = self.layer(h, {t: h for t in tasks}, state, tasks, record)
        return {t: self.heads[t](out[t]) for t in tasks}

    def epoch_stats(self):
        return self.gate_stats.pop()

    def shared_parameters(self):
        return params(self.trunk, self.layer.shared)

    def task_parameters(self, task):
        return self.shared_parameters() + params(self.layer.own[task], self.layer.gates[task], self.heads[task])

    def last_shared_parameters(self):
        return params(self.layer.shared) or super().last_shared_parameters()

    def parameter_groups(self):
        groups = {"trunk": params(self.trunk), "experts": params(self.layer.shared),
                  **{f"experts:{t}": params(e) for t, e in self.layer.own.items()},
                  "gates": params(self.layer.gates), **{f"head:{t}": params(h) for t, h in self.heads.items()}}
        return {k: v for k, v in groups.items() if v}
