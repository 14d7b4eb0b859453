"""AdaShare: a learned select-or-skip policy per task and residual block (Sun, Panda, Feris &
Saenko, "AdaShare: Learning What To Share For Efficient Deep Multi-Task Learning",
NeurIPS 2020; reference code github.com/sunxm2357/AdaShare, ``models/deeplab_resnet.py``).
The training protocol (warm-up, search, retrain) is the ``adashare`` procedure in
``methods/adashare/procedure.py``.

One backbone (any backbone whose blocks are all residual, i.e. follow the
``mtlbench.backbones.base.ResidualBlock`` contract: ``residual = True`` and ``shortcut(x)``),
one head per task, and ``policy_logits`` of shape [T, L, 2]: for task t and block l the
logits of (execute, skip) (column 0 = execute, column 1 = skip, as the reference code).
Block l's output on task t's path is ``u * block(x) + (1 - u) * shortcut(x)`` with the
block's own shortcut (identity, or its downsampling projection where stride or width
changes), exactly as the reference code mixes ``relu(residual + block(x))`` with the residual.

Modes (``set_mode`` / ``set_policy``):

* ``shared``: every block executed for every task, one backbone pass (hard sharing; the
  warm-up phase);
* ``search`` (the default): in training, u = the execute entry of a soft Gumbel-Softmax
  sample of the logits at ``temperature``, redrawn every forward; only the last
  ``num_train_blocks`` blocks (the curriculum) are gated, earlier blocks execute (u = 1)
  and their features are computed once for all tasks; then each task runs its own path.
  In eval mode the hard argmax policy is used (deterministic), or, while ``eval_sampler``
  holds a generator, a hard policy sampled from the execute probabilities for every
  forward (the reference's search-time evaluation);
* ``fixed``: a hard policy (bool [T, L], ``policy`` buffer): executed blocks run
  ``block(x)``, skipped ones ``shortcut(x)`` only. Tasks whose policies agree on a prefix
  of blocks share that prefix's computation (a tree), so an all-execute policy is hard
  sharing bit for bit (same weights, same output) and FLOPs count what a deployment runs.

Initialisation (``init``): ``equal`` (every logit 0.5, the reference's ``init_method:
equal``: execute probability 0.5) or ``random`` (N(0, ``init_std``²), the reference's
``random`` with std 1e-3).

Parameters: ``task_parameters(t)`` in fixed mode = stem + the blocks t executes + the
shortcut projections (``downsample``) of the blocks t skips + t's head: what deploying t
needs. In shared mode: the backbone + t's head; in search mode also the policy logits.
``shared_parameters()``: the backbone in shared / search mode; in fixed mode the stem and
the block parameters used by at least two tasks.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.base import ResidualBlock
from mtlbench.core.model import MTLModel, make_heads, unique
from mtlbench.core.registry import ARCHS

MODES = ("shared", "search", "fixed")
INITS = ("equal", "random")
EXECUTE, SKIP = 0, 1
RESIDUAL_BACKBONES = "small_resnet, resnet18, resnet34, small_cnn, mlp or resmlp"


def _fused(block) -> bool:
    """The block's forward is ResidualBlock's relu(body(x) + shortcut(x)): body and shortcut
    can then be computed once and reused for the mix."""
    return isinstance(block, ResidualBlock) and type(block).forward is ResidualBlock.forward


@ARCHS.register("adashare")
class AdaShare(MTLModel):
    # trainer.compile stays eager (mtlbench.engine.speed): the search forward samples a new
    # Gumbel-Softmax policy per step and the execute/skip path depends on it
    compile_blocker = "its forward depends on the sampled select/skip policy"

    def __init__(self, backbone_fn, tasks, init: str = "equal", init_std: float = 1e-3):
        super().__init__(tasks)
        self.backbone = backbone_fn()
        blocks = self.backbone.blocks
        bad = [i for i, b in enumerate(blocks)
               if not (getattr(b, "residual", False) and callable(getattr(b, "shortcut", None)))]
        if bad:
            name = getattr(self.backbone, "name", "backbone")
            raise ValueError(f"arch adashare needs a backbone whose blocks are all residual (with a shortcut); "
                             f"backbone '{name}' has non-residual blocks {bad[:4]}: use backbone={RESIDUAL_BACKBONES}")
        if init not in INITS:
            raise ValueError(f"arch adashare: init must be one of {', '.join(INITS)} (got {init!r})")
        self.heads = make_heads(self.backbone, tasks)
        T, L = len(self.task_names), len(blocks)
        logits = torch.full((T, L, 2), 0.5) if init == "equal" else float(init_std) * torch.randn(T, L, 2)
        self.policy_logits = nn.Parameter(logits)
        self.register_buffer("policy", torch.ones(T, L, dtype=torch.bool))
        self.mode = "search"
        self.temperature = 5.0
        self.num_train_blocks = L
        self.eval_sampler: Optional[torch.Generator] = None
        self._index = {t: i for i, t in enumerate(self.task_names)}

    # ------------------------------------------------------------------ policy
    @property
    def num_blocks(self) -> int:
        return len(self.backbone.blocks)

    def set_mode(self, mode: str) -> "AdaShare":
        if mode not in MODES:
            raise ValueError(f"adashare mode must be one of {', '.join(MODES)} (got {mode!r})")
        self.mode = mode
        return self

    def set_policy(self, policy) -> "AdaShare":
        """Fix a hard policy (bool-like [T, L], True = execute) and switch to fixed mode."""
        p = torch.as_tensor(policy).to(dtype=torch.bool, device=self.policy.device)
        if tuple(p.shape) != tuple(self.policy.shape):
            raise ValueError(f"adashare policy must have shape {tuple(self.policy.shape)} (tasks x blocks), "
                             f"got {tuple(p.shape)}")
        self.policy.copy_(p)
        return self.set_mode("fixed")

    def frozen_blocks(self) -> int:
        """Blocks before the curriculum (always executed while searching)."""
        return self.num_blocks - max(0, min(self.num_blocks, int(self.num_train_blocks)))

    def execute_probs(self) -> torch.Tensor:
        """Execute probability [T, L] = softmax of the logits (detached)."""
        return F.softmax(self.policy_logits.detach(), dim=-1)[..., EXECUTE]

    def argmax_policy(self) -> torch.Tensor:
        """Hard policy [T, L]: execute where its logit is >= skip's; blocks before the
        curriculum execute."""
        lg = self.policy_logits.detach()
        p = lg[..., EXECUTE] >= lg[..., SKIP]
        p[:, :self.frozen_blocks()] = True
        return p

    def sample_policy(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A hard policy drawn from the execute probabilities (the reference's retrain policy);
        blocks before the curriculum execute."""
        probs = self.execute_probs().cpu()
        p = torch.rand(probs.shape, generator=generator) < probs
        p[:, :self.frozen_blocks()] = True
        return p.to(self.policy.device)

    def _gates(self) -> torch.Tensor:
        """Soft execute gates [T, L] for a search forward in training."""
        u = F.gumbel_softmax(self.policy_logits, tau=self.temperature, hard=False, dim=-1)[..., EXECUTE]
        start = self.frozen_blocks()
        if start:
            u = torch.cat([torch.ones_like(u[:, :start]), u[:, start:]], dim=1)
        return u

    # ------------------------------------------------------------------ forward
    def forward_representation(self, x, tasks: Sequence[str]):
        """Predictions and the shared representation: the backbone output in shared mode (the
        warm-up: hard sharing). While searching and with a fixed policy there is none (blocks
        after any common prefix are still shared by several tasks, so no single tensor carries
        every shared gradient)."""
        if self.mode == "shared":
            feats = self.backbone(x)
            return {t: self.heads[t](feats) for t in tasks}, feats
        if self.mode == "search" and self.training:
            return self._forward_soft(x, tasks)
        if self.mode == "fixed":
            policy = self.policy
        else:
            policy = self.argmax_policy() if self.eval_sampler is None else self.sample_policy(self.eval_sampler)
        return self._forward_tree(x, tasks, policy)

    def _forward_soft(self, x, tasks):
        gates = self._gates()
        start, blocks, state = self.frozen_blocks(), self.backbone.blocks, {}
        h = self.backbone.stem(x)
        for block in blocks[:start]:
            h = block(h, state)
        out = {}
        for t in tasks:
            u, ht, st = gates[self._index[t]], h, dict(state)
            for l in range(start, len(blocks)):
                block = blocks[l]
                if _fused(block):
                    s = block.shortcut(ht)
                    f = torch.relu(block.body(ht) + s)
                else:
                    f, s = block(ht, st), block.shortcut(ht)
                ht = s + u[l] * (f - s)
            out[t] = self.heads[t](ht)
        return out, None

    def _forward_tree(self, x, tasks, policy: torch.Tensor):
        rows = policy.tolist()
        groups = [(list(tasks), self.backbone.stem(x), {})]
        for l, block in enumerate(self.backbone.blocks):
            nxt = []
            for names, h, st in groups:
                ex = [t for t in names if rows[self._index[t]][l]]
                sk = [t for t in names if not rows[self._index[t]][l]]
                if ex:
                    nxt.append((ex, block(h, dict(st) if sk else st), st))
                if sk:
                    nxt.append((sk, block.shortcut(h), st))
            groups = nxt
        out = {}
        for names, h, _ in groups:
            for t in names:
                out[t] = self.heads[t](h)
        return {t: out[t] for t in tasks}, None

    # ------------------------------------------------------------------ parameters
    def block_parameters(self, l: int, execute: bool) -> List[nn.Parameter]:
        """Parameters block l needs when executed (all of it) or skipped (its shortcut
        projection, ``downsample``, when it has one)."""
        block = self.backbone.blocks[l]
        if execute:
            return list(block.parameters())
        ds = getattr(block, "downsample", None)
        return list(ds.parameters()) if isinstance(ds, nn.Module) else []

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        head = list(self.heads[task].parameters())
        if self.mode == "shared":
            return list(self.backbone.parameters()) + head
        if self.mode == "search":
            return list(self.backbone.parameters()) + head + [self.policy_logits]
        row = self.policy[self._index[task]].tolist()
        params = list(self.backbone.stem.parameters())
        for l, ex in enumerate(row):
            params += self.block_parameters(l, ex)
        return unique(params + head)

    def shared_parameters(self) -> List[nn.Parameter]:
        if self.mode != "fixed":
            return list(self.backbone.parameters())
        uses: Dict[int, int] = {}
        by_id: Dict[int, nn.Parameter] = {}
        for t in self.task_names:
            row = self.policy[self._index[t]].tolist()
            for l, ex in enumerate(row):
                for p in self.block_parameters(l, ex):
                    uses[id(p)] = uses.get(id(p), 0) + 1
                    by_id[id(p)] = p
        return list(self.backbone.stem.parameters()) + [by_id[i] for i, n in uses.items() if n >= 2]

    def last_shared_parameters(self) -> List[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        for block in reversed(self.backbone.blocks):
            own = [p for p in block.parameters() if id(p) in shared]
            if own:
                return own
        return [p for p in self.backbone.stem.parameters()]

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()), "policy": [self.policy_logits],
                **{f"head:{t}": list(h.parameters()) for t, h in self.heads.items()}}

    def deployed_parameters(self) -> List[nn.Parameter]:
        """Union of every task's deployed parameters (fixed mode): stem + blocks executed by
        at least one task + shortcut projections of skipped blocks + heads."""
        return unique(p for t in self.task_names for p in self.task_parameters(t))
