"""``python -m mtlbench bench eval``: the cost of evaluation.

1. Dense metric updates on one NYUv2-sized batch (8 images, 13 classes, 288x384 labels;
   predictions at label resolution and at 1/8 resolution): mtlbench's metric-group update
   (``Task.metric_group().update``) per task kind and for the whole batch, next to a plain
   reference computation of the same metrics written here in the field's straightforward
   formulation, the way LibMTL's NYUv2 metrics compute them (``examples/nyu/utils.py``:
   softmax + arg-max + bincount for the confusion matrix; masked_select and a host read
   per batch for depth; normalise, acos of the clamped dot product and a copy of the
   valid angles to the host for normals; coarse predictions upsampled once per task first,
   as LibMTL's ``process_preds``). Interleaved repeats, medians, ratio printed last; the
   largest difference between the two sides' metric values is printed too (the median:
   mtlbench's 0.01-degree histogram vs the exact median, up to 0.005).
2. Evaluation vs training throughput (samples/s) on ``scenes`` with hard sharing and
   equal weights through the common trainer (``Trainer.evaluate`` / ``Trainer.train_pass``
   on the same real samples, interleaved repeats, medians).

Targets (the headline lines, last): dense update <= 0.5x the reference formulation on the
whole batch; evaluation throughput >= 2x training throughput. ``--profile`` adds a
``torch.profiler`` table of one whole-batch update.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from mtlbench.tasks.dense import DepthTask, NormalTask, SegmentationTask

B, CLASSES, H, W = 8, 13, 288, 384


def nyu_batch(low: bool, seed: int = 0) -> Dict[str, tuple]:
    """Predictions correlated with their labels (as a trained model's), label statistics
    like NYUv2's: ignore pixels, invalid depth, invalid (all-zero) normals."""
    g = torch.Generator().manual_seed(seed)
    seg_t = torch.randint(0, CLASSES, (B, H, W), generator=g)
    seg_t[:, :12] = -1
    dep_t = torch.rand(B, 1, H, W, generator=g) * 9 + 0.5
    dep_t[:, :, -10:] = 0
    nor_t = F.normalize(torch.randn(B, 3, H, W, generator=g) + torch.tensor([0, 0, 2.0]).view(1, 3, 1, 1), dim=1)
    nor_t[:, :, :, :8] = 0
    seg_p = 3 * F.one_hot(seg_t.clamp_min(0), CLASSES).permute(0, 3, 1, 2).float() \
        + 2 * torch.randn(B, CLASSES, H, W, generator=g)
    dep_p = dep_t * (1 + 0.2 * torch.randn(B, 1, H, W, generator=g))
    nor_p = nor_t + 0.4 * torch.randn(B, 3, H, W, generator=g)
    preds = {"seg": seg_p, "depth": dep_p, "normal": nor_p}
    if low:
        preds = {k: F.interpolate(v, size=(H // 8, W // 8), mode="bilinear", align_corners=True)
                 for k, v in preds.items()}
    return {"seg": (preds["seg"], seg_t), "depth": (preds["depth"], dep_t), "normal": (preds["normal"], nor_t)}


# ----------------------------------------------------------------------------- reference
class Reference:
    """The straightforward formulation (as LibMTL's NYUv2 metrics), per-batch updates."""

    def __init__(self):
        self.conf = torch.zeros(CLASSES, CLASSES, dtype=torch.long)
        self.abs, self.rel, self.npix, self.angles = [], [], [], []

    @staticmethod
    def upsample(pred, target):
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=True)
        return pred

    def seg(self, pred, gt):
        label = self.upsample(pred, gt).softmax(1).argmax(1).flatten()
        gt = gt.long().flatten()
        keep = (gt >= 0) & (gt < CLASSES)
        self.conf += torch.bincount(CLASSES * gt[keep] + label[keep], minlength=CLASSES ** 2).view(CLASSES, CLASSES)

    def depth(self, pred, gt):
        pred = self.upsample(pred, gt)
        m = (gt.sum(1) != 0).unsqueeze(1)
        p, g = pred.masked_select(m), gt.masked_select(m)
        n = torch.nonzero(m).size(0)
        self.abs.append(((p - g).abs().sum() / n).item())
        self.rel.append(((p - g).abs().div(g).sum() / n).item())
        self.npix.append(p.numel())

    def normal(self, pred, gt):
        pred = self.upsample(pred, gt)
        pred = pred / torch.norm(pred, p=2, dim=1, keepdim=True)
        m = gt.sum(1) != 0
        cos = (pred * gt).sum(1).masked_select(m).clamp(-1, 1)
        self.angles.append(np.degrees(torch.acos(cos).cpu().numpy()))

    def scores(self) -> Dict[str, Dict[str, float]]:
        h = self.conf.double()
        tp = h.diag()
        a, w = np.concatenate(self.angles).astype(np.float64), np.array(self.npix, dtype=float)
        iou = tp / (h.sum(0) + h.sum(1) - tp)
        return {"seg": {"miou": float(iou.mean()), "pixel_acc": float(tp.sum() / h.sum())},
                "depth": {"abs_err": float((np.array(self.abs) * w).sum() / w.sum()),
                          "rel_err": float((np.array(self.rel) * w).sum() / w.sum())},
                "normal": {"mean_angle": float(a.mean()), "median_angle": float(np.median(a)),
                           **{f"within_{t:g}": 100 * float(np.mean(a < t)) for t in (11.25, 22.5, 30)}}}


# ----------------------------------------------------------------------------- timing
def _median_ms(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Interleaved: every repeat runs each function once, in turn; medians in ms."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def dense_rows(repeats: int) -> List[dict]:
    tasks = {"seg": SegmentationTask("seg", CLASSES), "depth": DepthTask("depth"), "normal": NormalTask("normal")}
    rows = []
    for low in (False, True):
        batch = nyu_batch(low)
        groups = {k: t.metric_group() for k, t in tasks.items()}
        ref = Reference()
        fns = {}
        for k in tasks:
            p, t = batch[k]
            fns[("mtl", k)] = lambda k=k, p=p, t=t: groups[k].update(p, t, None)
            fns[("ref", k)] = lambda k=k, p=p, t=t: getattr(ref, k)(p, t)
        fns[("mtl", "all")] = lambda: [groups[k].update(*batch[k], None) for k in tasks]
        fns[("ref", "all")] = lambda: [getattr(ref, k)(*batch[k]) for k in tasks]
        ms = _median_ms(fns, repeats)
        res, want = "1/8" if low else "label", ref.scores()  # both sides saw the same updates
        for k in (*tasks, "all"):
            got = groups[k].compute() if k in groups else {}
            diff = max((abs(got[m] - v) for m, v in want.get(k, {}).items()), default=None)
            rows.append({"pred": res, "task": k, "mtl": ms[("mtl", k)], "ref": ms[("ref", k)],
                         "ratio": ms[("mtl", k)] / ms[("ref", k)], "diff": diff})
    return rows


def profile_table(rows: int = 18) -> str:
    from torch.profiler import ProfilerActivity, profile

    tasks = [SegmentationTask("seg", CLASSES), DepthTask("depth"), NormalTask("normal")]
    batch = nyu_batch(False)
    groups = [t.metric_group() for t in tasks]
    for g, t in zip(groups, tasks):
        g.update(*batch[t.name], None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for g, t in zip(groups, tasks):
            g.update(*batch[t.name], None)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def scenes_throughput(repeats: int, steps: int, batch_size: int, eval_batch_size: int) -> dict:
    """Samples/s of ``Trainer.train_pass`` and ``Trainer.evaluate`` on the same samples."""
    from mtlbench.backbones import build_backbone
    from mtlbench.bench.archs import dataset_batches
    from mtlbench.core.data import TensorSplit
    from mtlbench.core.registry import ARCHS, BALANCERS
    from mtlbench.engine.trainer import Trainer

    data, batches, bcfg = dataset_batches("scenes", batch_size, steps)
    trainer = Trainer(epochs=1, batch_size=batch_size, eval_batch_size=eval_batch_size, device="cpu",
                      progress=False)
    torch.manual_seed(0)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone(bcfg, data.input_shape), data.tasks)
    session = trainer.prepare(model, BALANCERS.get("equal")(data.task_names), data.tasks)
    split = TensorSplit(torch.cat([b.x for b in batches]),
                        {t: torch.cat([b.targets[t] for b in batches]) for t in data.task_names})
    n = len(split)
    ms = _median_ms({"train": lambda: trainer.train_pass(session, batches),
                     "eval": lambda: trainer.evaluate(model, split, data.tasks)}, repeats)
    return {"samples": n, "train_sps": n / ms["train"] * 1e3, "eval_sps": n / ms["eval"] * 1e3}


def main(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench eval",
                                description="dense metric updates vs a reference formulation; eval vs train throughput")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--steps", type=int, default=8, help="scenes: training batches per timed pass")
    p.add_argument("--batch-size", type=int, default=32, help="scenes: training batch size (its default)")
    p.add_argument("--eval-batch-size", type=int, default=100, help="scenes: evaluation batch size (its default)")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one update")
    ns = p.parse_args(args)
    torch.set_num_threads(ns.threads)
    rows = dense_rows(ns.repeats)
    print(f"NYUv2-sized batch: {B} x {CLASSES} classes x {H}x{W} labels, CPU threads {torch.get_num_threads()}, "
          f"medians of {ns.repeats} interleaved repeats; reference = the LibMTL-style formulation")
    print(f"{'predictions':12s} {'task':7s} {'max |value diff|':>17s} {'mtlbench ms':>12s} {'reference ms':>13s} "
          f"{'ratio':>7s}")
    for r in rows:
        diff = "-" if r["diff"] is None else f"{r['diff']:.2e}"
        print(f"{r['pred']:12s} {r['task']:7s} {diff:>17s} {r['mtl']:12.1f} {r['ref']:13.1f} {r['ratio']:7.2f}")
    if ns.profile:
        print(profile_table())
    tp = scenes_throughput(ns.repeats, ns.steps, ns.batch_size, ns.eval_batch_size)
    print(f"scenes, hard sharing + equal, {tp['samples']} samples: train {tp['train_sps']:.1f} samples/s "
          f"(batch {ns.batch_size}), eval {tp['eval_sps']:.1f} samples/s (batch {ns.eval_batch_size})")
    whole = next(r for r in rows if r["pred"] == "label" and r["task"] == "all")
    low = next(r for r in rows if r["pred"] == "1/8" and r["task"] == "all")
    print(f"dense update / reference, whole batch: {whole['ratio']:.2f} at label resolution, "
          f"{low['ratio']:.2f} at 1/8 (target <= 0.5)")
    print(f"eval / train throughput on scenes: {tp['eval_sps'] / tp['train_sps']:.2f} (target >= 2)")
    return 0
