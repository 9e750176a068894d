"""UperNet on MambaOut: outputs, the paper's params / MACs at 512x2048, weights in and out."""
import math

import pytest
import torch
import torch.nn.functional as F

import mambaout
from mambaout import CheckpointError, MambaOutError, UnknownModelError
from mambaout.analysis.complexity import count_macs, measure
from mambaout.models import SEGMENTATION_VARIANTS, VARIANTS

# Params (M) and MACs (G) at 512 x 2048 as the paper prints them (main paper; Table 3 of
# the supplementary for the kernel sizes, kernel 7 being MambaOut-Tiny).
PAPER = {
    "upernet_mambaout_tiny": (54, 938), "upernet_mambaout_small": (76, 1032),
    "upernet_mambaout_base": (112, 1178), "upernet_mambaout_tiny_k3": (54, 936),
    "upernet_mambaout_tiny_k5": (54, 937), "upernet_mambaout_tiny_k7": (54, 938),
    "upernet_mambaout_tiny_k9": (54, 940), "upernet_mambaout_tiny_k11": (54, 941),
}


@pytest.fixture(scope="module")
def femto():
    torch.manual_seed(0)
    return mambaout.create_model("upernet_mambaout_femto", num_classes=5)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 70)])
def test_eval_logits_at_input_size(femto, size):
    femto.eval()
    with torch.no_grad():
        y = femto(torch.randn(1, 3, *size))
    assert y.shape == (1, 5, *size) and torch.isfinite(y).all()


def test_train_outputs_at_stride_4_and_16_and_the_loss(femto):
    femto.train()
    femto.zero_grad()
    h, w = 97, 131
    x, labels = torch.randn(2, 3, h, w), torch.randint(0, 5, (2, h, w))
    out = femto(x)
    assert out["out"].shape == (2, 5, math.ceil(h / 4), math.ceil(w / 4))
    assert out["aux"].shape == (2, 5, math.ceil(h / 16), math.ceil(w / 16))
    up = {k: F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False) for k, v in out.items()}
    loss = F.cross_entropy(up["out"], labels) + femto.aux_weight * F.cross_entropy(up["aux"], labels)
    loss.backward()
    assert femto.aux_weight == 0.4
    assert all(p.grad is not None for p in femto.parameters())


def test_head_structure():
    with torch.device("meta"):
        model = mambaout.create_model("upernet_mambaout_tiny")
    head, aux = model.decode_head, model.auxiliary_head
    assert model.num_classes == 150 and head.conv_seg.out_channels == 150
    assert [len(m) for m in head.psp_modules] == [2] * 4
    assert [m[0].output_size for m in head.psp_modules] == [1, 2, 3, 6]
    assert head.fpn_bottleneck.conv.in_channels == 4 * 512 and head.fpn_bottleneck.conv.out_channels == 512
    assert [c.conv.in_channels for c in head.lateral_convs] == [96, 192, 384]
    assert aux.convs[0].conv.in_channels == 384 and aux.conv_seg.in_channels == 256
    assert head.dropout.p == aux.dropout.p == 0.1
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs if c not in (head.conv_seg, aux.conv_seg)
               and not any(c is b for b in model.backbone.modules()))
    assert SEGMENTATION_VARIANTS["upernet_mambaout_tiny"].drop_path == 0.3
    assert SEGMENTATION_VARIANTS["upernet_mambaout_base"].drop_path == 0.6


@pytest.mark.parametrize("name", PAPER)
def test_params_and_macs_match_the_paper(name):
    m = measure(name, (512, 2048))
    assert (m["params_m"], m["macs_g"]) == PAPER[name]
    assert (m["paper_params_m"], m["paper_macs_g"]) == PAPER[name]
    assert m["convention"] == "mmcv"


def test_conventions_are_explicit():
    # The aux head is part of the paper's params: without it Tiny would be 53M.
    with torch.device("meta"):
        model = mambaout.create_model("upernet_mambaout_tiny")
    aux = sum(p.numel() for p in model.auxiliary_head.parameters())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6 - aux / 1e6) == 53
    # Counting BatchNorm (fvcore's rule) misses Table 3's rounding; classification stays fvcore.
    assert measure("upernet_mambaout_tiny_k3", convention="fvcore")["macs_g"] == 937
    assert measure("mambaout_tiny")["macs"] == 4_486_040_064
    with pytest.raises(ValueError, match="convention"):
        count_macs(model, 64, convention="thop")


def test_registry_names_and_errors():
    assert mambaout.list_segmentation_models("*tiny_k*") == [f"upernet_mambaout_tiny_k{k}" for k in (3, 5, 7, 9, 11)]
    assert len(mambaout.list_segmentation_models()) == 12 and {"upernet_vmamba_tiny", "upernet_local_vmamba_tiny"} <= set(mambaout.list_segmentation_models())
    assert not [n for n in mambaout.list_models() if n.startswith("upernet")]
    assert all(SEGMENTATION_VARIANTS[n].backbone in VARIANTS for n in SEGMENTATION_VARIANTS)
    with pytest.raises(UnknownModelError) as e:
        mambaout.create_model("upernet_mambaout_tiy")
    assert "did you mean upernet_mambaout_tiny" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownModelError, match="segmentation model"):
        mambaout.get_variant("upernet_mambaout_tiny")
    with pytest.raises(MambaOutError, match="num_classes"):
        mambaout.create_model("upernet_mambaout_femto", num_classes=0)


def test_create_with_a_classification_checkpoint_for_the_backbone(tmp_path):
    clf = mambaout.create_model("mambaout_femto")
    torch.save({"model": clf.state_dict(), "epoch": 10}, tmp_path / "clf.pth")
    seg = mambaout.create_model("upernet_mambaout_femto", num_classes=7, checkpoint_path=tmp_path / "clf.pth",
                                drop_path_rate=0.1)
    sd = seg.backbone.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in clf.state_dict().items() if not k.startswith("head."))
    assert seg.backbone.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


def test_segmentation_state_dict_round_trip(tmp_path, femto):
    femto.eval()
    torch.save({"model": femto.state_dict(), "epoch": 1}, tmp_path / "seg.pth")
    again = mambaout.create_model("upernet_mambaout_femto", num_classes=5, checkpoint_path=tmp_path / "seg.pth").eval()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in femto.state_dict().items())
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(again(x), femto(x))
    with pytest.raises(CheckpointError) as e:                  # another class count: strict
        mambaout.create_model("upernet_mambaout_femto", checkpoint_path=tmp_path / "seg.pth")
    assert "'decode_head.conv_seg.weight' has shape" in str(e.value) and "\n" not in str(e.value)


def test_pretrained_loads_the_backbones_imagenet_weights(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    clf = mambaout.create_model("mambaout_femto")
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp_path / "mambaout_femto.in1k.safetensors"))
    monkeypatch.setenv("MAMBAOUT_WEIGHTS_DIR", str(tmp_path))               # the hub path, no download
    seg = mambaout.create_model("upernet_mambaout_femto", pretrained=True)
    assert torch.equal(seg.backbone.stages[2].blocks[4].fc1.weight, clf.stages[2].blocks[4].fc1.weight)
