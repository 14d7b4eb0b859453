"""AdaShare against its reference code (sunxm2357/AdaShare): the hamming (sharing) loss of
``envs/blockdrop_env.py`` by hand, and a run under the paper overlay that records the
reference form, evaluates sampled policies while searching and reports the paper's FLOPs
figure (backbone multiply-adds, each task's path counted separately)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mtlbench.backbones.base import build_backbone
from mtlbench.methods.adashare.search import sharing_loss, sharing_weights
from mtlbench.results.store import iter_runs
from test_loaders import write_mtan

# [T=3, L=4, (execute, skip)]; the skip logits must not matter to the reference form
EXECUTE = [[0.5, 1.0, -1.0, 2.0], [0.5, 0.0, 1.0, 2.0], [1.5, 1.0, 0.0, -2.0]]
SKIP = [[3.0, -1.0, 0.25, 7.0], [0.0, 2.0, -3.0, 1.0], [5.0, 5.0, 5.0, 5.0]]


def test_reference_sharing_loss_by_hand():
    logits = torch.tensor([list(zip(e, s)) for e, s in zip(EXECUTE, SKIP)])
    # w_l = (l+1)/4 = .25 .5 .75 1 over all four blocks, |x_i - x_j| of the execute logits:
    # (0,1): .5*1 + .75*2 = 2.0; (0,2): .25*1 + .75*1 + 1*4 = 5.0; (1,2): .25 + .5 + .75 + 4 = 5.5
    for start in (0, 2):  # the curriculum does not restrict the reference form
        assert float(sharing_loss(logits, start, None, "reference")) == pytest.approx(12.5)
    # the log-odds form (z = execute - skip) over the curriculum blocks 2..3 is another quantity:
    z = [[e - s for e, s in zip(er, sr)] for er, sr in zip(EXECUTE, SKIP)]
    w = sharing_weights(4, "paper").tolist()  # (L-l)/L = 1 .75 .5 .25
    by_hand = sum(w[l] * abs(z[i][l] - z[j][l]) for i, j in ((0, 1), (0, 2), (1, 2)) for l in (2, 3))
    assert float(sharing_loss(logits, 2, sharing_weights(4, "paper"), "log_odds")) == pytest.approx(by_hand)
    assert by_hand != pytest.approx(12.5)


def test_overlay_run_uses_the_reference_form(tmp_path, run_cli, results_dir):
    root = write_mtan(tmp_path / "nyu", n_train=12, n_val=4, H=32, W=32)
    assert run_cli("method=adashare", "dataset=nyuv2", f"dataset.root={root}", "dataset.augment=false",
                   "backbone.width=2", "backbone.head_channels=4", "trainer.batch_size=2",
                   "procedure.retrain_samples=1") == 0
    (_, rec), = list(iter_runs(results_dir))
    info = rec["procedure_info"]
    assert rec["backbone"] == "resnet34"  # the overlay's
    assert info["sharing"] == {"form": "reference", "logit": "execute", "blocks": "all", "weights": "(l+1)/L",
                               "weight": 0.05}
    assert info["search_eval_policy"] == "sample" and info["retrain"]["policy"] == "sample"
    paper, T = rec["flops"]["paper"], len(rec["tasks"])
    # one full ResNet-34 backbone (stem + 16 blocks, no heads) by its own count, in multiply-adds
    backbone = build_backbone({"name": "resnet34", "width": 2, "output_stride": 8}, (3, 32, 32)).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        backbone(torch.zeros(1, 3, 32, 32))
    assert paper["hard_sharing"] == T * counter.get_total_flops() // 2
    assert paper["total"] == sum(paper["per_task"].values()) <= paper["hard_sharing"]


def test_search_time_evaluation_samples_a_policy_per_forward():
    """``search_eval_policy=sample``: in eval mode while searching, each forward runs a hard
    policy drawn from the execute probabilities (the ``eval_sampler`` generator's draw);
    without a sampler the argmax policy."""
    from mtlbench.core.registry import ARCHS
    from mtlbench.tasks import ClassificationTask

    shape, tasks = (12,), [ClassificationTask("a", 3), ClassificationTask("b", 2)]
    torch.manual_seed(0)
    ada = ARCHS.get("adashare")(lambda: build_backbone({"name": "resmlp", "widths": [8, 8, 8]}, shape), tasks)
    with torch.no_grad():  # P(execute) = 0.5 everywhere but block 0 of task a (argmax: skip)
        ada.policy_logits.zero_()
        ada.policy_logits[0, 0] = torch.tensor([-1.0, 1.0])
    ada.set_mode("search").eval()
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))

    def fixed(policy):
        out = ada.set_policy(policy)(x)
        ada.set_mode("search")
        return out

    outs = []
    for seed in range(4):
        ada.eval_sampler = torch.Generator().manual_seed(seed)
        got = ada(x)
        ada.eval_sampler = None
        drawn = ada.sample_policy(torch.Generator().manual_seed(seed))
        want = fixed(drawn)
        assert all(torch.equal(got[t], want[t]) for t in want)
        outs.append(drawn)
    assert len({tuple(p.flatten().tolist()) for p in outs}) > 1  # the draws differ between seeds
    argmax = ada.argmax_policy()
    assert argmax[0, 0].item() is False and all(torch.equal(ada(x)[t], fixed(argmax)[t]) for t in ("a", "b"))
