"""MMoE, CGC and DSelect-k against LibMTL's implementations on identical weights and inputs.

Expected values: the outputs of LibMTL's ``LibMTL/architecture/{MMoE,CGC,DSelect_k}.py``
(median-research-group/LibMTL, commit 4336804), computed once in a scratch script (not part
of the project) that built LibMTL's modules with experts ``Flatten -> Linear(6, 4) -> ReLU``,
decoders ``Linear(4, 1)``, ``img_size=[6]``, copied into them the parameters set by
``fill`` below on the mtlbench model (parameter k of the name-sorted list = 0.3·sin(1.3·i + k)
over its flattened index i) and ran both on ``X``: the outputs agreed to the last float32
digit. Two notes on LibMTL's DSelect_k, both found by that run:

* under numpy 2, ``np.array([...binary_repr chars...]).astype(bool)`` casts every non-empty
  string to True, so every binary code is all ones; the script set the intended codes
  (``astype(int).astype(bool)``) before comparing;
* LibMTL adds the entropy regulariser's gradient for the LAST task's gate only (its
  ``selector_outputs`` is the loop's last value); google-research's ``DSelectKGate`` and
  mtlbench regularise every gate, so only task b's (the last) gate gradient is compared.
"""
import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.registry import ARCHS, load_all
from mtlbench.tasks.tabular import BinaryTask

load_all()
X = (torch.cos(0.9 * torch.arange(18, dtype=torch.float64)) * 1.5).view(3, 6).float()


def fill(model):
    with torch.no_grad():
        for k, (_, p) in enumerate(sorted(model.named_parameters())):
            p.copy_((0.3 * torch.sin(1.3 * torch.arange(p.numel(), dtype=torch.float64) + k)).view_as(p))
    return model


def model(arch, **kw):
    return fill(ARCHS.get(arch)(lambda: build_backbone({"name": "mlp", "width": 8, "depth": 2}, (6,)),
                                [BinaryTask("a"), BinaryTask("b")], expert_blocks="all", expert_hidden=[4], **kw))


LIBMTL_OUTPUTS = {
    "mmoe": ({"num_experts": 3},
             {"a": [-0.25734323, -0.12112476, -0.23562092], "b": [-0.04253128, -0.04669560, -0.01853892]}),
    "cgc": ({"shared_experts": 2, "task_experts": 1},
            {"a": [-0.16163731, -0.09665950, -0.20747489], "b": [0.22927067, 0.27276814, 0.25231993]}),
    "dselect_k": ({"num_experts": 3, "k": 2, "gamma": 1.0},
                  {"a": [0.34944603, 0.26412085, 0.23890060], "b": [-0.30280843, -0.08250228, 0.10731054]}),
}


def test_forward_equals_libmtl_on_identical_weights():
    for arch, (kw, expected) in LIBMTL_OUTPUTS.items():
        out = model(arch, **kw).eval()(X)
        for t, y in expected.items():
            torch.testing.assert_close(out[t], torch.tensor(y), rtol=1e-6, atol=1e-7, msg=f"{arch} task {t}")


def test_dselect_k_gate_gradient_with_regulariser_equals_libmtl():
    """Training forward, loss = Σ outputs of both tasks: the gradient of task b's selector-logit
    bias (task loss + entropy weight 1e-6 + the 1/Σ term for n = 3, not a power of 2)."""
    m = model("dselect_k", num_experts=3, k=2, gamma=1.0).train()
    out = m(X)
    (out["a"].sum() + out["b"].sum()).backward()
    expected = torch.tensor([-0.39705798, 37182.492, 65.868538, 0.15321852])
    torch.testing.assert_close(m.gates["b"].z.bias.grad, expected, rtol=1e-5, atol=1e-6)
