"""The balancer interface: turn per-task losses into one update.

A balancer (registered in ``BALANCERS``) is an ``nn.Module`` built as
``Balancer(task_names, **cfg)``; its own learnable parameters (e.g. uncertainty
weighting's log-variances) are optimised with the model's.

``backward(losses, model)`` performs the backward pass and returns the scalar loss
(detached). Loss-weighting methods only override ``combine``; gradient methods
(which need per-task gradients of ``model.shared_parameters()``) override ``backward``.
``epoch_end(train_losses)`` receives the epoch-average training loss per task
(DWA needs them) and returns what to log for the epoch.

A task absent from a batch has an exact zero loss (see ``mtlbench.core.tasks``).

Gradient methods find the model's shared representation (the tensor the task heads
read, from the last forward pass) in ``model.shared_representation`` when the
architecture has one (hard sharing does; cross-stitch and MTAN do not), and the
shared parameters in ``model.shared_parameters()``.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence

import torch
from torch import nn


class Balancer(nn.Module):
    def __init__(self, task_names: Sequence[str]):
        super().__init__()
        self.task_names = list(task_names)

    def combine(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # Python-level state (counters, histories kept outside buffers) travels with
    # ``state_dict()`` so a checkpoint restores a balancer exactly.
    _MODULE_KEYS = frozenset(vars(nn.Module()))

    def get_extra_state(self):
        plain = (int, float, str, bool, list, tuple, dict, type(None))
        return {k: copy.deepcopy(v) for k, v in vars(self).items()
                if k not in self._MODULE_KEYS and k != "grad_scaler" and isinstance(v, plain)}

    def set_extra_state(self, state) -> None:
        self.__dict__.update(copy.deepcopy(state))

    grad_scaler = None  # set by the trainer under trainer.amp=fp16 (a torch.amp.GradScaler)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """What to call ``backward`` on: the loss, times the AMP loss scale under fp16."""
        return loss if self.grad_scaler is None else self.grad_scaler.scale(loss)

    def backward(self, losses: Dict[str, torch.Tensor], model) -> torch.Tensor:
        loss = self.combine(losses)
        self.scaled(loss).backward()
        return loss.detach()

    def epoch_end(self, train_losses: Dict[str, float]) -> dict:
        """Called once per epoch with the epoch-average training loss per task; returns
        extra state worth recording (e.g. UW's learned σ), logged as ``balancer``."""
        return {}

    def weights(self) -> Optional[Dict[str, float]]:
        """The current per-task loss weights, logged each epoch as ``balancer_weights``
        (None for a balancer without per-task weights)."""
        return None
