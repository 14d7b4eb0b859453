"""Candidate networks for the ``standley`` procedure (Standley et al., ICML 2020): each
candidate is an ordinary mtlbench run (``procedure: single``, ``role: candidate``) whose
config is derived from the main run's, so it lands in the results store under its own
config hash and is reused by any later search with the same protocol.

Derivation (``candidate_config``): the main config without its ``grouping`` and ``preset``
nodes; ``dataset.tasks`` = the group; ``arch`` = the candidate arch's config node
(``ctx.config_node("arch", name)``: composed by Hydra, plugin configs included);
``procedure: single``; ``role: candidate``; ``force: false``
(a forced main run still reuses its candidates); half-size singles get the backbone node
sized by ``half.py`` (encoder width scaled until the measured FLOPs are half the full
network's, head kept); early-stopping candidates (ESA) train ``round(epochs * fraction)``
epochs (at least 1) -- a different config, hence a different cache entry.
"""
from __future__ import annotations

import copy
import time
from typing import Dict, List, Optional, Sequence


def candidate_config(cfg: dict, group: Sequence[str], arch: dict, half_backbone: Optional[dict] = None,
                     epoch_fraction: Optional[float] = None) -> dict:
    c = copy.deepcopy(cfg)
    for key in ("grouping", "preset"):
        c.pop(key, None)
    c["dataset"]["tasks"] = list(group)
    c["arch"] = copy.deepcopy(arch)
    c["procedure"] = {"name": "single"}
    c["role"] = "candidate"
    c["force"] = False
    if half_backbone is not None:
        c["backbone"] = copy.deepcopy(half_backbone)
    if epoch_fraction is not None:
        c["trainer"]["epochs"] = max(1, int(round(int(c["trainer"]["epochs"]) * float(epoch_fraction))))
    return c


class CandidatePool:
    """Runs (or reuses) candidate networks as child runs of ``ctx`` (``ctx.run_child``);
    remembers every record it returned."""

    def __init__(self, ctx, arch: str):
        try:
            self.arch = ctx.config_node("arch", arch)
        except ValueError as exc:
            raise ValueError(f"grouping.arch: {exc}") from None
        self.ctx, self.cfg = ctx, ctx.cfg
        self.say = lambda msg: ctx.say(f"standley: {msg}")
        self.trained: List[str] = []
        self.reused: List[str] = []
        self.train_time_s = 0.0
        self.total: Optional[int] = None  # candidates planned, when known: "candidate k/N"
        self.halves: Dict[str, tuple] = {}   # task -> (backbone node, measured cost info)

    def half_node(self, task: str) -> tuple:
        """(backbone node, cost info) of ``task``'s half-size network (sized once, see half.py)."""
        if task not in self.halves:
            from mtlbench.methods.standley.half import half_backbone

            spec = [t for t in self.ctx.data.tasks if t.name == task]
            build = lambda node: self.ctx.build_model(spec, arch=self.arch, backbone=node)  # noqa: E731
            self.halves[task] = half_backbone(build, dict(self.cfg["backbone"]), self.ctx.data.input_shape)
        return self.halves[task]

    def get(self, group: Sequence[str], half: bool = False, epoch_fraction: Optional[float] = None) -> dict:
        node = self.half_node(group[0])[0] if half else None
        c = candidate_config(self.cfg, group, self.arch, half_backbone=node, epoch_fraction=epoch_fraction)
        name = network_name(group, half)
        label = name + (f" (ESA, {c['trainer']['epochs']} epochs)" if epoch_fraction is not None else "")
        t0 = time.perf_counter()
        rec, cached = self.ctx.run_child(c)
        if rec.get("status") != "completed":
            raise RuntimeError(f"candidate {label} did not complete: {rec.get('reason')}")
        (self.reused if cached else self.trained).append(label)
        self.train_time_s += float(rec.get("train_time_s") or 0.0)
        k = len(self.trained) + len(self.reused)
        self.say(f"candidate {k}{f'/{self.total}' if self.total else ''} {label}: {'cached' if cached else 'trained'} "
                 f"({'' if cached else f'{time.perf_counter() - t0:.1f}s, '}run {rec['run_id']})")
        return rec


def network_name(group: Sequence[str], half: bool = False) -> str:
    return f"{group[0]}_half" if half else "+".join(group)


def score_of(rec: dict, task: str, split: str, metric) -> float:
    """The score used for selection, lower is better: the task's loss (``metric='loss'``), or
    a metric (``{task: metric}``, or 'primary' = the task's first metric), negated when
    higher is better (``direction`` 'auto' = the task's own)."""
    kind, direction = metric
    if kind == "loss":
        return float(rec["losses"][split][task])
    scores = rec["metrics"][split][task]
    name = next(iter(scores)) if kind == "primary" else kind[task]
    if name not in scores:
        raise ValueError(f"grouping.metric: task '{task}' has no metric '{name}' (it has {', '.join(scores)})")
    hib = rec["higher_is_better"][task][name] if direction == "auto" else direction == "higher"
    return -float(scores[name]) if hib else float(scores[name])


def parse_metric(g: dict, tasks: Sequence[str]):
    m, d = g.get("metric", "loss"), g.get("direction", "auto")
    if d not in ("auto", "lower", "higher"):
        raise ValueError(f"grouping.direction must be auto, lower or higher (got {d!r})")
    if m in ("loss", "primary"):
        return m, d
    if isinstance(m, str):
        return {t: m for t in tasks}, d
    if isinstance(m, dict) and set(tasks) <= set(m):
        return dict(m), d
    raise ValueError("grouping.metric must be loss, primary, a metric name or {task: metric} for every task "
                     f"(got {m!r})")


def all_groups(tasks: Sequence[str], min_size: int = 1) -> List[tuple]:
    import itertools

    return [g for r in range(min_size, len(tasks) + 1) for g in itertools.combinations(tasks, r)]
