"""MMoE: Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).
Reference: LibMTL ``LibMTL/architecture/MMoE.py`` (the authors released no code).

n shared experts f_1..f_n and one softmax gate per task over the same features:

    f^k(x) = Σ_i g^k(x)_i f_i(x),   g^k(x) = softmax(W_gk x),   y_k = h^k(f^k(x))

(the paper's Eq. 6-8; h^k = task k's tower = its head). Experts and what they read
(``expert_blocks``, ``expert_hidden``, ``gate_pool``): see ``methods/_moe.py``. Default
``expert_blocks: 1``: the experts are copies of the backbone's last block on the shared
trunk (stem + earlier blocks), their gates read the trunk output; ``expert_blocks: all`` is
LibMTL's form (full backbone copies on the input, gates on the flattened input) and, with
``expert_hidden: [units]``, the paper's (one-layer experts on x).

Defaults: ``num_experts`` 4 (the paper uses 8 on Census-Income, set by the
``conf/overlay/mmoe/census_income.yaml`` protocol; LibMTL has no default). Gate weights
are softmax rows: non-negative, summing to 1 per sample.

Deviations: the gate has a bias (LibMTL's ``nn.Linear``; the paper writes W x); with the
default trunk the experts are copies of the last block(s) and the gates read the trunk's
output (the experts' input) instead of the raw input: LibMTL has no trunk.

Parameters: ``shared_parameters()`` = trunk + experts; ``task_parameters(t)`` adds t's gate
and head. ``parameter_groups()``: ``trunk``, ``experts``, ``gates``, ``head:<task>``. No
shared representation is exposed (the gates read the trunk, so no single tensor carries
every shared gradient): representation-based balancers use the shared parameters.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mtlbench.core.model import MTLModel
from mtlbench.core.registry import ARCHS
from mtlbench.methods._moe import ExpertFactory, GateStats, mix, params, positive


@ARCHS.register("mmoe")
class MMoE(MTLModel):
    def __init__(self, backbone_fn, tasks, num_experts: int = 4, expert_blocks=1, expert_hidden=None,
                 gate_pool: int = 1):
        super().__init__(tasks)
        n = positive(num_experts, "num_experts", "mmoe")
        f = ExpertFactory(backbone_fn, "mmoe", expert_blocks, expert_hidden, 1, gate_pool)
        self.assemble(f, n, tasks, {t: f.gate(0, n) for t in self.task_names})

    def assemble(self, f: ExpertFactory, n: int, tasks, gates: dict) -> None:
        """Trunk, n experts, one gate per task (``gates``), heads; shared by DSelect-k."""
        self.trunk = f.trunk
        self.experts = nn.ModuleList(f.make() for _ in range(n))
        self.gates = nn.ModuleDict(gates)
        self.heads = f.heads(tasks)
        self.gate_stats = GateStats({t: [f"e{i}" for i in range(n)] for t in self.task_names})

    def forward_tasks(self, x, tasks: Sequence[str]):
        h, state = self.trunk(x)
        outs = torch.stack([e(h, state) for e in self.experts])
        preds = {}
        for t in tasks:
            g = self.gates[t](h)
            if self.training:
                self.gate_stats.add(t, g)
            preds[t] = self.heads[t](mix(outs, g))
        return preds

    def epoch_stats(self):
        return self.gate_stats.pop()

    def shared_parameters(self):
        return params(self.trunk, self.experts)

    def task_parameters(self, task):
        return self.shared_parameters() + params(self.gates[task], self.heads[task])

    def last_shared_parameters(self):
        return params(self.experts)

    def parameter_groups(self):
        groups = {"trunk": params(self.trunk), "experts": params(self.experts), "gates": params(self.gates),
                  **{f"head:{t}": params(h) for t, h in self.heads.items()}}
        return {k: v for k, v in groups.items() if v}
