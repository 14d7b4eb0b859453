"""The MMoE paper's synthetic regression pair with controllable task correlation (Ma et al.,
"Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD
2018, Sec. 4.1), embedded: generated from ``dataset.split_seed`` (= ``${seed}``), no files.
Reference: Google Research's generator for this procedure (google-research/google-research,
"Simple generator for synthetic multi-task data", ``generate_task_pairs``; read through the
code index, which did not give its path): its alphas / betas and noise are the defaults here.

Generation, for input dimension d (``dim``), scale c (``scale``) and correlation p
(``correlation``, in [−1, 1]):

1. two orthonormal vectors u1, u2 in R^d (the first two columns of a uniformly random
   orthogonal matrix: QR of a Gaussian matrix, signs fixed);
2. w1 = c·u1, w2 = c·(p·u1 + √(1 − p²)·u2), so cos(w1, w2) = p and |w1| = |w2| = c;
3. x ~ N(0, I_d);
4. y_t = w_tᵀx + Σ_{i=1..m} sin(α_i w_tᵀx + β_i) + ε_t, ε_t ~ N(0, σ²) (m = ``sinusoids``).

The paper leaves α_i, β_i unspecified; that generator uses α_i = i (1..m) and
β_i = (i − 1)² (0..(m−1)²), m = 10, c = 1, σ = 0.01 (the paper's "N(0, 0.01)"), and so do
the defaults; ``alphas`` / ``betas`` may instead be lists, or ``normal``: m draws of N(0, 1)
from the data seed (drawbridge/keras-mmoe's ``synthetic_demo.py``; far smoother labels: with
α_i up to 10 the sinusoids oscillate faster than 10,000 samples resolve, see README). Sizes: ``n_train`` 10,000,
``n_val`` / ``n_test`` 1,000 (disjoint samples of the same distribution); the paper's d =
100. Tasks ``y1``, ``y2``: regression, MSE loss on the raw labels (no standardisation, as
the paper's loss curves); metrics rmse ↓, mae ↓, explained_variance ↑. ``MTLData.info``
records the realised cosine of w1, w2 and the Pearson correlation of the two training labels
(lower than p: the sinusoids are non-linear).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from mtlbench.core.data import MTLData, TensorSplit
from mtlbench.core.registry import DATASETS
from mtlbench.loaders.tabular import choose_tasks
from mtlbench.tasks.tabular import RegressionTask

TASKS = ["y1", "y2"]


def task_weights(dim: int, correlation: float, scale: float, rng: np.random.Generator):
    """(w1, w2) with |w1| = |w2| = scale and cos(w1, w2) = correlation (steps 1-2)."""
    if dim < 2:
        raise ValueError(f"dataset.dim must be >= 2 (two orthogonal directions), got {dim}")
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"dataset.correlation must lie in [-1, 1], got {correlation}")
    q, r = np.linalg.qr(rng.standard_normal((dim, 2)))
    q = q * np.sign(np.diag(r))  # a uniformly random orthonormal pair
    u1, u2 = q[:, 0], q[:, 1]
    return scale * u1, scale * (correlation * u1 + np.sqrt(1.0 - correlation ** 2) * u2)


def labels(x: np.ndarray, w: np.ndarray, alphas, betas, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """y = wᵀx + Σ_i sin(α_i wᵀx + β_i) + N(0, noise_std²) (step 4)."""
    dot = x @ w
    y = dot + np.sin(np.outer(dot, alphas) + np.asarray(betas)).sum(axis=1)
    return y + rng.normal(scale=noise_std, size=len(x))


def _shape(value, default: np.ndarray, m: int, rng: np.random.Generator, key: str) -> np.ndarray:
    """α or β: null = the default sequence, ``normal`` = m draws of N(0, 1), or a list."""
    if value is None:
        return default
    if isinstance(value, str):
        if value != "normal":
            raise ValueError(f"dataset.{key} must be null, 'normal' or a list of numbers, got {value!r}")
        return rng.standard_normal(m)
    return np.asarray(value, dtype=np.float64)


@DATASETS.register("mmoe_synthetic")
def build(root: Optional[str] = None, split_seed: int = 0, tasks: Optional[Sequence[str]] = None,
          correlation: float = 0.5, dim: int = 100, scale: float = 1.0, sinusoids: int = 10,
          alphas: Optional[Sequence[float]] = None, betas: Optional[Sequence[float]] = None,
          noise_std: float = 0.01, n_train: int = 10000, n_val: int = 1000, n_test: int = 1000,
          head_hidden: int = 0) -> MTLData:
    m = int(sinusoids)
    rng = np.random.default_rng([int(split_seed), 20180819])
    alphas = _shape(alphas, np.arange(1, m + 1, dtype=np.float64), m, rng, "alphas")
    betas = _shape(betas, np.arange(m, dtype=np.float64) ** 2, m, rng, "betas")
    if len(alphas) != len(betas):
        raise ValueError(f"dataset.alphas and dataset.betas must have the same length ({len(alphas)} vs {len(betas)})")
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if min(sizes.values()) < 1:
        raise ValueError(f"dataset.n_train / n_val / n_test must be positive, got {sizes}")
    w = task_weights(int(dim), float(correlation), float(scale), rng)
    keep = choose_tasks(TASKS, tasks, None, "mmoe_synthetic")
    names = [TASKS[k] for k in keep]
    splits, offset = {}, 0
    for split, n in sizes.items():
        x = rng.standard_normal((n, int(dim)))
        ys = [labels(x, w[k], alphas, betas, float(noise_std), rng) for k in range(2)]
        if split == "train":
            label_corr = float(np.corrcoef(ys[0], ys[1])[0, 1])
        splits[split] = TensorSplit(torch.from_numpy(x.astype(np.float32)),
                                    {TASKS[k]: torch.from_numpy(ys[k].astype(np.float32)) for k in keep},
                                    ids=torch.arange(offset, offset + n))
        offset += n
    cosine = float(w[0] @ w[1] / (np.linalg.norm(w[0]) * np.linalg.norm(w[1])))
    return MTLData("mmoe_synthetic", [RegressionTask(n, head_hidden=head_hidden) for n in names], (int(dim),),
                   splits, info={"correlation": float(correlation), "cosine": round(cosine, 6),
                                 "label_pearson": round(label_corr, 4)})
