"""Single-task learning (STL): one independent network per task (``arch=independent``).

All networks are trained in one run with the same backbone family, data order and
budget; since they share no parameter, each network's update depends on its own
task's loss only, exactly as if trained separately. ``params.total`` is their sum.
"""
from torch import nn

from mtlbench.core.model import MTLModel, make_heads
from mtlbench.core.registry import ARCHS


@ARCHS.register("independent")
class Independent(MTLModel):
    def __init__(self, backbone_fn, tasks):
        super().__init__(tasks)
        self.backbones = nn.ModuleDict({t.name: backbone_fn() for t in tasks})
        self.heads = nn.ModuleDict({t.name: make_heads(self.backbones[t.name], [t])[t.name] for t in tasks})

    def forward_tasks(self, x, tasks):
        return {t: self.heads[t](self.backbones[t](x)) for t in tasks}

    def shared_parameters(self):
        return []

    def task_parameters(self, task):
        return list(self.backbones[task].parameters()) + list(self.heads[task].parameters())

    def last_shared_parameters(self):
        return []

    def parameter_groups(self):
        return {**{f"backbone:{t}": list(b.parameters()) for t, b in self.backbones.items()},
                **{f"head:{t}": list(h.parameters()) for t, h in self.heads.items()}}
