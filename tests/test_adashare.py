"""AdaShare: the architecture (exact hard sharing under an all-execute policy, residual-only
backbones, deployed parameters) and the procedure end to end (phases, outputs, curriculum,
the test split untouched until the final evaluation, retrain from re-initialised weights)."""
import dataclasses
import json

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from mtlbench.backbones.base import build_backbone
from mtlbench.core.registry import ARCHS, BACKBONES, PROCEDURES, load_all
from mtlbench.engine.run import build_data, make_context
from mtlbench.results.store import iter_runs
from mtlbench.tasks import ClassificationTask

load_all()
SMALL_SCENES = ["dataset=scenes", "dataset.n_train=48", "dataset.n_val=16", "dataset.n_test=16",
                "dataset.size=[32,32]", "backbone.width=8"]
BACKBONE_CFGS = [({"name": "small_resnet", "width": 8, "layers": [1, 2, 1, 1]}, (3, 32, 32)),
                 ({"name": "small_cnn", "width": 8, "depths": [1, 1, 1]}, (1, 20, 20)),
                 ({"name": "mlp", "width": 16, "depth": 3}, (12,))]
if "resmlp" in BACKBONES.names():
    BACKBONE_CFGS.append(({"name": "resmlp", "widths": [16, 24, 24]}, (12,)))


def _pair(bcfg, shape):
    tasks = [ClassificationTask("a", 3), ClassificationTask("b", 4), ClassificationTask("c", 2)]
    torch.manual_seed(0)
    hard = ARCHS.get("hard_sharing")(lambda: build_backbone(bcfg, shape), tasks)
    ada = ARCHS.get("adashare")(lambda: build_backbone(bcfg, shape), tasks)
    ada.backbone.load_state_dict(hard.backbone.state_dict())
    ada.heads.load_state_dict(hard.heads.state_dict())
    return hard, ada


@pytest.mark.parametrize("bcfg,shape", BACKBONE_CFGS, ids=[b["name"] for b, _ in BACKBONE_CFGS])
def test_all_execute_policy_is_hard_sharing_exactly(bcfg, shape):
    hard, ada = _pair(bcfg, shape)
    ada.set_policy(torch.ones(3, len(ada.backbone.blocks), dtype=torch.bool))
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(1))
    for train in (False, True):  # eval (running BN stats) and train (batch stats, stats updated alike)
        hard.train(train), ada.train(train)
        h, a = hard(x), ada(x)
        assert all(torch.equal(h[t], a[t]) for t in h)
    assert all(torch.equal(p, q) for p, q in zip(hard.backbone.state_dict().values(),
                                                 ada.backbone.state_dict().values()))
    # a skipping policy changes the output, and deployed parameters shrink
    policy = torch.ones(3, len(ada.backbone.blocks), dtype=torch.bool)
    policy[0, -1] = False
    ada.set_policy(policy)
    ada.eval()
    a = ada(x)
    assert not torch.equal(a["a"], hard.eval()(x)["a"]) and torch.equal(a["b"], hard(x)["b"])
    n = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    assert n(ada.task_parameters("a")) < n(ada.task_parameters("b")) == n(hard.task_parameters("b"))


def test_non_residual_backbone_is_one_line_error(run_cli, capsys):
    assert run_cli("arch=adashare", "backbone=segnet", *SMALL_SCENES) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "residual" in err[0] and "segnet" in err[0]


def _ctx(overrides):
    with initialize_config_module("mtlbench.conf", version_base=None):
        cfg = compose("config", overrides=overrides)
    c = OmegaConf.to_container(cfg, resolve=True)
    return c, make_context(c, build_data(c["dataset"], c["data_root"]), None)


class Recorder:
    """A split that records every use of it in ``events``."""

    def __init__(self, split, events):
        self._split, self._events = split, events

    def __len__(self):
        return len(self._split)

    def __getattr__(self, name):
        self._events.append(("test", name))
        return getattr(self._split, name)


def test_selection_never_reads_test_and_retrain_starts_from_initial_weights():
    c, ctx = _ctx(["method=adashare", "profile=tiny", "trainer.progress=false", *SMALL_SCENES,
                   "procedure.search=3", "procedure.curriculum_speed=1", "trainer.max_steps_per_epoch=1"])
    events, starts, make = [], [], ctx.make_trainer
    ctx.data.splits["test"] = Recorder(ctx.data.splits["test"], events)

    def make_trainer(**kw):
        trainer = make(**kw)
        fit = trainer.fit

        def recording_fit(model, *a, **k):
            starts.append((model, {n: v.clone() for n, v in model.state_dict().items() if n != "policy"}))
            events.append(("fit", len(starts)))
            return fit(model, *a, **k)
        trainer.fit = recording_fit
        return trainer

    ctx = dataclasses.replace(ctx, make_trainer=make_trainer,
                              log_epoch=lambda row: events.append(("log", row["phase"])))
    result = PROCEDURES.get("adashare")(**{k: v for k, v in c["procedure"].items() if k != "name"})(ctx)
    reads = [i for i, e in enumerate(events) if e[0] == "test" and e[1] != "num_batches"]  # a count, not data
    assert reads and events[reads[0]] == ("test", "batches") and len(reads) == 1
    assert reads[0] > max(i for i, e in enumerate(events) if e[0] in ("log", "fit"))
    assert [e[1] for e in events if e[0] == "log"] == ["warmup"] + ["search"] * 3 + ["retrain"]
    assert result.info["selection"]["split"] == "val" and set(result.fit.test) == set(ctx.data.task_names)
    (search_model, warm_start), (retrain_model, retrain_start) = starts
    assert retrain_model is not search_model and retrain_model is result.model
    assert all(torch.equal(warm_start[n], retrain_start[n]) for n in warm_start)
    searched = search_model.state_dict()
    assert any(not torch.equal(searched[n], retrain_start[n]) for n in retrain_start if n.startswith("backbone"))


def test_cli_run_phases_policy_heatmap_params_and_curriculum(run_cli, results_dir):
    assert run_cli("method=adashare", *SMALL_SCENES, "backbone.layers=[1,1,1,1]", "procedure.search=6",
                   "procedure.curriculum_speed=2", "procedure.policy_lr=0.05") == 0
    (folder, rec), = list(iter_runs(results_dir))
    info, L = rec["procedure_info"], 4
    assert rec["method"] == "adashare" and rec["procedure"] == "adashare"
    execute = info["policy"]["execute"]
    assert len(execute) == 3 and all(len(r) == L and set(r) <= {0, 1} for r in execute)
    assert (folder / info["heatmap"]).is_file() and info["heatmap"] == "policy.png"
    p, f = rec["params"], rec["flops"]
    assert p["total"] <= p["hard_sharing"] < p["trained"] and set(p["per_task"]) == set(rec["tasks"])
    assert set(f["per_task"]) == set(rec["tasks"]) and f["hard_sharing"]["total"] > 0
    # a task's path only drops blocks (the deployed total may exceed hard sharing's when paths branch early)
    assert all(f["per_task"][t] <= f["hard_sharing"]["per_task"][t] for t in rec["tasks"])
    assert [ph["phase"] for ph in info["phases"]] == ["warmup", "search", "retrain", "test"]
    assert info["cost"]["epochs"] == 1 + 6 + 1 and info["cost"]["wall_time_s"] > 0
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup"] + ["search"] * 6 + ["retrain"]
    # curriculum: in cycle c the last k = (c-1)//2 + 1 blocks may change, earlier ones keep 0.5
    for r in (r for r in rows if r["phase"] == "search"):
        k = (r["cycle"] - 1) // 2 + 1
        assert r["curriculum_blocks"] == k
        probs = torch.tensor(r["execute_prob"])
        assert torch.all(probs[:, :L - k] == 0.5)
        assert torch.any(probs[:, L - k:] != 0.5)
    # selection only once every block had its policy passes (cycle > L * speed) or at the end
    assert [e["cycle"] for e in info["selection"]["evaluated"]] == [6]


@pytest.mark.parametrize("dataset,lambdas,speed", [
    ("nyuv2", {"seg": 1.0, "normal": 20.0, "depth": 3.0}, 3),
    ("cityscapes", {"seg": 1.0, "depth": 20.0}, 3),
    ("taskonomy", {"seg": 1.0, "normal": 3.0, "depth": 2.0, "keypoint": 7.0, "edge": 7.0}, 1)])
def test_paper_overlays_are_picked_up_per_dataset(dataset, lambdas, speed):
    with initialize_config_module("mtlbench.conf", version_base=None):
        c = OmegaConf.to_container(compose("config", overrides=["method=adashare", f"dataset={dataset}"]),
                                   resolve=True)
        other = compose("config", overrides=["method=hard_sharing", f"dataset={dataset}"])
        tiny = compose("config", overrides=["method=adashare", f"dataset={dataset}", "profile=tiny"])
    assert c["backbone"]["name"] == "resnet34" and other.backbone.name != "resnet34"
    assert c["balancer"] == {"name": "static", "weights": lambdas, "default": 1.0}
    proc = PROCEDURES.get("adashare")(**{k: v for k, v in c["procedure"].items() if k != "name"})
    assert proc.curriculum_speed == speed and proc.retrain_policy == "sample" and proc.retrain_samples == 8
    assert proc.sharing_form == "reference" and proc.search_eval_policy == "sample"
    assert proc.init_temperature == 5.0 and proc.temperature_decay == 0.965
    assert tiny.trainer.epochs == 1 and tiny.trainer.max_steps_per_epoch == 2  # profile=tiny still wins
    E, steps = c["trainer"]["epochs"], c["procedure"]["weight_steps"]
    if dataset == "taskonomy":  # 20k warm-up, 80k search (400 + 100 per cycle), 30k retrain iterations
        assert (round(proc.warmup * E), round(proc.search * E), E, steps) == (20, 160, 30, 400)
