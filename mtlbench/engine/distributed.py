"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m mtlbench run ...`` starts N processes; each sees
``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` and joins one process group (NCCL on CUDA,
gloo on CPU). Semantics, chosen so that N processes give the single-process update:

* Every rank draws the same global batch order (same seed); each global batch of
  ``trainer.batch_size`` samples is cut into N equal contiguous shards, one per rank
  (``batch_size`` must be divisible by N). The model is wrapped in
  ``torch.nn.parallel.DistributedDataParallel``, which averages gradients over ranks, so
  one step on N half-batches equals one single-process step on the whole batch
  (tested with gloo, atol 1e-6). A balancer's own parameters (UW's log-variances) are
  not inside the DDP module: their gradients are averaged explicitly.
* Per-task label masks: a task's loss is the mean over the labelled samples *of the
  rank's shard*; with masks the average of shard means differs from the whole-batch
  mean when shards hold different numbers of labelled samples (as with any DDP).
* BatchNorm: DDP keeps per-rank batch statistics (each rank normalises its own shard),
  so with BN layers N ranks are not bit-identical to one process; convert with
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (``trainer.sync_batchnorm=true``)
  to normalise over the global batch.
* Evaluation: each rank evaluates every N-th batch of the split; metric accumulators
  are combined on every rank by their declared reductions (``add_state`` on each task's
  metric group and its ``parts()``: sums, counts, confusion matrices and histograms
  summed, collected predictions concatenated), so all ranks report the metrics of the
  whole split.
* Balancers: per-task gradients of parameters (``BalancerContext.grads``) are averaged
  over ranks, so parameter-mode gradient methods see the global batch. A balancer that
  cannot (MGDA's Gram matrix of a representation is per shard) declares
  ``distributed = False`` and is refused with one line, as is a procedure that declares it.
* Only rank 0 writes to the results store (run folder, metrics.jsonl, checkpoints,
  run.json); every rank resumes from rank 0's checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = DistContext()


def from_env(device: str = "auto") -> DistContext:
    """The context of this process: SINGLE unless launched by torchrun with WORLD_SIZE > 1
    (then the default process group is initialised here, once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return ctx


def shard(batch, ctx: DistContext):
    """This rank's contiguous 1/world of a batch (every tensor: x, targets, masks)."""
    if not ctx.active:
        return batch
    n = len(batch)
    if n % ctx.world:
        raise ValueError(f"trainer.batch_size ({n}) must be divisible by the number of processes "
                         f"({ctx.world}) under torchrun")
    k = n // ctx.world
    sl = slice(ctx.rank * k, (ctx.rank + 1) * k)
    return type(batch)(batch.x[sl], {t: y[sl] for t, y in batch.targets.items()},
                       None if batch.masks is None else {t: m[sl] for t, m in batch.masks.items()})


def average_grads(params) -> None:
    """All-reduce (mean) the gradients of parameters DDP does not manage."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def reduce_metrics(metrics: Dict[str, object], loss_sum: Dict, count: Dict, device) -> None:
    """Combine every rank's metric accumulators and loss sums in place (all ranks get the
    totals), by the declared states (``add_state``) of each task's metric group (or list
    of metrics), walked through ``parts()``: tensors are all-reduced with their ``sum`` /
    ``max`` / ``min``; ``cat`` lists are gathered and concatenated in rank order."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    for entry in metrics.values():
        for part in (p for m in (entry if isinstance(entry, (list, tuple)) else [entry]) for p in m.parts()):
            for name, (_, reduce) in part.states.items():
                value = getattr(part, name)
                if reduce == "cat":
                    gathered: List[Optional[list]] = [None] * dist.get_world_size()
                    dist.all_gather_object(gathered, [v.detach().cpu() for v in value])
                    setattr(part, name, [v.to(device) for part_ in gathered for v in part_])
                else:
                    value = value.to(device).clone()
                    dist.all_reduce(value, op=ops[reduce])
                    setattr(part, name, value)
    totals = torch.tensor([[float(loss_sum[t]), float(count[t])] for t in loss_sum], dtype=torch.float64,
                          device=device)
    dist.all_reduce(totals)
    for k, t in enumerate(loss_sum):
        loss_sum[t], count[t] = float(totals[k, 0]), float(totals[k, 1])


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()
