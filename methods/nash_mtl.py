"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022; the authors'
code: AvivNavon/nash-mtl ``methods/weight_methods.py`` class ``NashMTL``, also
LibMTL/weighting/Nash_MTL.py).

The update is d = Σ_i α_i g_i with α the Nash bargaining solution: α > 0 with

    (G Gᵀ α)_i = 1 / α_i   for every task i      (G: the task gradients as rows, [T, D])

i.e. every task's utility ⟨g_i, d⟩ equals 1/α_i (the paper's Claim 3.2, Gᵀ G α = 1/α in its
column convention). It is found as in the paper (Sec. 3.2, "sequential convex
optimisation") and the authors' code: with M = G Gᵀ / nf, nf = ‖G Gᵀ‖_F, and starting from
the previous step's α (ones at the first step), each of at most ``optim_niter`` (20) rounds
solves the convex problem

    min_α  Σ_i (M α)_i + φ'(α⁽τ⁾)ᵀ α / nf   s.t.  log(nf·α_i) + log((M α)_i) ≥ 0,  α ≥ 0,
    φ'(α) = 1/α + Mᵀ (1 / (M α))                (the gradient of Σ_i log α_i + log (M α)_i)

with cvxpy, and stops when ‖M α⁽τ⁾ − 1/(α⁽τ⁾ + 1e-10)‖ < 1e-3 or α moved by < 1e-6 (the
authors' criteria, on the normalised M as in their code). ``update_weights_every`` (1)
reuses α between solves. The shared update is then clipped to norm ``max_norm`` (1.0; 0 turns
it off) as their ``clip_grad_norm_(shared_parameters, max_norm)`` does.

Defaults: the authors' (``update_weights_every=1``, ``optim_niter=20``, ``max_norm=1.0``).
Gradients w.r.t. the shared parameters only (``mode: parameters``), as the paper and the
authors' code; LibMTL refuses representation gradients for Nash-MTL too.

Deliberate deviations:

* Solver: ``solver: CLARABEL`` (any cvxpy conic solver name may be given). The authors call
  ECOS, which cvxpy no longer installs since 1.6; both solve the same exponential-cone
  problem (tests/test_balancers_pareto.py solves the authors' own formulation with the same
  solver on random Gram matrices and compares α).
* The problem is written in cvxpy's DPP form (the linear term's coefficient φ'(α⁽τ⁾)/nf is
  one parameter computed in numpy; the constant −φ'ᵀα⁽τ⁾ is dropped): the same minimiser, but
  cvxpy compiles it once per task count instead of at every solve (≈4 ms instead of ≈35 ms
  per step with 2 tasks here).
* Task-specific parameters get Σ_i c·α_i ∇L_i, with c the clip factor applied to the shared
  update (the authors back-propagate Σ α_i L_i and clip only the shared gradient): the whole
  model then moves along one weighted loss, which the balancer contract checks.
* ``update_weights_every > 1`` still pays the T gradient passes of every step (the authors
  skip them between solves).
* Absent tasks are left out; the others are solved on their own, warm-started from their
  previous α.

Needs cvxpy: the optional extra ``pip install -e ".[pareto]"`` (without it this balancer
refuses to start, in one line). Logged per epoch: the mean effective α (``weights()``), and in
``balancer``: the mean solver rounds, failed solves and clipped steps.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._pareto import ClippedBalancer

EXTRA = "pip install -e \".[pareto]\""


def _cvxpy():
    try:
        import cvxpy
    except ImportError:
        raise ValueError(f"balancer=nash_mtl needs cvxpy, in the optional extra 'pareto': {EXTRA}") from None
    return cvxpy


@functools.lru_cache(maxsize=32)
def _problem(k: int):
    """The round's convex problem for k tasks, compiled once (DPP): (problem, α, M, nf, c)."""
    cp = _cvxpy()
    alpha = cp.Variable(k, nonneg=True)
    gram, nf, coef = cp.Parameter((k, k)), cp.Parameter(nonneg=True), cp.Parameter(k)
    g_alpha = gram @ alpha
    problem = cp.Problem(cp.Minimize(cp.sum(g_alpha) + coef @ alpha), [cp.log(alpha * nf) + cp.log(g_alpha) >= 0])
    return problem, alpha, gram, nf, coef


def nash_weights(gram: np.ndarray, start: np.ndarray, niter: int = 20, solver: str = "CLARABEL"):
    """The bargaining solution α for a raw Gram matrix ``gram`` = G Gᵀ, from ``start``:
    (α, rounds run, whether a solve failed)."""
    gram = np.asarray(gram, dtype=np.float64)
    nf = float(np.linalg.norm(gram))
    m = gram / nf
    problem, alpha, g_par, nf_par, coef = _problem(len(gram))
    g_par.value, nf_par.value = m, nf
    cur, failed, rounds = np.asarray(start, dtype=np.float64), False, 0
    for rounds in range(1, niter + 1):
        coef.value = (1.0 / cur + (1.0 / (m @ cur)) @ m) / nf
        alpha.value = cur
        try:
            problem.solve(solver=solver, warm_start=True)
            new = alpha.value
        except Exception:  # noqa: BLE001 - a solver error keeps the previous α, as the authors do
            new, failed = None, True
        if new is None or np.linalg.norm(m @ cur - 1.0 / (cur + 1e-10)) < 1e-3 or np.linalg.norm(new - cur) < 1e-6:
            break
        cur = new
    return cur, rounds, failed


@BALANCERS.register("nash_mtl")
class NashMTL(ClippedBalancer):
    """``update_weights_every`` (1), ``optim_niter`` (20), ``max_norm`` (1.0; 0 = no clip),
    ``solver`` (CLARABEL), ``mode`` (parameters only)."""

    modes = ("parameters",)
    state_fields = ClippedBalancer.state_fields + ("_rounds", "_failures")

    def __init__(self, task_names, update_weights_every: int = 1, optim_niter: int = 20, max_norm: float = 1.0,
                 solver: str = "CLARABEL", mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        cp = _cvxpy()
        if str(solver).upper() not in cp.installed_solvers():
            raise ValueError(f"balancer.solver={solver!r} is not installed; installed: {cp.installed_solvers()}")
        if int(update_weights_every) < 1 or int(optim_niter) < 1 or float(max_norm) < 0:
            raise ValueError("balancer.update_weights_every and balancer.optim_niter must be >= 1, "
                             "balancer.max_norm >= 0")
        self.update_weights_every, self.optim_niter = int(update_weights_every), int(optim_niter)
        self.max_norm, self.solver = float(max_norm), str(solver).upper()
        self.register_buffer("alpha", torch.ones(len(self.task_names), dtype=torch.float64))  # the last solution
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._rounds, self._failures = 0, 0

    def aggregate(self, grads, losses):
        idx = self.active_index
        if int(self.step) % self.update_weights_every == 0:
            gram = (grads @ grads.T).double().cpu().numpy()  # the one host sync of the step
            a, rounds, failed = nash_weights(gram, self.alpha[idx].cpu().numpy(), self.optim_niter, self.solver)
            self.alpha[idx] = torch.as_tensor(a, dtype=self.alpha.dtype, device=self.alpha.device)
            self._rounds, self._failures = self._rounds + rounds, self._failures + int(failed)
        self.step += 1
        w = self.alpha[idx].to(grads.dtype)
        return self.clipped(w @ grads, w)

    def epoch_end(self, train_losses):
        steps = max(float(self.steps), 1.0)
        state = super().epoch_end(train_losses)
        state.update(solver_rounds=self._rounds / steps, failed_solves=self._failures)
        self._rounds, self._failures = 0, 0
        return state
