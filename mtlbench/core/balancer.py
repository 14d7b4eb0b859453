"""The balancer interface: turn per-task losses into one update.

A balancer (registered in ``BALANCERS``) is an ``nn.Module`` built as
``Balancer(task_names, **cfg)``; its own learnable parameters (e.g. uncertainty
weighting's log-variances) are optimised with the model's (a second param group).

Each training step the trainer calls ``backward(losses, ctx)`` with the per-task losses
(``{task: scalar}``; a task absent from the batch has an exact zero loss still on the
graph) and the ``BalancerContext`` it built once per fit. ``backward`` performs the
backward pass (through ``ctx.backward`` so the AMP loss scale applies) and returns the
scalar loss (detached). Loss-weighting methods only override ``combine``; gradient
methods override ``backward`` and use the context: per-task gradients of the shared
parameters or of the shared representation (``ctx.grads``), writing the aggregated
gradient back (``ctx.write_grads``).

Declared capabilities (class attributes):

* ``distributed`` (default True): may run under torchrun. A balancer whose per-task
  gradients would be those of one rank's shard sets False and is refused with one line
  (``ctx.grads`` all-reduces per-task gradients of parameters, so parameter-mode methods
  can stay True).
* ``needs_representation`` (default False): the trainer asks the model for its shared
  representation each step (``ctx.representation``); None when the architecture has none.
* ``state_fields``: the Python attributes (besides buffers and parameters, which
  ``state_dict`` holds anyway) a checkpoint must keep for an exact resume: counters,
  histories, ``torch.Generator`` objects (saved by their state). Nothing else is saved, so
  every attribute a step or an epoch changes must be a buffer, a parameter or declared
  here (a contract test checks it).

``epoch_end(train_losses)`` receives the epoch-average training loss per task and returns
what to log for the epoch (``balancer`` in metrics.jsonl); ``weights()`` the current
per-task weights (``balancer_weights``), or None.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class BalancerContext:
    """What a balancer may use, built once per fit by the trainer (``Trainer.prepare``).

    ``shared``: shared parameters (``model.shared_parameters()`` that train);
    ``task_specific``: per task, the parameters only it uses; ``last_shared``: the last
    shared layer's parameters; ``scaler``: the AMP ``GradScaler`` (fp16) or None;
    ``world_size`` / ``reduce_mean``: data-parallel size and the all-reduce (mean) used for
    per-task gradients; ``step``: optimisation steps done in this fit before the current
    one; ``epoch``: the epoch in progress (from 1); ``representation``: this step's shared
    representation when the balancer declares ``needs_representation`` (else None)."""

    task_names: List[str]
    shared: List[nn.Parameter] = field(default_factory=list)
    task_specific: Dict[str, List[nn.Parameter]] = field(default_factory=dict)
    last_shared: List[nn.Parameter] = field(default_factory=list)
    scaler: Optional[object] = None
    world_size: int = 1
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] = _identity
    step: int = 0
    epoch: int = 1
    representation: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ backward
    def scale(self) -> float:
        """The AMP loss scale (1 without a scaler)."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """``loss.backward()``, times the AMP loss scale under fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward(retain_graph=retain_graph)

    def backward_from(self, tensor: torch.Tensor, grad: torch.Tensor) -> None:
        """Back-propagate ``grad`` (an unscaled gradient w.r.t. ``tensor``, e.g. an aggregated
        gradient of the shared representation) into the parameters below it."""
        tensor.backward((grad * self.scale()).to(tensor.dtype))

    # ------------------------------------------------------------------ per-task gradients
    def grads(self, losses: Sequence[torch.Tensor], wrt: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-task gradients [K, D] (float32, flattened and concatenated over ``wrt``) of the
        UNSCALED ``losses``; zeros for a loss that does not reach a tensor (or a task absent
        from the batch). The graph is kept. Under torchrun the result is averaged over ranks:
        the global batch's gradients, for parameters. A representation's gradient is per
        sample and cannot be averaged: a balancer using it declares ``distributed = False``."""
        wrt = list(wrt)
        out, _ = self.task_grads(losses, wrt, [[] for _ in losses])
        return self.reduce_mean(out) if self.world_size > 1 else out

    def task_grads(self, losses: Sequence[torch.Tensor], wrt: Sequence[torch.Tensor],
                   own: Sequence[Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, List[list]]:
        """One gradient pass per loss w.r.t. ``wrt`` and that loss's ``own`` tensors at once:
        ([K, D] float32 rows over ``wrt`` as ``grads`` lays them out, written in place into
        one preallocated matrix; per loss the list of its ``own`` gradients, None where
        unreached). Not averaged over ranks (``grads`` is)."""
        wrt = list(wrt)
        sizes = [w.numel() for w in wrt]
        device = wrt[0].device if wrt else (losses[0].device if len(losses) else torch.device("cpu"))
        out = torch.zeros(len(losses), sum(sizes), device=device)
        extra: List[list] = []
        for k, loss in enumerate(losses):
            mine = list(own[k])
            if not (loss.requires_grad and (wrt or mine)):
                extra.append([None] * len(mine))
                continue
            gs = torch.autograd.grad(loss, wrt + mine, retain_graph=True, allow_unused=True)
            offset = 0
            for n, g in zip(sizes, gs[:len(wrt)]):
                if g is not None:
                    out[k, offset:offset + n].copy_(g.reshape(-1))
                offset += n
            extra.append(list(gs[len(wrt):]))
        return out, extra

    def set_grads(self, params: Sequence[nn.Parameter], grads: Sequence[Optional[torch.Tensor]],
                  weight=1.0) -> None:
        """``p.grad = weight * g`` (zeros where g is None), times the AMP loss scale;
        ``weight`` a number or a 0-d tensor (no host read)."""
        scale = self.scale()
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else (g * (weight * scale)).to(p.dtype)

    def write_grads(self, params: Sequence[nn.Parameter], flat: torch.Tensor, accumulate: bool = False) -> None:
        """Set (or add to) ``p.grad`` from one flat vector over ``params`` (as ``grads``
        lays it out), times the AMP loss scale so the optimizer step unscales it."""
        scale, offset = self.scale(), 0
        for p in params:
            n = p.numel()
            part = flat[offset:offset + n].view_as(p)
            offset += n
            if accumulate and p.grad is not None:
                p.grad.add_(part.to(p.dtype), alpha=scale)
            else:  # one fresh tensor: the grad never aliases ``flat`` (a balancer's state may)
                p.grad = part.to(p.dtype, copy=True) if scale == 1 else (part * scale).to(p.dtype)
        if offset != flat.numel():
            raise ValueError(f"write_grads: {flat.numel()} values for parameters of {offset} elements")


class Balancer(nn.Module):
    distributed: ClassVar[bool] = True
    needs_representation: bool = False
    state_fields: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, task_names: Sequence[str]):
        super().__init__()
        self.task_names = list(task_names)

    def combine(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, losses: Dict[str, torch.Tensor], ctx: BalancerContext) -> torch.Tensor:
        loss = self.combine(losses)
        ctx.backward(loss)
        return loss.detach()

    def epoch_end(self, train_losses: Dict[str, float]) -> dict:
        """Called once per epoch with the epoch-average training loss per task; returns
        extra state worth recording (e.g. UW's learned σ), logged as ``balancer``."""
        return {}

    def weights(self) -> Optional[Dict[str, float]]:
        """The current per-task loss weights, logged each epoch as ``balancer_weights``
        (None for a balancer without per-task weights)."""
        return None

    # ------------------------------------------------------------------ declared state
    def get_extra_state(self):
        return {name: _export(getattr(self, name)) for name in self.state_fields}

    def set_extra_state(self, state) -> None:
        for name, value in (state or {}).items():
            setattr(self, name, _import(value, getattr(self, name, None)))


def _export(value):
    if isinstance(value, torch.Generator):
        return {"__generator_state__": value.get_state()}
    return copy.deepcopy(value)


def _import(value, current):
    if isinstance(value, dict) and "__generator_state__" in value:
        gen = current if isinstance(current, torch.Generator) else torch.Generator()
        gen.set_state(value["__generator_state__"])
        return gen
    return copy.deepcopy(value)
