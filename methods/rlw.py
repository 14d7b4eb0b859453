"""Random Loss Weighting (RLW; Lin et al., "Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning", TMLR 2022). Reference code: LibMTL
``LibMTL/weighting/RLW.py`` (by the same authors) and Nash-MTL's ``methods/weight_methods.py``
(class ``RLW``); both sample the ``normal`` form.

Each step draws fresh weights λ (summing to 1) and back-propagates Σ_k λ_k L_k:

* ``distribution: normal`` (default, the references' form): λ = softmax(λ̃), λ̃ ~ N(0, I_K);
* ``distribution: dirichlet``: λ ~ Dir(``concentration``·1_K) (already on the simplex; the
  default concentration 1 is the uniform distribution on the simplex).

The weights sum to 1 (not K as ``equal``'s do): with SGD the effective learning rate is 1/K
of equal weighting's, as in the references; Adam is insensitive to it.

Randomness: λ is drawn from the balancer's own ``torch.Generator`` (a declared state field,
so a resumed run draws the same weights), seeded from torch's global RNG when the balancer
is built (the run seeds that RNG from ``seed``), never from the global RNG during steps. The
Dirichlet draw seeds the default CPU generator inside ``torch.random.fork_rng`` from our
generator (torch's Gamma sampler takes no generator) and restores it afterwards.

Mode: none (a loss-scale method, one backward pass). DDP: ``distributed = False``.
Logged: ``weights()`` = the epoch-mean λ (1/K in expectation). A task absent from the batch
has a zero loss gradient, so its λ_k multiplies nothing (it is logged as 0 for that step).
"""
from __future__ import annotations

import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._loss_weighting import LossWeighting, positive_float, run_generator

DISTRIBUTIONS = ("normal", "dirichlet")


@BALANCERS.register("rlw")
class RLW(LossWeighting):
    """``distribution``: normal (softmax of N(0, I)) | dirichlet (Dir(``concentration``))."""

    state_fields = LossWeighting.state_fields + ("generator",)
    random_task_weights = True  # identical tasks get different weights by design (see the contract tests)

    def __init__(self, task_names, distribution: str = "normal", concentration: float = 1.0):
        super().__init__(task_names)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"balancer.distribution must be one of {list(DISTRIBUTIONS)} (got {distribution!r})")
        self.distribution = distribution
        self.concentration = positive_float("concentration", concentration)
        self.generator = run_generator()

    def sample(self) -> torch.Tensor:
        """One draw of λ [K] (CPU, float32, sums to 1)."""
        k = len(self.task_names)
        if self.distribution == "normal":
            return torch.softmax(torch.randn(k, generator=self.generator), dim=0)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator).item())
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return torch.distributions.Dirichlet(torch.full((k,), self.concentration)).sample()

    def loss_weights(self, losses, present, ctx):
        return self.sample().to(losses.device, non_blocking=True)

    def initial_weights(self):
        return {t: 1.0 / len(self.task_names) for t in self.task_names}
