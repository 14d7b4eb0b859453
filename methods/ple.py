"""PLE: Progressive Layered Extraction (Tang, Liu, Zhao & Gong, "Progressive Layered Extraction
(PLE): A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
Sec. 4.3). Reference: LibMTL ``LibMTL/architecture/PLE.py`` (the authors released no code).

``layers`` stacked extraction layers (``methods/_moe.py`` ``ExtractionLayer``). In layer j,
task k's experts read task k's output of layer j−1 and its gate mixes [shared experts, its
own experts] (the paper's Eq. 4-5: g^(k,j)(x) = w^(k,j)(g^(k,j−1)(x)) S^(k,j)(x)); the shared
experts read the shared output of layer j−1, and every layer but the last has a shared gate
over ALL the layer's experts (shared and every task's) reading the shared input, whose
mixture is the next layer's shared input. Layer 1 reads the trunk output (or the input).
The last layer's task outputs feed the towers (heads). ``layers: 1`` is CGC exactly
(``methods/cgc.py``; a test loads CGC's weights into PLE and compares outputs).

Experts per layer: with block experts (``expert_hidden: null``) the ``expert_blocks`` last
blocks are split into ``layers`` consecutive groups (the first ones larger), layer j's
experts being copies of group j (LibMTL's PLE: one ResNet stage per layer); with MLP experts
every layer's experts are ``expert_hidden`` MLPs. See ``methods/_moe.py``.

Defaults: ``layers`` 2, ``shared_experts`` 2, ``task_experts`` 1, ``expert_blocks`` 2
(CPU-sized; the paper tunes them). Deviations: LibMTL's PLE has no shared gate (its shared
experts run once per task on that task's input); this follows the paper's shared gate.
Gates have a bias (LibMTL).

Parameters: a task's loss reaches, through the shared gates, every expert of the layers
before the last, so those are shared: ``shared_parameters()`` = trunk + every layer's shared
experts + the task experts and shared gates of layers 1..J−1; ``task_parameters(t)`` adds t's
gates (every layer), t's last-layer experts and its head. ``parameter_groups()``: ``trunk``,
``experts`` (shared experts of all layers), ``experts:<task>`` (all layers), ``gates`` (task
and shared gates), ``head:<task>``. Gate statistics are logged per layer (``L<j>/<task>``,
``L<j>/shared``).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from mtlbench.core.model import MTLModel
from mtlbench.core.registry import ARCHS
from mtlbench.methods._moe import ExpertFactory, ExtractionLayer, GateStats, params, positive
from mtlbench.methods.cgc import expert_counts


@ARCHS.register("ple")
class PLE(MTLModel):
    def __init__(self, backbone_fn, tasks, layers: int = 2, shared_experts: int = 2, task_experts: int = 1,
                 expert_blocks=2, expert_hidden=None, gate_pool: int = 1):
        super().__init__(tasks)
        J = positive(layers, "layers", "ple")
        n_s, n_t = expert_counts(shared_experts, task_experts, "ple")
        f = ExpertFactory(backbone_fn, "ple", expert_blocks, expert_hidden, J, gate_pool)
        self.trunk = f.trunk
        self.layers = nn.ModuleList(ExtractionLayer(f, j, self.task_names, n_s, n_t, shared_gate=j < J - 1)
                                    for j in range(J))
        self.heads = f.heads(tasks)
        gates = {}
        for j, layer in enumerate(self.layers):
            names = self.task_names + (["shared"] if layer.shared_gate is not None else [])
            gates.update({f"L{j + 1}/{g}": layer.expert_names(g) for g in names})
        self.gate_stats = GateStats(gates)

    def forward_tasks(self, x, tasks: Sequence[str]):
        h, state = self.trunk(x)
        shared, per_task = h, {t: h for t in self.task_names}
        for j, layer in enumerate(self.layers):
            last = j == len(self.layers) - 1
            record = None
            if self.training:
                record = (lambda g, w, j=j: self.gate_stats.add(f"L{j + 1}/{g}", w))
            shared, out = layer(shared, per_task, state, tasks if last else self.task_names, record)
            per_task = out
        return {t: self.heads[t](per_task[t]) for t in tasks}

    def epoch_stats(self):
        return self.gate_stats.pop()

    def shared_parameters(self):
        inner = self.layers[:-1]
        return params(self.trunk, *(l.shared for l in self.layers), *(l.own for l in inner),
                      *(l.shared_gate for l in inner))

    def task_parameters(self, task):
        last = self.layers[-1]
        return self.shared_parameters() + params(*(l.gates[task] for l in self.layers), last.own[task],
                                                 self.heads[task])

    def last_shared_parameters(self):
        return params(self.layers[-1].shared) or super().last_shared_parameters()

    def parameter_groups(self):
        groups = {"trunk": params(self.trunk), "experts": params(*(l.shared for l in self.layers)),
                  **{f"experts:{t}": params(*(l.own[t] for l in self.layers)) for t in self.task_names},
                  "gates": params(*(l.gates for l in self.layers), *(l.shared_gate for l in self.layers)),
                  **{f"head:{t}": params(h) for t, h in self.heads.items()}}
        return {k: v for k, v in groups.items() if v}
