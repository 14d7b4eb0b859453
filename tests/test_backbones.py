"""ResNet-18/34 (dilated) and SegNet backbones, and torchvision weight loading.

The torchvision reference below is written inline (torchvision's attribute names and
forward, no torchvision import) so the key mapping and the numerics are checked
against the layout a real ``resnet18-*.pth`` file has."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mtlbench.backbones.base import BasicBlock, build_backbone
from mtlbench.core.registry import BACKBONES
from mtlbench.backbones.resnet import load_torchvision_resnet, resnet18, resnet34
from mtlbench.backbones.segnet import SegNetDecoderBlock, SegNetEncoderBlock, segnet

CONF = Path(__file__).resolve().parents[1] / "mtlbench" / "conf" / "backbone"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- torchvision reference


class TVBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVResNet(nn.Module):
    """torchvision.models.ResNet(BasicBlock, layers) attribute names, output stride 32."""

    def __init__(self, layers):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for s, depth in enumerate(layers):
            cout = 64 * 2 ** s
            blocks = [TVBlock(cin if i == 0 else cout, cout, 2 if (i == 0 and s > 0) else 1) for i in range(depth)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, 1000)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def randomized_reference(layers, seed=0):
    """A reference net with random weights AND random BN statistics (so a wrong mapping
    of running_mean / running_var shows)."""
    torch.manual_seed(seed)
    ref = TVResNet(layers)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    return ref.eval(), sd  # torchvision's published files carry no num_batches_tracked


@pytest.fixture(scope="module")
def tv18():
    return randomized_reference((2, 2, 2, 2))


# ---------------------------------------------------------------- shapes and metadata


@pytest.mark.parametrize("builder", [resnet18, resnet34])
@pytest.mark.parametrize("output_stride,side", [(32, 2), (16, 4), (8, 8)])
def test_resnet_output_shape(builder, output_stride, side):
    b = builder((3, 64, 64), output_stride=output_stride, width=8)
    assert b.out_channels == 64
    assert b(torch.randn(2, 3, 64, 64)).shape == (2, 64, side, side)


def test_resnet_in_channels_and_odd_input():
    b = resnet18((1, 50, 70), width=4, output_stride=16)
    assert b.stem.conv1.in_channels == 1
    assert b(torch.randn(1, 1, 50, 70)).shape == (1, 32, 4, 5)


@pytest.mark.parametrize("output_stride,strides,dilations", [
    (32, [1, 1, 2, 1, 2, 1, 2, 1], [1] * 8),
    (16, [1, 1, 2, 1, 2, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 2]),
    (8, [1, 1, 2, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 2, 2, 4]),
])
def test_resnet18_block_metadata(output_stride, strides, dilations):
    """torchvision's replace_stride_with_dilation: a dilated stage's first block keeps
    the previous dilation; its stride-2 becomes 1."""
    b = resnet18((3, 32, 32), output_stride=output_stride, width=8)
    assert list(b.stem._modules) == ["conv1", "bn1", "relu", "maxpool"]
    assert len(b.blocks) == 8 and all(isinstance(k, BasicBlock) and k.residual for k in b.blocks)
    assert [k.stride for k in b.blocks] == strides
    assert [k.conv1.dilation[0] for k in b.blocks] == dilations
    assert [k.conv2.dilation[0] for k in b.blocks] == dilations
    assert [k.out_channels for k in b.blocks] == [8, 8, 16, 16, 32, 32, 64, 64]
    assert [k.in_channels for k in b.blocks] == [8, 8, 8, 16, 16, 32, 32, 64]
    x = torch.randn(2, 8, 8, 8)
    b.eval()
    for k in b.blocks:
        changes = k.stride != 1 or k.in_channels != k.out_channels
        assert (k.downsample is not None) == changes
        sc = k.shortcut(x)
        if changes:
            assert torch.equal(sc, k.downsample(x))
        else:
            assert sc is x
        assert sc.shape == k.body(x).shape
        x = k(x, {})


def test_resnet34_layout():
    b = resnet34((3, 32, 32), width=4)
    assert len(b.blocks) == 16 and b.stage_depths == (3, 4, 6, 3)


def test_resnet18_parameter_count_equals_torchvision():
    # torchvision resnet18: 11,689,512 parameters, of which fc holds 513,000
    assert n_params(resnet18((3, 224, 224), output_stride=32)) == 11_176_512
    assert n_params(resnet18((3, 224, 224), output_stride=8)) == 11_176_512  # dilation adds none


def test_head_options_and_bad_options():
    b = resnet18((3, 32, 32), width=4)
    assert b.head_options == {"head": "aspp", "aspp_rates": (6, 12, 18, 24)}
    b = resnet34((3, 32, 32), width=4, head="conv", head_channels=32, aspp_rates=[2, 4], aspp_dropout=0)
    assert b.head_options == {"head": "conv", "aspp_rates": (2, 4), "head_channels": 32, "aspp_dropout": 0.0}
    assert BACKBONES.get("small_resnet")((3, 64, 64)).head_options["head"] == "conv"
    assert segnet((3, 32, 32), width=4).head_options == {"head": "mtan"}
    for bad in (dict(output_stride=4), dict(head="fcn"), dict(width=0)):
        with pytest.raises(ValueError) as e:
            resnet18((3, 32, 32), **bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="H, W >= 32"):
        segnet((3, 16, 64))


def test_small_resnet():
    b = BACKBONES.get("small_resnet")((3, 64, 128))
    assert len(b.blocks) == 4 and b.out_channels == 128 and b.output_stride == 8
    assert b(torch.randn(2, 3, 64, 128)).shape == (2, 128, 8, 16)


# ---------------------------------------------------------------- SegNet


def test_segnet_shapes_blocks_and_state():
    b = segnet((3, 64, 96), width=4)
    assert b.out_channels == 4
    enc, dec = b.blocks[:5], b.blocks[5:]
    assert all(isinstance(k, SegNetEncoderBlock) for k in enc)
    assert all(isinstance(k, SegNetDecoderBlock) for k in dec)
    assert not any(k.residual for k in b.blocks)
    assert [k.out_channels for k in b.blocks] == [4, 8, 16, 32, 32, 32, 16, 8, 4, 4]
    assert [k.in_channels for k in b.blocks] == [3, 4, 8, 16, 32, 32, 32, 16, 8, 4]
    assert [k.stride for k in enc] == [2] * 5 and [k.upsample for k in dec] == [2] * 5
    # conv-BN-ReLU layers per block: MTAN's 2, 2, 3, 3, 3 and the mirror
    assert [sum(isinstance(m, nn.Conv2d) for m in k.modules()) for k in b.blocks] == [2, 2, 3, 3, 3, 3, 3, 3, 2, 2]

    x, state, sizes = torch.randn(2, 3, 64, 96), {}, []
    for k in enc:
        x = k(x, state)
        sizes.append(tuple(x.shape[-2:]))
    assert sizes == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert sorted(state) == [f"segnet_pool{i}" for i in range(5)]
    idx0, size0 = state["segnet_pool0"]
    assert idx0.shape == (2, 4, 32, 48) and tuple(size0) == (64, 96)
    # the decoder unpools with the encoder's indices: its first conv sees a sparse map
    # whose non-zeros sit exactly at the encoder's arg-max positions
    seen = {}
    dec[-1].convs[0].register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    for k in dec:
        x = k(x, state)
    assert x.shape == (2, 4, 64, 96)
    nz = seen["x"].flatten(2) != 0
    at_idx = torch.zeros_like(nz).scatter_(2, idx0.flatten(2), True)
    assert not (nz & ~at_idx).any() and nz.sum() > 0
    with pytest.raises(RuntimeError, match="pooling indices"):
        dec[0](x[:, :, :2, :3], {})


def test_segnet_forward_backward_odd_size():
    b = segnet((1, 50, 37), width=4)
    x = torch.randn(2, 1, 50, 37)
    y = b(x)
    assert y.shape == (2, 4, 50, 37)
    y.square().mean().backward()
    assert all(p.grad is not None for p in b.parameters())


def test_segnet_parameter_count_equals_mtan():
    # MTAN's single-task SegNet: 24,981,069 parameters including its 13-class head
    # (3x3 conv 64->64 with bias: 36,928; 1x1 conv 64->13: 845)
    assert n_params(segnet((3, 288, 384))) == 24_981_069 - 36_928 - 845


# ---------------------------------------------------------------- torchvision weights


@pytest.mark.parametrize("layers,builder,output_stride", [((2, 2, 2, 2), resnet18, 32),
                                                         ((3, 4, 6, 3), resnet34, 8)])
def test_load_torchvision_weights_exactly(tmp_path, layers, builder, output_stride):
    ref, sd = randomized_reference(layers, seed=1)
    path = tmp_path / "resnet.pth"
    assert "fc.weight" in sd  # a real file carries the classifier; it is dropped
    torch.save(sd, path)
    b = builder((3, 64, 64), output_stride=output_stride, pretrained=str(path))
    own = b.state_dict()
    offsets = [sum(layers[:s]) for s in range(4)]
    for key, value in sd.items():
        if key.startswith("fc."):
            continue
        if key.startswith("layer"):
            stage, i, rest = key.split(".", 2)
            ours = f"blocks.{offsets[int(stage[5:]) - 1] + int(i)}.{rest}"
        else:
            ours = "stem." + key
        assert torch.equal(own[ours], value), key
    n_tensors = len([k for k in own if not k.endswith("num_batches_tracked")])
    assert n_tensors == len(sd) - 2
    if output_stride == 32:  # same numerics as the reference network
        b.eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(b(x), ref.features(x))


def test_load_errors_are_one_line(tmp_path, tv18):
    _, sd = tv18
    b = resnet18((3, 32, 32), output_stride=8)

    def fails(state, exc=ValueError, *fragments):
        with pytest.raises(exc) as e:
            load_torchvision_resnet(b, state)
        msg = str(e.value)
        assert "\n" not in msg and all(f in msg for f in fragments), msg

    fails({k: v for k, v in sd.items() if k != "layer4.1.bn2.running_var"}, ValueError,
          "missing keys", "layer4.1.bn2.running_var")
    fails({**sd, "conv1.weight": torch.zeros(64, 3, 3, 3)}, ValueError,
          "shape mismatch", "conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)")
    fails({**sd, "layer2.2.conv1.weight": torch.zeros(1), "extra.weight": torch.zeros(1)}, ValueError,
          "unexpected keys", "layer2.2.conv1.weight", "extra.weight")
    fails(str(tmp_path / "nope.pth"), FileNotFoundError, "not found", "nope.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    fails(str(tmp_path / "list.pth"), ValueError, "not a state dict")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    fails(str(tmp_path / "junk.pth"), ValueError, "cannot read")
    # ImageNet weights need 3 input channels and width 64, checked before the file is read
    for other in (resnet18((1, 32, 32), width=64), resnet18((3, 32, 32), width=32)):
        with pytest.raises(ValueError, match="in_channels=3 and width=64") as e:
            load_torchvision_resnet(other, str(tmp_path / "nope.pth"))
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not a ResNet"):
        load_torchvision_resnet(segnet((3, 32, 32), width=4), sd)
    with pytest.raises(ValueError, match="width=64"):
        resnet18((3, 32, 32), width=8, pretrained=str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "segnet", "small_resnet"])
def test_configs_build(name):
    """Every yaml key is a builder argument (build_backbone passes them all)."""
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert cfg["name"] == name
    if name != "small_resnet":
        assert cfg["width"] == 64
        cfg["width"] = 4  # keep the test fast
    b = build_backbone(cfg, (3, 64, 64))
    assert b.name == name
    y = b(torch.randn(1, 3, 64, 64))
    assert y.shape[1] == b.out_channels
    assert y.shape[-1] == (64 if name == "segnet" else 8)
