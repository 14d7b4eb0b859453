"""TAG (Fifty et al., NeurIPS 2021) against its reference code, google-research/google-research
``tag/``: group selection (``network_selection/TAG_network_selection.ipynb``) and the
lookahead affinity (``celeba/CelebA.ipynb``, ``train_step``)."""
import itertools

import numpy as np
import pytest
import torch

from mtlbench.grouping.selection import select
from mtlbench.grouping.tag import tag_selection_inputs

# The paper's CelebA TAG affinities, 9 tasks: the notebook's ``revised_integrals`` (CelebA cell),
# rounded to 2 decimals; R[a][b] is added to task a's score in a group with b. Every
# cross-affinity is negative.
TASKS = ["5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Goatee", "Mustache", "No_Beard",
         "Rosy_Cheeks", "Wearing_Hat"]
R = np.array([
    [239.72, -83.34, -86.05, -82.42, -81.97, -86.02, -49.04, -87.37, -86.77],
    [-188.16, 378.85, -184.53, -147.50, -189.46, -191.00, -185.28, -190.66, -189.42],
    [-121.05, -109.58, 310.71, -106.02, -122.62, -124.40, -117.20, -120.56, -123.26],
    [-143.72, -112.18, -139.85, 321.54, -145.43, -146.78, -142.40, -146.30, -146.23],
    [-85.53, -92.21, -95.75, -91.74, 238.42, -65.43, -45.95, -98.60, -95.68],
    [-30.22, -32.70, -34.78, -33.48, -0.84, 178.67, -15.27, -35.21, -34.37],
    [-109.48, -147.50, -152.39, -148.49, -127.32, -147.14, 291.85, -157.48, -156.16],
    [-74.98, -74.25, -72.05, -73.83, -76.45, -76.50, -75.21, 240.39, -77.00],
    [-109.37, -100.85, -113.52, -110.65, -110.26, -116.10, -106.51, -119.35, 374.63]])


def reference_exhaustive(k: int):
    """The notebook's selection, exhaustively: every subset G scores task a as the mean over
    b in G \\ a of R[a][b] (a lone task: -1e6); choose <= k subsets covering all tasks,
    maximising the sum over tasks of the best chosen score. Groups dominated on every task by
    another group are dropped first (swapping them for their dominator never lowers a total)."""
    T = len(TASKS)
    groups = [g for r in range(1, T + 1) for g in itertools.combinations(range(T), r)]
    S = np.full((len(groups), T), -np.inf)
    for n, g in enumerate(groups):
        for a in g:
            S[n, a] = -1e6 if len(g) == 1 else np.mean([R[a][b] for b in g if b != a])
    ge = (S[:, None, :] >= S[None, :, :]).all(2)
    keep = np.flatnonzero(~(ge & ~ge.T).any(0))
    K = S[keep]
    best = (K.sum(1).max(), [int(K.sum(1).argmax())])
    ia, ib = np.triu_indices(len(K), 1)
    M2 = np.maximum(K[ia], K[ib])
    if k >= 2 and M2.sum(1).max() > best[0]:
        p = int(M2.sum(1).argmax())
        best = (M2.sum(1).max(), [ia[p], ib[p]])
    for c in range(len(K) if k >= 3 else 0):
        v = np.maximum(M2, K[c]).sum(1)
        p = int(v.argmax())
        if v[p] > best[0]:
            best = (v[p], [ia[p], ib[p], c])
    return best[0], sorted(groups[keep[i]] for i in best[1])


@pytest.mark.parametrize("budget", [2, 3])
def test_tag_selection_equals_the_reference_exhaustive_search(budget):
    table, groups = tag_selection_inputs(TASKS, -R, max_size=8, n_candidates=180)
    assert len(groups) == 2 ** 9 - 1  # 9 <= exhaustive_max: every subset is a candidate
    sel = select(table, budget)
    value, chosen = reference_exhaustive(budget)
    assert -sel.total == pytest.approx(value)
    assert sorted(tuple(TASKS.index(t) for t in n.split("+")) for n in sel.networks) == chosen
    # the earlier rule (a lone task scores 0) prefers singletons when every affinity is negative
    zero, _ = tag_selection_inputs(TASKS, -R, max_size=8, n_candidates=180, singleton="zero")
    if budget >= 2:
        assert any("+" not in n for n in select(zero, budget).networks)


def _toy():
    """Two regression tasks on a shared residual MLP with batch-norm (training mode matters)."""
    from mtlbench.backbones.base import build_backbone
    from mtlbench.core.data import Batch
    from mtlbench.core.registry import ARCHS
    from mtlbench.tasks.tabular import RegressionTask

    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 5, generator=g)
    batch = Batch(x, {"a": x[:, 0] + 0.1 * torch.randn(24, generator=g), "b": torch.randn(24, generator=g)})
    tasks = [RegressionTask("a"), RegressionTask("b")]
    torch.manual_seed(0)
    model = ARCHS.get("hard_sharing")(
        lambda: build_backbone({"name": "resmlp", "width": 8, "depth": 1, "norm": "batch"}, (5,)), tasks)
    return model, batch, tasks


def _losses(model, batch, tasks):
    preds = model(batch.x)
    return [t.loss(preds[t.name], batch.targets[t.name]) for t in tasks]


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_optimizer_lookahead_by_hand(kind):
    """Z_{a->j} = (1 - L_j(θ + Δ_a) / L_j(θ)) / lr on the training batch, batch-norm in training
    mode, Δ_a the optimiser's own update for ∇L_a from its state after one real step."""
    import copy

    from mtlbench.grouping.affinity import optimizer_affinity

    model, batch, tasks = _toy()
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=0.01)}[kind]
    opt = make(model.parameters())
    model.train()
    sum(_losses(model, batch, tasks)).backward()
    opt.step()
    opt.zero_grad()
    model_before, opt_before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    z = optimizer_affinity(model, batch, tasks, opt)
    assert all(torch.equal(model_before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    assert str(opt.state_dict()) == str(opt_before)
    # by hand, on a copy
    ref = copy.deepcopy(model).train()
    shared = list(ref.backbone.parameters())
    base = _losses(ref, batch, tasks)
    grads = torch.autograd.grad(base[0], shared)
    lr = 0.01 if kind == "adam" else 0.1
    with torch.no_grad():
        for p, q, g in zip(shared, model.backbone.parameters(), grads):
            st = opt.state[q]
            if kind == "sgd":
                step = -lr * g
            elif kind == "momentum":
                step = -lr * (0.9 * st["momentum_buffer"] + g)
            else:  # Adam, step 2: bias-corrected moments
                m = 0.9 * st["exp_avg"] + 0.1 * g
                v = 0.999 * st["exp_avg_sq"] + 0.001 * g * g
                step = -lr * (m / (1 - 0.9 ** 2)) / ((v / (1 - 0.999 ** 2)).sqrt() + 1e-8)
            p += step
        after = _losses(ref, batch, tasks)
    for j in range(2):
        want = (1 - after[j].item() / base[j].item()) / lr
        assert z[0, j] == pytest.approx(want, rel=1e-4, abs=1e-5)
