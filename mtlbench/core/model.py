"""The architecture interface: build a multi-task model from a backbone factory and tasks.

An architecture (registered in ``ARCHS``) is a class ``Arch(backbone_fn, tasks, **cfg)``
where ``backbone_fn()`` returns a fresh ``Backbone`` (architectures that need several
copies, e.g. one per task, call it several times).

What an architecture implements (``MTLModel``):

* ``forward_tasks(x, tasks) -> {task: prediction}`` for the tasks asked for, computing no
  more than they need; or ``forward_representation(x, tasks) -> (predictions,
  representation)`` when the architecture has a shared representation: a tensor every
  shared parameter reaches the predictions through, with only task-specific parameters
  after it (a cut of the graph: hard sharing's backbone output, AdaShare's in its shared
  warm-up). The gradient of a task loss w.r.t. the shared parameters then equals the
  back-propagation of its gradient w.r.t. the representation (a contract test checks it),
  which is what representation-based balancers (MGDA-UB, gradient surgery on z) rely on.
  Implement either; the other follows. ``model(x)`` gives all
  tasks' predictions; ``model(x, representation=True)`` the pair (the trainer asks for it
  only when the balancer declares ``needs_representation``). The representation is a
  return value, never a side effect of the forward pass.
* ``shared_parameters()``: parameters used by more than one task;
* ``task_parameters(task)``: every parameter needed to predict ``task`` (shared included);
* ``task_specific_parameters(task)``: the parameters only ``task`` uses (derived:
  ``task_parameters`` minus ``shared_parameters``; override when cheaper);
* ``last_shared_parameters()``: the last shared layer (GradNorm normalises its gradient
  norms there); derived from the module order when not overridden;
* ``parameter_groups() -> {part: [params]}``: the declared parts of the model (backbone,
  units, attention, heads...). The parts are disjoint and cover every parameter (a
  contract test checks it); ``count_params`` reports them under ``parts``.
* ``epoch_stats() -> Optional[dict]``: what the architecture wants logged once per training
  epoch (``Trainer.epoch_row`` writes it under ``arch`` in metrics.jsonl), e.g. the mean gate
  weight per expert and task over the epoch's training steps; it also resets whatever the
  model accumulated for it. Default None (nothing logged). Statistics gathered in the forward
  pass must stay on the device (no host sync per step) and only while ``self.training``.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mtlbench.core.tasks import Task

BackboneFn = Callable[[], nn.Module]
Predictions = Dict[str, torch.Tensor]


class MTLModel(nn.Module):
    """Architectures subclass this (see the module docstring for the contract)."""

    def __init__(self, tasks: Sequence[Task]):
        super().__init__()
        self.task_names: List[str] = [t.name for t in tasks]

    def forward(self, x, representation: bool = False):
        if representation:
            return self.forward_representation(x, self.task_names)
        return self.forward_tasks(x, self.task_names)

    def forward_tasks(self, x, tasks: Sequence[str]) -> Predictions:
        """Predictions for ``tasks`` only, computing no more than they need."""
        if type(self).forward_representation is MTLModel.forward_representation:
            raise NotImplementedError(f"{type(self).__name__} implements neither forward_tasks nor "
                                      f"forward_representation")
        return self.forward_representation(x, tasks)[0]

    def forward_representation(self, x, tasks: Sequence[str]) -> Tuple[Predictions, Optional[torch.Tensor]]:
        """(predictions, the shared representation or None)."""
        return self.forward_tasks(x, tasks), None

    # ------------------------------------------------------------------ parameters
    def shared_parameters(self) -> List[nn.Parameter]:
        """Parameters used by more than one task (what gradient balancers act on)."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        """Every parameter needed to predict ``task`` (shared ones included)."""
        raise NotImplementedError

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        """The parameters only ``task`` uses (``task_parameters`` without the shared ones)."""
        shared = {id(p) for p in self.shared_parameters()}
        return unique(p for p in self.task_parameters(task) if id(p) not in shared)

    def last_shared_parameters(self) -> List[nn.Parameter]:
        """The last shared layer: by default the direct parameters of the last module (in
        registration order) that holds shared parameters."""
        shared = {id(p) for p in self.shared_parameters()}
        last: List[nn.Parameter] = []
        for _, module in self.named_modules():
            own = [p for p in module.parameters(recurse=False) if id(p) in shared]
            if own:
                last = own
        return last

    def epoch_stats(self) -> Optional[dict]:
        """Statistics of the epoch's training forward passes to log under ``arch`` (JSON
        types), resetting them; None = nothing to log (the default)."""
        return None

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The model's declared parts, disjoint and covering every parameter. Default: one
        ``shared`` part, one ``task:<name>`` part per task, ``other`` for the rest."""
        groups: Dict[str, List[nn.Parameter]] = {"shared": unique(self.shared_parameters())}
        for t in self.task_names:
            groups[f"task:{t}"] = self.task_specific_parameters(t)
        seen = {id(p) for ps in groups.values() for p in ps}
        rest = [p for p in self.parameters() if id(p) not in seen]
        if rest:
            groups["other"] = rest
        return {k: v for k, v in groups.items() if v}


def unique(params: Iterable[nn.Parameter]) -> List[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def make_heads(backbone, tasks: Sequence[Task]) -> nn.ModuleDict:
    """One head per task on ``backbone``'s output (``backbone.head_options`` passed on,
    e.g. an ASPP head for dense tasks). A backbone that ships its own heads sets
    ``head_factory(task, in_channels) -> nn.Module`` (SegNet's ``head=mtan``)."""
    factory = getattr(backbone, "head_factory", None)
    if factory is not None:
        return nn.ModuleDict({t.name: factory(t, backbone.out_channels) for t in tasks})
    opts = getattr(backbone, "head_options", None) or {}
    return nn.ModuleDict({t.name: t.make_head(backbone.out_channels, **opts) for t in tasks})


def count(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in unique(params))


def count_params(model: MTLModel) -> dict:
    """``total``: parameters a deployment serving all tasks needs; ``per_task``: for one task;
    ``parts``: the architecture's declared parts (``parameter_groups``)."""
    return {"total": count(model.parameters()),
            "per_task": {t: count(model.task_parameters(t)) for t in model.task_names},
            "parts": {k: count(v) for k, v in model.parameter_groups().items()}}


def count_flops(model: MTLModel, input_shape, device="cpu", example=None) -> dict:
    """Forward FLOPs for one sample: all tasks at once, and each task alone. ``example``: one
    sample's input, batched (``MTLData.example_input()``: a graph, for graph data); default
    zeros of ``input_shape``."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device) if example is None else example.to(device)

    def flops(tasks):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.forward_tasks(x, tasks)
        return int(counter.get_total_flops())

    out = {"total": flops(model.task_names), "per_task": {t: flops([t]) for t in model.task_names}}
    model.train(was_training)
    return out
