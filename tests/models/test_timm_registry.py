"""timm's features_only semantics (features_model) and our variants in timm's registry
(register_timm): the maps are create_backbone's, feature_info is timm's FeatureInfo, timm's
factory keywords pass through, errors are one line."""
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import FeatureInfo

import mambaout
from mambaout import MambaOutError
from mambaout.models.backbone import MambaOutBackbone, VMambaBackbone
from mambaout.models.timm_compat import TIMM_PREFIX, features_model, register_timm, timm_name, variant_of

VM_SMALL = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))     # a VMamba small enough for CPU tests
FEMTO_DIMS = [48, 96, 192, 288]


@pytest.fixture(scope="module", autouse=True)
def registered():
    return register_timm()


def _same_weights(src, dst):
    dst.load_state_dict(src.state_dict())
    return dst.eval()


def _one_line(excinfo):
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


@pytest.mark.parametrize("name, kwargs, cls, channels", [
    ("mambaout_femto", dict(depths=(1, 1, 2, 1)), MambaOutBackbone, FEMTO_DIMS),
    ("vmamba_tiny", VM_SMALL, VMambaBackbone, list(VM_SMALL["dims"]))])
def test_features_are_create_backbones_with_timms_feature_info(name, kwargs, cls, channels):
    backbone = mambaout.create_backbone(name, **kwargs).eval()
    feats = _same_weights(backbone, features_model(name, **kwargs))
    via_timm = _same_weights(backbone, timm.create_model(timm_name(name), features_only=True, **kwargs))
    assert type(feats) is cls and type(via_timm) is cls
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
        for module in (feats, via_timm):
            out = module(x)
            assert len(out) == 4 and all(torch.equal(a, b) for a, b in zip(out, ref))
    for module in (backbone, feats, via_timm):
        info = module.feature_info
        assert isinstance(info, FeatureInfo)
        assert info.channels() == channels and info.reduction() == [4, 8, 16, 32]
        assert info.channels() == [f.shape[1] for f in ref]
        assert [64 // r for r in info.reduction()] == [f.shape[-1] for f in ref]
    module_names = [f"stages.{i}" if name.startswith("mambaout") else f"layers.{i}" for i in range(4)]
    assert via_timm.feature_info.module_name() == module_names
    # timm's feature-extractor cfg: the weights' cfg less the classifier's keys, under its alias
    assert via_timm.pretrained_cfg["architecture"] == timm_name(name) and "num_classes" not in via_timm.pretrained_cfg
    assert via_timm.default_cfg is via_timm.pretrained_cfg


@pytest.mark.parametrize("out_indices, taken", [((1, 3), (1, 3)), ((3, 1), (1, 3)), (2, (2, 3)),
                                                ((-1,), (3,)), ((0,), (0,)), (None, (0, 1, 2, 3))])
def test_out_indices_subsets(out_indices, taken):
    with torch.device("meta"):
        module = timm.create_model("mo_mambaout_femto", features_only=True, out_indices=out_indices)
        out = module(torch.empty(1, 3, 97, 131))
    assert module.out_indices == taken and len(module.stages) == taken[-1] + 1      # later stages not built
    assert module.feature_info.channels() == [FEMTO_DIMS[i] for i in taken]
    assert module.feature_info.reduction() == [4 * 2 ** i for i in taken]
    assert [tuple(f.shape[1:]) for f in out] == [(FEMTO_DIMS[i], -(-97 // 2 ** (i + 2)), -(-131 // 2 ** (i + 2)))
                                                 for i in taken]


def test_nhwc_output_is_the_nchw_maps_permuted():
    nchw = features_model("vmamba_tiny", out_indices=(0, 2), **VM_SMALL).eval()
    nhwc = _same_weights(nchw, features_model("vmamba_tiny", out_indices=(0, 2), output_fmt="NHWC", **VM_SMALL))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(nchw(x), nhwc(x)):
            assert torch.equal(a.permute(0, 2, 3, 1), b)


def test_classification_through_timm_equals_create_model():
    ours = mambaout.create_model("vmamba_tiny", num_classes=10, **VM_SMALL).eval()
    theirs = _same_weights(ours, timm.create_model("mo_vmamba_tiny", num_classes=10, **VM_SMALL))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert theirs.num_classes == 10 and theirs.pretrained_cfg["architecture"] == "mo_vmamba_tiny"
    # timm's factory keywords pass through to create_model
    model = timm.create_model("mo_vmamba_tiny", pretrained=False, in_chans=1, drop_path_rate=0.1, cache_dir=None,
                              pretrained_cfg_overlay=dict(crop_pct=0.9), **VM_SMALL)
    assert model.in_chans == 1 and model.pretrained_cfg["crop_pct"] == 0.9
    with pytest.raises(MambaOutError, match="no released weights") as e:
        timm.create_model("mo_vmamba_tiny", pretrained=True, **VM_SMALL)
    _one_line(e)


def test_pretrained_weights_from_a_cfg_file_load_into_the_features(tmp_path):
    """pretrained=True with timm's pretrained_cfg_overlay={'file': ...} (no network): the
    classifier's weights go into the trunk, as create_backbone's checkpoint_path does."""
    classifier = mambaout.create_model("mambaout_femto", depths=(1, 1, 1, 1))
    path = tmp_path / "femto.safetensors"
    save_file(classifier.state_dict(), str(path))
    feats = timm.create_model("mo_mambaout_femto.in1k", features_only=True, pretrained=True, depths=(1, 1, 1, 1),
                              pretrained_cfg_overlay=dict(file=str(path)), out_indices=(1, 2))
    ref = mambaout.create_backbone("mambaout_femto", out_indices=(1, 2), depths=(1, 1, 1, 1), checkpoint_path=path)
    assert all(torch.equal(a, b) for a, b in zip(feats.state_dict().values(), ref.state_dict().values()))
    assert feats.pretrained_cfg["tag"] == "in1k" and feats.pretrained_cfg["file"] == str(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(feats.eval()(x), ref.eval()(x)))


def test_isotropic_features_are_forward_intermediates():
    """ViT-like families: timm's FeatureGetterNet over forward_intermediates (the last three
    blocks by default, as timm's ViT), head dropped."""
    kwargs = dict(depth=4, img_size=32)
    model = mambaout.create_model("vit_tiny_p16", num_classes=0, **kwargs).eval()
    feats = timm.create_model("mo_vit_tiny_p16", features_only=True, **kwargs)
    # timm's FeatureGetterNet prunes what the maps do not need (prune_intermediate_layers: the final norm)
    loaded = feats.model.load_state_dict(model.state_dict(), strict=False)
    assert not loaded.missing_keys and all(k.startswith("norm.") for k in loaded.unexpected_keys)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
        out = feats.eval()(x)
    assert len(out) == 3 and all(torch.equal(a, b) for a, b in zip(out, ref))
    assert feats.feature_info.channels() == [192] * 3 and feats.feature_info.reduction() == [16] * 3
    iso = features_model("mambaout_s_iso", out_indices=(0, -1), depth=3, dim=32)
    assert [tuple(f.shape) for f in iso(torch.randn(1, 3, 64, 64))] == [(1, 32, 4, 4)] * 2
    assert iso.feature_info.module_name() == ["blocks.0", "blocks.2"]


@pytest.mark.parametrize("call, match", [
    (lambda: features_model("vmamba_tinyy"), "unknown model 'vmamba_tinyy'; did you mean vmamba_tiny"),
    (lambda: features_model("mambaout_femto", out_indices=(4,)), r"out_indices must be stages indices in -4..3"),
    (lambda: features_model("mambaout_femto", out_indices=()), "out_indices is empty"),
    (lambda: features_model("mambaout_femto", out_indices=0), "out_indices must be"),
    (lambda: features_model("mambaout_femto", out_indices="0"), "out_indices must be"),
    (lambda: features_model("mambaout_femto", output_stride=16), "output_stride=16 is not supported"),
    (lambda: features_model("vit_tiny_p16", output_stride=8, depth=2), "output_stride=8 is not supported"),
    (lambda: features_model("mambaout_femto", output_fmt="NLC"), "output_fmt must be"),
    (lambda: features_model("mambaout_femto", feature_cls="dict"), "feature_cls='dict' is not supported"),
    (lambda: features_model("mambaout_femto", kernel=3), "unknown backbone option"),
    (lambda: timm.create_model("mo_vmamba_tiny", features_only=True, out_indices=(5,)), "out_indices must be"),
])
def test_errors_are_one_line(call, match):
    with pytest.raises(MambaOutError, match=match) as e:
        call()
    _one_line(e)


def test_unknown_prefixed_name_is_timms_error():
    with pytest.raises(RuntimeError, match=r"Unknown model \(mo_vmamba_tinyy\)"):
        timm.create_model("mo_vmamba_tinyy")


def test_register_timm_is_idempotent_and_leaves_timms_names(registered):
    assert registered == [TIMM_PREFIX + n for n in mambaout.VARIANTS]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # timm warns when a name is overwritten
        assert register_timm() == registered
    assert set(timm.list_models("mo_*")) == set(registered)
    assert timm.models.model_entrypoint("mambaout_tiny").__module__ == "timm.models.mambaout"
    assert timm.models.model_entrypoint("mo_mambaout_tiny").__module__ == "mambaout.models.timm_compat"
    assert "mo_mambaout_femto.in1k" in timm.list_models("mo_*", pretrained=True)
    assert "mo_vmamba_tiny" not in timm.list_models("mo_*", pretrained=True)    # no released weights
    cfg = timm.models.get_pretrained_cfg("mo_mambaout_femto")
    assert cfg.hf_hub_id == "timm/mambaout_femto.in1k" and cfg.architecture == "mo_mambaout_femto"
    assert variant_of("mo_mambaout_tiny.in1k") == "mambaout_tiny.in1k" and variant_of("vmamba_tiny") == "vmamba_tiny"


def test_smp_style_probe_on_the_meta_device_and_timm_placement_keywords():
    """What segmentation_models_pytorch's TimmUniversalEncoder does first: build the features
    model on the meta device and read its reductions; timm's device / dtype keywords."""
    with torch.device("meta"):
        probe = timm.create_model("mo_vmamba_tiny", features_only=True)
    assert probe.feature_info.reduction() == [4, 8, 16, 32] and probe.feature_info.channels() == [96, 192, 384, 768]
    assert getattr(probe, "output_fmt", None) == "NCHW"
    meta = timm.create_model("mo_mambaout_femto", features_only=True, device="meta")
    assert next(meta.parameters()).is_meta
    double = timm.create_model("mo_vmamba_tiny", dtype=torch.float64, num_classes=3, **VM_SMALL)
    assert double(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_timm_folder_of_a_registered_model_round_trips(tmp_path):
    """timm's own save_for_hf writes `architecture: mo_vmamba_tiny` with the model's arguments;
    `timm.create_model('local-dir:...')` rebuilds it through our entrypoint, as a classifier
    (equal logits) and as a feature extractor (the backbone of the same weights)."""
    from timm.models._hub import save_for_hf
    model = timm.create_model("mo_vmamba_tiny", num_classes=5, **VM_SMALL).eval()
    save_for_hf(model, str(tmp_path), safe_serialization=True)
    x = torch.randn(1, 3, 64, 64)
    again = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    feats = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, features_only=True, out_indices=(2, 3))
    ref = mambaout.create_backbone("vmamba_tiny", out_indices=(2, 3), **VM_SMALL)
    ref.load_classification_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        assert all(torch.equal(a, b) for a, b in zip(feats.eval()(x), ref.eval()(x)))
    assert again.pretrained_cfg["architecture"] == "mo_vmamba_tiny" and feats.feature_info.channels() == [32, 64]


def test_create_model_routes_features_only():
    feats = mambaout.create_model("vmamba_tiny", features_only=True, out_indices=(1, 3), **VM_SMALL)
    assert feats.feature_info.channels() == [16, 64]
    with pytest.raises(MambaOutError, match="output_stride=8"):
        mambaout.create_model("mambaout_femto", features_only=True, output_stride=8)
