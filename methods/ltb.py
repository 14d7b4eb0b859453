"""Learning to Branch (Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning", ICML
2020): a tree-structured network whose branching points are learned by Gumbel-softmax
sampling, then the derived tree retrained. Reference: LibMTL ``LibMTL/architecture/LTB.py``
(the authors released no code; LibMTL implements the search only, not the derivation).

Architecture ``ltb``: T copies ("columns") of the backbone, one per task (``backbone_fn()`` is
called T times). Node k of block l is column k's block l; node k of block l reads a mixture of
the T nodes of block l − 1 (the T stems for block 0) weighted by a sample of the Gumbel-softmax
over ``branch_logits[l, k]`` ([L, T, T]: block, child node, parent node; initialised to 0, a
uniform distribution, as LibMTL's ones); task t's head reads node t of the last block.

* ``search`` mode, training: a new sample per block and forward at ``temperature``; ``hard:
  true`` (default, LibMTL's ``hard=True``) = straight-through one-hot samples (the forward
  uses one parent, the gradient reaches every parent's logit); ``false`` = soft samples.
  Evaluation in search mode uses the argmax tree.
* ``warmup`` mode, training: every parent weighted 1/T (LibMTL sums them with weight 1 during
  its warm-up; the mean keeps activations at the scale of one parent through L blocks).
* ``fixed`` mode (``set_tree``): a parent table (buffer ``tree`` [L, T]); only the nodes on a
  task's chain run, each once per forward, so tasks sharing a prefix share its computation
  and ``count_flops`` counts the deployed tree.

Parameters: search / warm-up modes: ``shared_parameters()`` = stems, nodes of blocks 0..L−2
and the logits (every task's sample depends on them); node t of the last block and head t are
t's own. Fixed mode: ``task_parameters(t)`` = its stem, the nodes on its chain and its head;
shared = the stems / nodes on at least two chains. ``parameter_groups()``: ``stems``,
``nodes`` (every column's blocks), ``branching`` (logits), ``head:<task>``;
``deployed_parameters()``: the union of the fixed tree's task paths. SegNet is refused (its
decoder needs the pooling indices of its own column's encoder, which a mixture of parents
does not carry).

Procedure ``ltb`` (``method=ltb``), from the trainer's building blocks like AdaShare's:

1. **search** (slot ``search``, ``procedure.search`` × ``trainer.epochs`` epochs, resumable):
   weights and logits trained jointly on the train split (the paper's end-to-end training;
   LibMTL optimises both with one optimizer), the logits as an extra parameter group with
   lr ``branch_lr`` (null = the trainer's lr, LibMTL). Temperature τ_e = ``init_temperature``
   / √e for epoch e (LibMTL's (E/20)/√(e) with its E = 100: τ_1 = 5). The first
   ``warmup`` × E epochs use the warm-up mixture. Each epoch logs the branching
   probabilities and the argmax tree's val metrics;
2. **derive** the tree: each node's most probable parent (the paper's final architecture);
3. **retrain** (slot ``retrain``, ``procedure.retrain`` × E epochs): the derived tree from the
   same initial weights as the search (as AdaShare's retrain; the paper trains the derived
   network anew), through ``Trainer.fit`` with the val split as its test split;
4. **test**: the retrained tree on the test split (the only read of it).

run.json: ``procedure_info.tree`` (parents, per-level task groups, levels shared per task
pair, a one-line description, branching probabilities), the phases and their wall times;
``params.total`` = deployed, ``params.trained`` = the search's allocation, ``flops.total`` =
the deployed tree, ``flops.independent`` = T separate columns.
"""
from __future__ import annotations

import copy
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.segnet import SegNetDecoderBlock, SegNetEncoderBlock
from mtlbench.core.data import MTLData
from mtlbench.core.model import MTLModel, make_heads, unique
from mtlbench.core.procedure import FitResult, Procedure, ProcedureResult, RunContext
from mtlbench.core.registry import ARCHS, PROCEDURES
from mtlbench.methods import _ltb, _moe

MODES = ("search", "warmup", "fixed")


@ARCHS.register("ltb")
class LearningToBranch(MTLModel):
    compile_blocker = "its training forward samples a new tree every step"

    def __init__(self, backbone_fn, tasks, hard: bool = True):
        super().__init__(tasks)
        cols = [backbone_fn() for _ in self.task_names]
        _moe.refuse_graphs(cols[0], "ltb")
        name = getattr(cols[0], "name", "backbone")
        if any(isinstance(b, (SegNetEncoderBlock, SegNetDecoderBlock)) for b in cols[0].blocks):
            raise ValueError(f"arch ltb cannot branch backbone '{name}': its decoder needs its own column's "
                             f"pooling indices; use a residual backbone (small_cnn, small_resnet, resnet18/34, mlp)")
        T, L = len(cols), len(cols[0].blocks)
        self.stems = nn.ModuleList(c.stem for c in cols)
        self.nodes = nn.ModuleList(nn.ModuleList(c.blocks[l] for c in cols) for l in range(L))
        self.branch_logits = nn.Parameter(torch.zeros(L, T, T))
        self.heads = make_heads(cols[0], tasks)
        self.register_buffer("tree", torch.zeros(L, T, dtype=torch.long))
        self.hard, self.mode, self.temperature = bool(hard), "search", 5.0
        self._index = {t: i for i, t in enumerate(self.task_names)}

    # ------------------------------------------------------------------ tree
    @property
    def num_blocks(self) -> int:
        return len(self.nodes)

    def set_mode(self, mode: str) -> "LearningToBranch":
        if mode not in MODES:
            raise ValueError(f"ltb mode must be one of {', '.join(MODES)} (got {mode!r})")
        self.mode = mode
        return self

    def argmax_tree(self) -> torch.Tensor:
        """Each node's most probable parent [L, T] (ties: the lowest index)."""
        return self.branch_logits.detach().argmax(dim=-1)

    def branch_probs(self) -> torch.Tensor:
        return F.softmax(self.branch_logits.detach(), dim=-1)

    def set_tree(self, tree) -> "LearningToBranch":
        t = torch.as_tensor(tree).to(dtype=torch.long, device=self.tree.device)
        T = len(self.task_names)
        if tuple(t.shape) != tuple(self.tree.shape) or int(t.min()) < 0 or int(t.max()) >= T:
            raise ValueError(f"ltb tree must be a [{self.num_blocks}, {T}] table of parent indices in 0..{T - 1}, "
                             f"got {t.tolist()}")
        self.tree.copy_(t)
        return self.set_mode("fixed")

    def epoch_stats(self) -> Optional[dict]:
        """While searching: the branching probabilities [block][child node][parent node]."""
        if self.mode == "fixed":
            return None
        return {"branch_probs": [[[round(v, 4) for v in r] for r in blk] for blk in self.branch_probs().tolist()]}

    def _active_tree(self):
        return self.tree if self.mode == "fixed" else self.argmax_tree()

    # ------------------------------------------------------------------ forward
    def forward_tasks(self, x, tasks: Sequence[str]):
        if self.training and self.mode != "fixed":
            return self._forward_mixed(x, tasks)
        return self._forward_tree(x, tasks, self._active_tree().tolist())

    def _forward_mixed(self, x, tasks):
        T, L = len(self.task_names), self.num_blocks
        h = torch.stack([stem(x) for stem in self.stems])  # [T, B, ...]
        for l in range(L):
            if self.mode == "warmup":
                w = torch.full((T, T), 1.0 / T, device=h.device, dtype=h.dtype)
            else:
                w = F.gumbel_softmax(self.branch_logits[l], tau=self.temperature, hard=self.hard, dim=-1)
            inputs = torch.einsum("kj,jb...->kb...", w.to(h.dtype), h)
            ks = range(T) if l < L - 1 else [self._index[t] for t in tasks]
            out = [self.nodes[l][k](inputs[k], {}) for k in ks]
            if l < L - 1:
                h = torch.stack(out)
        return {t: self.heads[t](o) for t, o in zip(tasks, out)}

    def _forward_tree(self, x, tasks, tree: List[List[int]]):
        cache: Dict[tuple, torch.Tensor] = {}

        def node(level: int, k: int):  # level 0 = stems, level l + 1 = block l
            if (level, k) not in cache:
                if level == 0:
                    cache[(0, k)] = self.stems[k](x)
                else:
                    cache[(level, k)] = self.nodes[level - 1][k](node(level - 1, tree[level - 1][k]), {})
            return cache[(level, k)]

        # build bottom-up in level order so shared prefixes are computed once
        chains = {t: _ltb.chain(tree, self._index[t]) for t in tasks}
        for level in range(self.num_blocks + 1):
            for t in tasks:
                node(level, chains[t][level])
        return {t: self.heads[t](cache[(self.num_blocks, self._index[t])]) for t in tasks}

    # ------------------------------------------------------------------ parameters
    def _path_parameters(self, t: int) -> List[nn.Parameter]:
        c = _ltb.chain(self.tree.tolist(), t)
        ps = list(self.stems[c[0]].parameters())
        for l in range(self.num_blocks):
            ps += list(self.nodes[l][c[l + 1]].parameters())
        return ps

    def shared_parameters(self) -> List[nn.Parameter]:
        if self.mode != "fixed":
            return (list(self.stems.parameters()) + [p for col in self.nodes[:-1] for p in col.parameters()]
                    + [self.branch_logits])
        uses: Dict[int, int] = {}
        by_id = {}
        for t in range(len(self.task_names)):
            for p in self._path_parameters(t):
                uses[id(p)] = uses.get(id(p), 0) + 1
                by_id[id(p)] = p
        return [by_id[i] for i, n in uses.items() if n >= 2]

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        head = list(self.heads[task].parameters())
        if self.mode != "fixed":
            return unique(self.shared_parameters() + list(self.nodes[-1][self._index[task]].parameters()) + head)
        return unique(self._path_parameters(self._index[task]) + head)

    def last_shared_parameters(self) -> List[nn.Parameter]:
        if self.mode != "fixed" and self.num_blocks > 1:
            return [p for col in self.nodes[-2] for p in col.parameters()]
        return super().last_shared_parameters()

    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"stems": list(self.stems.parameters()), "nodes": list(self.nodes.parameters()),
                "branching": [self.branch_logits], **{f"head:{t}": list(h.parameters()) for t, h in self.heads.items()}}

    def deployed_parameters(self) -> List[nn.Parameter]:
        """Fixed mode: the union of every task's path (stems, nodes, heads), each once."""
        return unique(p for t in self.task_names for p in self.task_parameters(t))


def _fraction(name, value, positive: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = -1.0
    if not (v > 0 if positive else v >= 0):
        raise ValueError(f"procedure.{name} must be a fraction of trainer.epochs {'>' if positive else '>='} 0 "
                         f"(got {value!r})")
    return v


@PROCEDURES.register("ltb")
class LTBProcedure(Procedure):
    # the retrained tree leaves the pruned columns without gradients, which DDP (without
    # find_unused_parameters) rejects; not tested under torchrun
    distributed = False

    def __init__(self, search: float = 1.0, retrain: float = 1.0, warmup: float = 0.0,
                 init_temperature: float = 5.0, branch_lr: Optional[float] = None):
        self.search, self.retrain = _fraction("search", search, True), _fraction("retrain", retrain, True)
        self.warmup = _fraction("warmup", warmup, False)
        if not float(init_temperature) > 0:
            raise ValueError(f"procedure.init_temperature must be > 0 (got {init_temperature!r})")
        if branch_lr is not None and not float(branch_lr) > 0:
            raise ValueError(f"procedure.branch_lr must be > 0 or null (got {branch_lr!r})")
        self.init_temperature = float(init_temperature)
        self.branch_lr = None if branch_lr is None else float(branch_lr)

    def __call__(self, ctx: RunContext) -> ProcedureResult:
        t_start, data, tasks = time.perf_counter(), ctx.data, ctx.data.tasks
        trainer = ctx.make_trainer()
        E = trainer.epochs
        n_search, n_retrain = max(1, round(self.search * E)), max(1, round(self.retrain * E))
        n_warm = min(n_search, round(self.warmup * E))
        model = ctx.build_model(tasks)
        if not isinstance(model, LearningToBranch):
            raise ValueError(f"procedure ltb needs arch=ltb (got arch={ctx.cfg['arch']['name']})")
        init_state = copy.deepcopy(model.state_dict())
        val_only = MTLData(data.name, tasks, data.input_shape,
                           {"train": data.splits["train"], "val": data.splits["val"], "test": data.splits["val"]},
                           dict(data.info))
        phases = []
        t0 = time.perf_counter()
        self._search(ctx, trainer, model, n_search, n_warm)
        trained = sum(p.numel() for p in model.parameters())
        tree, probs = model.argmax_tree().cpu(), model.branch_probs().cpu()
        phases.append({"phase": "search", "epochs": n_search, "warmup_epochs": n_warm,
                       "wall_time_s": round(time.perf_counter() - t0, 3)})

        t0 = time.perf_counter()
        final = ctx.build_model(tasks)
        final.load_state_dict(init_state)
        final.set_tree(tree)
        rfit = ctx.make_trainer(epochs=n_retrain).fit(final, ctx.build_balancer(data.task_names), val_only,
                                                      seed=ctx.seed, slot="retrain", on_epoch=self._log(ctx, "retrain"))
        phases.append({"phase": "retrain", "epochs": n_retrain, "wall_time_s": round(time.perf_counter() - t0, 3)})
        t0 = time.perf_counter()
        test, test_losses = trainer.evaluate(final, data.splits["test"], tasks)
        phases.append({"phase": "test", "wall_time_s": round(time.perf_counter() - t0, 3)})
        total = time.perf_counter() - t_start
        fit = FitResult(rfit.history, rfit.selected_epoch, rfit.val, rfit.val_losses, test, test_losses,
                        wall_time_s=total)
        params, flops = _ltb.costs(final, data.input_shape, trained)
        parents, names = tree.tolist(), data.task_names
        info = {"tree": {"tasks": names, "parents": parents, "groups": _ltb.groups(parents, names),
                         "shared_levels": _ltb.shared_levels(parents, names),
                         "description": _ltb.describe(parents, names),
                         "branch_probs": [[[round(v, 4) for v in row] for row in blk] for blk in probs.tolist()]},
                "phases": phases, "cost": {"wall_time_s": round(total, 3), "epochs": n_search + n_retrain}}
        ctx.say(f"ltb tree: {info['tree']['description']}")
        return ProcedureResult(fit=fit, model=final, info=info, params=params, flops=flops)

    def _search(self, ctx: RunContext, trainer, model: LearningToBranch, n_search: int, n_warm: int) -> None:
        """The search epochs on the trainer's blocks (resumable from slot ``search``)."""
        data, tasks, logits = ctx.data, ctx.data.tasks, model.branch_logits
        balancer = ctx.build_balancer(data.task_names)
        s = trainer.prepare(model, balancer, tasks, params=[p for p in model.parameters() if p is not logits])
        s.optimizer.add_param_group({"params": [logits], "lr": self.branch_lr or s.optimizer.defaults["lr"],
                                     "weight_decay": 0.0})
        s.scheduler = trainer.make_scheduler(s.optimizer)
        s.generators["data"] = torch.Generator().manual_seed(int(ctx.seed))
        slot = trainer.slot("search")
        if trainer.restore(s, slot) is not None:
            return

        def epoch(e: int) -> dict:
            model.set_mode("warmup" if e <= n_warm else "search")
            model.temperature = self.init_temperature / e ** 0.5
            batches = data.splits["train"].batches(trainer.batch_size, shuffle=True, generator=s.generators["data"],
                                                   drop_last=True)
            train_loss = trainer.train_pass(s, batches, where=f"ltb search {e}/{n_search}")
            row = {"phase": "search", **trainer.epoch_row(s, e, train_loss), "mode": model.mode,
                   "temperature": round(model.temperature, 6)}
            row["val"], row["val_loss"] = trainer.evaluate(model, data.splits["val"], tasks)
            row["tree"] = model.argmax_tree().tolist()
            return row

        trainer.run_epochs(s, n_search, epoch, slot, self._log(ctx, "search"))
        model.set_mode("search")
        trainer.finish(s, slot, {"tree": model.argmax_tree().tolist()})

    @staticmethod
    def _log(ctx: RunContext, phase: str):
        return lambda row: ctx.log_epoch({**row, "phase": phase})
