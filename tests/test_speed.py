"""Precision / layout / compile options and the data path (issue: fast where users train)."""
import math

import pytest
import torch

from mtlbench.backbones.base import build_backbone
from mtlbench.core.data import DatasetSplit
from mtlbench.tasks.dense import DepthTask, SegmentationTask
from mtlbench.core.registry import ARCHS, load_all
from mtlbench.engine.speed import SpeedOptions
from mtlbench.results.store import iter_runs

SCENES = ["dataset=scenes", "dataset.n_train=32", "dataset.n_val=16", "dataset.n_test=16"]


def finite_metrics(results_dir):
    (_, rec), = list(iter_runs(results_dir))
    assert rec["status"] == "completed"
    values = [v for ms in rec["metrics"]["test"].values() for v in ms.values()]
    assert values and all(math.isfinite(v) for v in values)
    return rec


@pytest.mark.parametrize("extra", [[], ["method=mgda"], [*SCENES, "method=uncertainty"], [*SCENES, "method=mtan"]],
                         ids=["multimnist", "mgda", "scenes-uw", "scenes-mtan"])
def test_bf16_autocast_trains_with_finite_metrics(extra, run_cli, results_dir):
    assert run_cli("trainer.amp=bf16", *extra) == 0
    finite_metrics(results_dir)


def test_fp16_on_cpu_is_one_line(run_cli, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is allowed")
    assert run_cli("trainer.amp=fp16") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trainer.amp=bf16" in err[0]


def test_autocast_really_lowers_precision():
    with SpeedOptions("bf16").autocast():
        assert torch.nn.Linear(3, 3)(torch.randn(2, 3)).dtype == torch.bfloat16
    preds = SpeedOptions("bf16").fp32({"a": torch.ones(2, dtype=torch.bfloat16), "b": torch.ones(2, dtype=torch.long)})
    assert preds["a"].dtype == torch.float32 and preds["b"].dtype == torch.long


def test_channels_last_gives_the_same_forward_output():
    load_all()
    tasks = [SegmentationTask("seg", 4), DepthTask("depth")]
    torch.manual_seed(0)
    cfg = {"name": "small_resnet", "width": 8, "layers": [1, 1, 1, 1], "output_stride": 8}
    model = ARCHS.get("hard_sharing")(lambda: build_backbone(cfg, (3, 32, 32)), tasks).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        sp = SpeedOptions(channels_last=True)
        model.to(memory_format=torch.channels_last)
        got = model(sp.layout(x))
    assert sp.layout(x).is_contiguous(memory_format=torch.channels_last)
    for t in ref:
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-4)


def test_channels_last_run(run_cli, results_dir):
    assert run_cli("trainer.channels_last=true", *SCENES) == 0
    finite_metrics(results_dir)


def test_compile_runs_or_falls_back_with_its_message(run_cli, results_dir, capsys):
    assert run_cli("trainer.compile=no_such_backend") == 0
    assert "torch.compile (backend no_such_backend) failed, running eager" in capsys.readouterr().err
    finite_metrics(results_dir)


def test_compile_blocker_is_said():
    class Dynamic(torch.nn.Linear):
        compile_blocker = "its forward samples a policy"

    said = []
    sp = SpeedOptions(compile=True)
    sp.say = said.append
    net = Dynamic(2, 2)
    assert sp.compiled(net) is net
    assert said and "its forward samples a policy" in said[0]


class Noisy(torch.utils.data.Dataset):
    """Each sample gets random 'augmentation' from torch's RNG, like mtlbench.loaders.augment."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.full((3,), float(i)) + torch.rand(3), {"t": torch.tensor(i)}


@pytest.mark.parametrize("opts", [dict(num_workers=2), dict(num_workers=2, persistent_workers=False, prefetch_factor=4)])
def test_workers_change_no_sample(opts):
    def epochs(split):
        g = torch.Generator().manual_seed(7)
        return [[(b.x.clone(), b.targets["t"].clone()) for b in split.batches(5, shuffle=True, generator=g,
                                                                              drop_last=True)] for _ in range(2)]

    ref, got = epochs(DatasetSplit(Noisy(), num_workers=0)), epochs(DatasetSplit(Noisy(), **opts))
    assert len(ref) == len(got) == 2 and len(ref[0]) == 4
    for e_ref, e_got in zip(ref, got):
        for (x0, y0), (x1, y1) in zip(e_ref, e_got):
            assert torch.equal(y0, y1) and torch.equal(x0, x1)
    assert not torch.equal(ref[0][0][0], ref[1][0][0])  # a new order / augmentation each epoch
