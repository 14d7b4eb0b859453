"""AdaShare's policy search (phase 2 of the ``adashare`` procedure), on the trainer's building
blocks: each search cycle is one epoch of ``Trainer.run_epochs`` (scheduler step,
checkpoint at its end, the log row), made of a weight pass (``Trainer.train_pass`` with the
trainer's step: autocast, DDP shard, finite-loss check) and a policy pass (the same pass
with ``policy_step``); the session checkpoints the policy optimizer, the data generator and
the search state (temperature, best cycle), so a run killed mid-search resumes at the last
finished cycle and ends exactly as an uninterrupted one.

Losses (reference: sunxm2357/AdaShare ``envs/blockdrop_env.py``):
sparsity = Σ_t mean over the curriculum blocks of −log p_t,l(skip) (``get_sparsity_loss2``:
the cross-entropy towards "skip", unweighted when the sharing loss is on, as in the
reference's settings). Sharing loss, ``sharing_form``:

* ``reference`` (``get_hamming_loss`` with ``diff_sparsity_weights: True``, the reference's
  NYUv2 / Cityscapes / Taskonomy settings): Σ_{i<j} Σ_{l=0..L−1} w_l |x_i,l − x_j,l| over ALL
  blocks, x = the EXECUTE logit alone, w_l = (l + 1) / L (higher blocks weigh more). As in
  the reference, whose policy optimiser (Adam with weight decay) updates the whole logit
  tensors, the logits of the blocks before the curriculum move too (through this term and
  the weight decay; the task loss and the sparsity term do not reach them).
* ``log_odds`` (mtlbench's earlier form, the procedure's default): Σ_{i<j} Σ_{l ≥ start}
  w_l |z_i,l − z_j,l| over the curriculum blocks only, z = logit(execute) − logit(skip),
  with ``sharing_direction: paper`` w_l = (L − l) / L (lower blocks weigh more, as the paper's
  text states) or ``reference`` w_l = (l + 1) / L; the logits before the curriculum keep their
  values exactly. It is a different regulariser, not the reference's under another name:
  it penalises disagreement of the execute probabilities (P = sigmoid(z)), while the
  reference penalises disagreement of the execute logit alone (the skip logits move freely,
  so two tasks may agree on x and still differ in P); the two differ as soon as the logits
  move, whatever the initialisation, and their weights run in opposite directions over
  the blocks with ``sharing_direction: paper``.

Search-time evaluation (``search_eval_policy``): ``argmax`` (the hard argmax policy) or
``sample`` (the reference's ``eval`` during search with ``hard_sampling: False``: a policy
drawn from the execute probabilities for every validation batch, seeded, resumable).
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mtlbench.engine.trainer import task_losses
from mtlbench.methods.adashare.arch import SKIP, AdaShare


def sparsity_loss(logits: torch.Tensor, start: int) -> torch.Tensor:
    """Σ_t mean_{l >= start} −log softmax(logits[t, l])[skip]."""
    return -F.log_softmax(logits[:, start:], dim=-1)[..., SKIP].mean(dim=1).sum()


def sharing_weights(num_blocks: int, direction: str = "paper") -> torch.Tensor:
    l = torch.arange(num_blocks, dtype=torch.float32)
    return (num_blocks - l) / num_blocks if direction == "paper" else (l + 1) / num_blocks


SHARING_FORMS = ("log_odds", "reference")


def sharing_loss(logits: torch.Tensor, start: int, weights: torch.Tensor, form: str = "log_odds") -> torch.Tensor:
    """``log_odds``: Σ_{i<j} Σ_{l >= start} w_l |z_i,l − z_j,l| with z the execute log-odds;
    ``reference``: Σ_{i<j} Σ_l (l+1)/L |x_i,l − x_j,l| over every block, x the execute logit
    (``weights`` and ``start`` unused)."""
    if form == "reference":
        z, start = logits[..., 0], 0
        weights = sharing_weights(z.shape[1], "reference")
    else:
        z = logits[..., 0] - logits[..., 1]
    T = z.shape[0]
    if T < 2:
        return z.sum() * 0.0
    i, j = torch.triu_indices(T, T, offset=1)
    diff = (z[i, start:] - z[j, start:]).abs()
    return (diff * weights[start:].to(z)).sum()


def relative_score(val: dict, val_loss: dict, ref: dict, ref_loss: dict, tasks, use: str = "metrics") -> float:
    """Mean over tasks of the signed relative change vs ``ref`` (positive = better)."""
    terms = []
    for t in tasks:
        hib, per = t.higher_is_better, []
        if use == "metrics":
            for m, v in val.get(t.name, {}).items():
                r = ref.get(t.name, {}).get(m)
                if r is not None and math.isfinite(r) and math.isfinite(v) and r != 0:
                    per.append((1 if hib.get(m, True) else -1) * (v - r) / abs(r))
        if not per:
            v, r = val_loss.get(t.name, math.nan), ref_loss.get(t.name, math.nan)
            per = [-(v - r) / abs(r)] if math.isfinite(v) and math.isfinite(r) and r != 0 else []
        if per:
            terms.append(sum(per) / len(per))
    return sum(terms) / len(terms) if terms else -math.inf


def split_train(train, fraction: float, seed: int):
    """(weight part, policy part): a seeded disjoint split of the train split."""
    n = len(train)
    n_policy = int(round(n * fraction))
    if n_policy < 1 or n - n_policy < 1:
        raise ValueError(f"adashare: the train split ({n} samples) is too small to split into weight and "
                         f"policy parts (policy_fraction={fraction}); raise dataset.limit")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return train.subset(perm[n_policy:]), train.subset(perm[:n_policy])


def policy_step(p, trainer, start: int, sw: torch.Tensor, lam: torch.Tensor):
    """One policy update (weights frozen): Σ_t λ_t L_t + sparsity + sharing on the logits;
    the logits of the blocks before the curriculum keep their values exactly."""
    def step(s, batch):
        model: AdaShare = s.model
        logits, opt = model.policy_logits, s.optimizers["policy"]
        batch, preds, _ = trainer.forward(s, batch)
        losses = task_losses(s.tasks, preds, batch)
        task_loss = (torch.stack([losses[t.name] for t in s.tasks]) * lam).sum()
        sp, sh = sparsity_loss(logits, start), sharing_loss(logits, start, sw, p.sharing_form)
        opt.zero_grad(set_to_none=True)
        (task_loss + p.sparsity_weight * sp + p.sharing_weight * sh).backward()
        if start and p.sharing_form == "log_odds":
            logits.grad[:, :start] = 0
            kept = logits.detach()[:, :start].clone()
            opt.step()
            with torch.no_grad():
                logits[:, :start] = kept
        else:
            opt.step()
        # a step that made the logits non-finite reports a non-finite loss at this step
        # (the trainer's finite check names it), not a cycle later in the weight pass
        task_loss = torch.where(torch.isfinite(logits).all(), task_loss, task_loss.new_tensor(float("nan")))
        return torch.stack([task_loss, sp, sh]).detach()
    return step


def search(p, ctx, trainer, model: AdaShare, balancer, n_cycles: int, ref, ref_loss, on_epoch) -> dict:
    """Run the search cycles (resumable); returns the best cycle's policy state."""
    data, tasks = ctx.data, ctx.data.tasks
    weight_part, policy_part = split_train(data.splits["train"], p.policy_fraction, ctx.seed)
    L, logits = model.num_blocks, model.policy_logits
    model.to(trainer.device)
    weights = [q for q in list(model.parameters()) + list(balancer.parameters()) if q is not logits]

    def trainable(w: bool):
        for q in weights:
            q.requires_grad_(w)
        logits.requires_grad_(not w)

    trainable(True)
    s = trainer.prepare(model, balancer, tasks, params=[q for q in model.parameters() if q is not logits])
    if p.search_optimizer:
        s.optimizer = s.optimizers["main"] = instantiate(p.search_optimizer)([q for q in weights if q.requires_grad])
        s.scheduler = trainer.make_scheduler(s.optimizer)
    s.optimizers["policy"] = torch.optim.Adam([logits], lr=p.policy_lr, weight_decay=p.policy_weight_decay)
    s.generators["data"] = torch.Generator().manual_seed(int(ctx.seed) + 1)
    s.generators["eval_policy"] = torch.Generator().manual_seed(int(ctx.seed) + 2)
    s.state = {"tau": p.init_temperature, "best": None, "evaluated": []}
    slot = trainer.slot("search")
    done = trainer.restore(s, slot)
    if done is not None:
        return done
    first_eligible = L * p.curriculum_speed + 1
    sw = sharing_weights(L, p.sharing_direction).to(trainer.device)

    def batches(split, steps: Optional[int]):
        it = split.batches(trainer.batch_size, shuffle=True, generator=s.generators["data"], drop_last=True)
        return itertools.islice(it, int(steps)) if steps else it

    def cycle(c: int) -> dict:
        k = min(L, (c - 1) // p.curriculum_speed + 1) if p.curriculum else L
        model.num_train_blocks, model.temperature = k, s.state["tau"]
        trainable(True)
        model.set_mode("search")
        train_loss = trainer.train_pass(s, batches(weight_part, p.weight_steps), where=f"search cycle {c}")
        row = {"phase": "search", **trainer.epoch_row(s, c, train_loss), "cycle": c, "curriculum_blocks": k,
               "temperature": s.state["tau"], "val": {}}
        if c >= first_eligible or c == n_cycles:
            sampler = s.generators["eval_policy"] if p.search_eval_policy == "sample" else None
            _select(p, trainer, model, data, tasks, ref, ref_loss, s.state, c, k, row, sampler)
        trainable(False)
        lam = balancer.weights() or {}
        lam_t = torch.tensor([float(lam.get(t.name, 1.0)) for t in tasks], device=trainer.device)
        row["policy_loss"] = trainer.train_pass(s, batches(policy_part, p.policy_steps), names=("task", "sparsity",
                                                "sharing"), step=policy_step(p, trainer, model.frozen_blocks(), sw,
                                                                             lam_t), where=f"policy pass {c}",
                                                fix="lower procedure.policy_lr")
        row["execute_prob"] = [[round(v, 4) for v in r] for r in model.execute_probs().tolist()]
        s.state["tau"] *= p.temperature_decay
        return row

    try:
        trainer.run_epochs(s, n_cycles, cycle, slot, on_epoch)
    finally:
        trainable(True)
    best = dict(s.state["best"], evaluated=s.state["evaluated"])
    best["phase_info"] = {"final_temperature": s.state["tau"], "first_selection_cycle": min(first_eligible, n_cycles),
                          "weight_samples": len(weight_part), "policy_samples": len(policy_part)}
    trainer.finish(s, slot, best)
    return best


def _select(p, trainer, model, data, tasks, ref, ref_loss, state: dict, c: int, k: int, row: dict,
            sampler: Optional[torch.Generator] = None) -> None:
    """Evaluate on val with the current weights, the argmax policy or (``sampler``) a policy
    sampled per batch; keep the best cycle."""
    policy = model.argmax_policy()
    if sampler is None:
        model.set_policy(policy)
    else:
        model.eval_sampler = sampler
    try:
        val, val_loss = trainer.evaluate(model, data.splits["val"], tasks)
    finally:
        model.eval_sampler = None
    score = relative_score(val, val_loss, ref, ref_loss, tasks, p.selection_score)
    row.update(val=val, val_loss=val_loss, val_score=score, policy=policy.int().tolist(),
               eval_policy="argmax" if sampler is None else "sample")
    state["evaluated"].append({"cycle": c, "val_score": score})
    if state["best"] is None or score > state["best"]["score"]:
        state["best"] = {"score": score, "cycle": c, "logits": model.policy_logits.detach().cpu().clone(),
                         "num_train_blocks": k, "probs": model.execute_probs().tolist()}
    model.set_mode("search")
