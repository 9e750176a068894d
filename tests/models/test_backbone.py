"""create_backbone: multi-scale features, weights from classification checkpoints, fast path."""
import math

import pytest
import torch
from safetensors.torch import save_file

import mambaout
from mambaout import CheckpointError, MambaOutError, UnknownModelError
from mambaout.models import VARIANTS

from helpers import timm_to_official


def expected_shapes(name, h, w, indices=(0, 1, 2, 3)):
    dims = VARIANTS[name].dims
    return [(1, dims[i], math.ceil(h / 2 ** (i + 2)), math.ceil(w / 2 ** (i + 2))) for i in indices]


@pytest.mark.parametrize("name", ["mambaout_femto", "mambaout_small_rw", "mambaout_tiny_k3", "mambaout_base"])
@pytest.mark.parametrize("size", [(97, 131), (64, 64), (224, 224)])
def test_shapes_strides_channels(name, size):
    with torch.device("meta"):
        backbone = mambaout.create_backbone(name)
        feats = backbone(torch.empty(1, 3, *size))
    assert [tuple(f.shape) for f in feats] == expected_shapes(name, *size)
    assert backbone.out_channels == list(VARIANTS[name].dims)
    assert backbone.out_strides == [4, 8, 16, 32]
    assert [f["reduction"] for f in backbone.feature_info] == [4, 8, 16, 32]
    assert [f["module"] for f in backbone.feature_info] == [f"stages.{i}" for i in range(4)]


def test_real_forward_at_an_odd_size():
    backbone = mambaout.create_backbone("mambaout_femto").eval()
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 97, 131))
    assert [tuple(f.shape[2:]) for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    assert all(torch.isfinite(f).all() for f in feats)


def test_out_indices_subsets():
    with torch.device("meta"):
        sub = mambaout.create_backbone("mambaout_femto", out_indices=(3, 1))
        early = mambaout.create_backbone("mambaout_femto", out_indices=(0,))
        feats = sub(torch.empty(1, 3, 97, 131))
    assert sub.out_indices == (1, 3) and sub.out_channels == [96, 288] and sub.out_strides == [8, 32]
    assert [tuple(f.shape) for f in feats] == expected_shapes("mambaout_femto", 97, 131, (1, 3))
    assert len(early.stages) == 1 and list(early.out_norms) == ["0"]     # later stages not built
    with pytest.raises(MambaOutError, match="out_indices"):
        mambaout.create_backbone("mambaout_femto", out_indices=(4,))


def _copy_into_backbone(model, backbone):
    backbone.load_classification_state_dict(model.state_dict())


def test_features_equal_forward_intermediates_before_the_output_norms():
    model = mambaout.create_model("mambaout_femto").eval()
    backbone = mambaout.create_backbone("mambaout_femto").eval()
    _copy_into_backbone(model, backbone)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        ours = backbone(x)
        ref = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    for i, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, backbone.out_norms[str(i)](b).permute(0, 3, 1, 2))


def _params_equal(model, backbone):
    sd = backbone.state_dict()
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items() if not k.startswith("head."))


@pytest.mark.parametrize("layout", ["timm_pth", "official_wrapped", "training", "safetensors"])
def test_loads_classification_checkpoints(tmp_path, layout):
    model = mambaout.create_model("mambaout_femto")
    sd = model.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "timm_pth":
        torch.save(sd, path)
    elif layout == "official_wrapped":
        torch.save({"model": timm_to_official(sd)}, path)
    elif layout == "training":
        torch.save({"model": sd, "epoch": 3, "optimizer": {}}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    backbone = mambaout.create_backbone("mambaout_femto", checkpoint_path=path)
    assert _params_equal(model, backbone)
    for norm in backbone.out_norms.values():                  # output norms start fresh
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
        assert norm.eps == 1e-6


def test_loads_into_a_pruned_backbone(tmp_path):
    model = mambaout.create_model("mambaout_femto")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    backbone = mambaout.create_backbone("mambaout_femto", out_indices=(0, 1), checkpoint_path=tmp_path / "w.pth")
    assert _params_equal(torch.nn.ModuleDict({"stem": model.stem, "stages": model.stages[:2]}), backbone)


def _one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("change,needle", [
    ("missing", "missing keys (first: 'stages.3.blocks.2.fc2.bias')"),
    ("extra", "unexpected keys (first: 'stages.0.blocks.0.extra')"),
    ("shape", "'stem.conv1.weight' has shape"),
])
def test_checkpoint_errors_name_the_first_bad_key(tmp_path, change, needle):
    sd = mambaout.create_model("mambaout_femto").state_dict()
    if change == "missing":
        del sd["stages.3.blocks.2.fc2.bias"]
    elif change == "extra":
        sd["stages.0.blocks.0.extra"] = torch.zeros(1)
    else:                                                  # as in a checkpoint of another variant
        sd["stem.conv1.weight"] = torch.zeros(48, 3, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        mambaout.create_backbone("mambaout_femto", checkpoint_path=tmp_path / "bad.pth")
    assert needle in _one_line(e)


def test_backbone_state_dict_loads_whole(tmp_path):
    backbone = mambaout.create_backbone("mambaout_femto")
    with torch.no_grad():
        backbone.out_norms["2"].weight.fill_(3.0)
    torch.save(backbone.state_dict(), tmp_path / "b.pth")
    again = mambaout.create_backbone("mambaout_femto", checkpoint_path=tmp_path / "b.pth")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in backbone.state_dict().items())


def test_pretrained_uses_the_hub_path_without_download(tmp_path, monkeypatch):
    model = mambaout.create_model("mambaout_femto")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "mambaout_femto.in1k.safetensors"))
    monkeypatch.setenv("MAMBAOUT_WEIGHTS_DIR", str(tmp_path))
    assert _params_equal(model, mambaout.create_backbone("mambaout_femto", pretrained=True))


def _set_fast(module, flag):
    for m in module.modules():
        if hasattr(m, "fast"):
            m.fast = flag


def test_fast_path_equals_reference_in_inference_and_training():
    backbone = mambaout.create_backbone("mambaout_femto")
    x = torch.randn(2, 3, 61, 45)
    results = {}
    for fast in (True, False):
        _set_fast(backbone, fast)
        backbone.eval()
        with torch.no_grad():
            infer = backbone(x)
        backbone.train()
        backbone.zero_grad()
        train = backbone(x)
        sum(f.square().mean() for f in train).backward()
        results[fast] = (infer, train, [p.grad.clone() for p in backbone.parameters()])
    for a, b in zip(results[True], results[False]):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_channels_last_autocast_and_grad_checkpointing():
    backbone = mambaout.create_backbone("mambaout_femto", drop_path_rate=0.0).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref = backbone(x)
        cl = backbone(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = backbone(x)
    for a, b, c in zip(ref, cl, low):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert c.shape == a.shape and torch.isfinite(c).all()
        assert (c.float() - a).abs().mean() < 0.05 * a.abs().mean()
    backbone.train()
    grads = []
    for enable in (False, True):
        backbone.set_grad_checkpointing(enable)
        backbone.zero_grad()
        sum(f.mean() for f in backbone(x)).backward()
        grads.append([p.grad.clone() for p in backbone.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_drop_path_rate_passes_through():
    backbone = mambaout.create_backbone("mambaout_femto", drop_path_rate=0.3)
    assert backbone.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)


@pytest.mark.parametrize("name,error,needle", [
    ("mambaout_tiy", UnknownModelError, "did you mean mambaout_tiny"),
    ("mambaout_s_iso", MambaOutError, "not a 4-stage model"),
    ("vit_small_p16", MambaOutError, "not a 4-stage model"),
    ("study_conv_d64", MambaOutError, "not a 4-stage model"),
])
def test_unknown_and_non_hierarchical_names_rejected(name, error, needle):
    with pytest.raises(error) as e:
        mambaout.create_backbone(name)
    assert needle in _one_line(e)


def test_unknown_option_rejected():
    with pytest.raises(MambaOutError, match="unknown backbone option"):
        mambaout.create_backbone("mambaout_femto", num_classes=10)
