"""The deployed solution of a task grouping: several networks, each serving the tasks the
selection assigned to it (Standley et al.'s chosen networks; TAG's groups)."""
from __future__ import annotations

from typing import Dict

from torch import nn

from mtlbench.core.model import MTLModel


class GroupedNetworks(MTLModel):
    """Task t is predicted by the network ``assignment[t]``; one forward pass per network
    serves all of its requested tasks."""

    def __init__(self, tasks, networks: Dict[str, MTLModel], assignment: Dict[str, str]):
        super().__init__(tasks)
        self.keys = {name: f"net{i}" for i, name in enumerate(networks)}  # module-safe names
        self.nets = nn.ModuleDict({self.keys[name]: m for name, m in networks.items()})
        self.assignment = {t: assignment[t] for t in self.task_names}

    def network_of(self, task: str) -> MTLModel:
        return self.nets[self.keys[self.assignment[task]]]

    def forward_tasks(self, x, tasks):
        out = {}
        for name in dict.fromkeys(self.assignment[t] for t in tasks):
            mine = [t for t in tasks if self.assignment[t] == name]
            out.update(self.nets[self.keys[name]].forward_tasks(x, mine))
        return {t: out[t] for t in tasks}

    def shared_parameters(self):
        return []

    def task_parameters(self, task):
        return self.network_of(task).task_parameters(task)

    def last_shared_parameters(self):
        return []

    def parameter_groups(self):
        return {f"network:{name}": list(self.nets[key].parameters()) for name, key in self.keys.items()}
