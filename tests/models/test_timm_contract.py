"""MambaOut models meet the contract timm holds its own models to (issue 22).

Checked against timm's installed source: PretrainedCfg (timm/models/_pretrained.py), the
factory keywords (timm/models/_factory.py create_model, _builder.py), forward_intermediates /
prune_intermediate_layers (timm/models/mambaout.py, _features.py FeatureGetterNet), FX feature
extraction (_features_fx.py FeatureGraphNet, torchvision's create_feature_extractor),
layer-wise lr decay (timm/optim/_param_groups.py). Small inputs: depth-reduced models at 64 px.
"""
import copy
import inspect
import io
import pickle

import pytest
import torch
from safetensors.torch import save_file
from timm.models import PretrainedCfg
from timm.models import mambaout as timm_mambaout
from timm.models._features import FeatureGetterNet
from timm.models._features_fx import FeatureGraphNet
from timm.optim._param_groups import param_groups_layer_decay
from torchvision.models.feature_extraction import create_feature_extractor

import mambaout
from mambaout.models.fast import cached_plans
from mambaout.models.hybrid import GridSSM
from helpers import randomize, set_fast

SMALL = dict(depths=(1, 1, 2, 1))
# The two Table 7 hybrids: attention (plain ops) and SSM (a selective scan) after the conv.
NAMES = ["mambaout_femto", "mambaout_attn_tiny", "vmamba_mixed_stage_tiny"]


def small(name="mambaout_femto", **kw):
    if name != "mambaout_femto":  # the hybrids at femto-like widths (attention heads of 32 channels)
        kw.setdefault("dims", (32, 64, 96, 128))
    return randomize(mambaout.create_model(name, num_classes=7, **dict(SMALL, **kw))).eval()


def image(b=2, size=64):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(3))


def close(a, b, tol=1e-4):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


# ---- pretrained_cfg / default_cfg ---------------------------------------------------------------
def test_every_pretrained_cfg_is_a_timm_pretrained_cfg():
    names = mambaout.list_models() + mambaout.list_models(pretrained=True)
    for name in names:
        cfg = mambaout.pretrained_cfg(name)
        PretrainedCfg(**cfg)      # raises TypeError on a key timm does not have (official_url did)
    cfg = mambaout.pretrained_cfg("mambaout_tiny")
    assert cfg["origin_url"] == mambaout.get_variant("mambaout_tiny").official_url
    assert cfg["origin_url"].endswith("mambaout_tiny.pth")


def test_default_cfg_is_the_pretrained_cfg():
    model = mambaout.create_model("mambaout_femto", **SMALL)
    assert model.default_cfg is model.pretrained_cfg
    timm_cfg = PretrainedCfg(**model.default_cfg)
    assert timm_cfg.hf_hub_id == "timm/mambaout_femto.in1k" and timm_cfg.first_conv == "stem.conv1"
    assert dict(model.named_modules())[timm_cfg.classifier] is model.get_classifier()
    model.default_cfg = {"crop_pct": 0.9}
    assert model.pretrained_cfg == {"crop_pct": 0.9}


# ---- create_model with timm's factory keywords ---------------------------------------------------
def test_create_model_takes_timm_factory_keywords():
    model = mambaout.create_model("mambaout_femto", pretrained_cfg=None, pretrained_cfg_overlay=None,
                                  cache_dir=None, scriptable=True, exportable=True, no_jit=True, **SMALL)
    assert model.pretrained_cfg == mambaout.pretrained_cfg("mambaout_femto")
    # a tag, as timm's pretrained_cfg string; it wins over the name's tag, as in timm
    m = mambaout.create_model("mambaout_base_plus_rw.sw_e150_r384_in12k_ft_in1k", pretrained_cfg="sw_e150_in12k",
                              depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    assert m.pretrained_cfg["tag"] == "sw_e150_in12k" and m.num_classes == 11821
    # overlay: replaces keys; a PretrainedCfg / dict: the whole cfg on timm's defaults
    m = mambaout.create_model("mambaout_femto", pretrained_cfg_overlay={"crop_pct": 0.9, "test_crop_pct": 1.0}, **SMALL)
    assert m.pretrained_cfg["crop_pct"] == 0.9 and m.pretrained_cfg["hf_hub_id"] == "timm/mambaout_femto.in1k"
    m = mambaout.create_model("mambaout_femto", pretrained_cfg=PretrainedCfg(num_classes=3, crop_pct=0.8), **SMALL)
    assert m.num_classes == 3 and m.pretrained_cfg["crop_pct"] == 0.8
    assert m.pretrained_cfg["architecture"] == "mambaout_femto"
    PretrainedCfg(**m.pretrained_cfg)
    m = mambaout.create_model("mambaout_femto", pretrained_cfg={"num_classes": 4}, **SMALL)
    assert m.num_classes == 4 and m.pretrained_cfg["crop_pct"] == PretrainedCfg().crop_pct


@pytest.mark.parametrize("kw, match", [
    (dict(pretrained_cfg_overlay={"official_url": "x"}), "unknown pretrained_cfg_overlay key.*official_url"),
    (dict(pretrained_cfg={"bogus": 1}), "unknown pretrained_cfg key.*bogus"),
    (dict(pretrained_cfg=3), "pretrained_cfg must be"),
    (dict(pretrained_cfg="no_such_tag"), "no pretrained tag 'no_such_tag'"),
])
def test_bad_factory_keywords_are_one_line_errors(kw, match):
    with pytest.raises(mambaout.MambaOutError, match=match) as e:
        mambaout.create_model("mambaout_femto", **kw)
    assert "\n" not in str(e.value)


def test_pretrained_weights_from_cfg_file_state_dict_and_cache_dir(tmp_path):
    src = small()
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    x = image(1)
    with torch.no_grad():
        want = src(x)
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    loads = [dict(pretrained_cfg_overlay={"file": str(path)}),
             dict(pretrained_cfg=PretrainedCfg(file=str(path), num_classes=7)),
             dict(pretrained_cfg_overlay={"state_dict": sd})]
    # cache_dir: huggingface_hub's cache layout, read without the network
    cache = tmp_path / "hub"
    snap = cache / "models--timm--mambaout_femto.in1k" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))
    (cache / "models--timm--mambaout_femto.in1k" / "refs").mkdir()
    (cache / "models--timm--mambaout_femto.in1k" / "refs" / "main").write_text("0123abcd")
    loads.append(dict(cache_dir=str(cache)))
    for kw in loads:
        m = mambaout.create_model("mambaout_femto", pretrained=True, num_classes=7, **dict(SMALL, **kw)).eval()
        with torch.no_grad():
            assert torch.equal(m(x), want), kw
    with pytest.raises(mambaout.CheckpointError, match="not cached in .*empty") as e:
        mambaout.create_model("mambaout_femto", pretrained=True, cache_dir=str(tmp_path / "empty"),
                              pretrained_cfg_overlay={"hf_hub_id": "nobody/nothing"}, **SMALL)
    assert "\n" not in str(e.value)


# ---- forward_intermediates / prune_intermediate_layers ------------------------------------------
def test_forward_intermediates_signature_is_timms():
    ours = inspect.signature(mambaout.models.MambaOut.forward_intermediates).parameters
    theirs = inspect.signature(timm_mambaout.MambaOut.forward_intermediates).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]
    ours = inspect.signature(mambaout.models.MambaOut.prune_intermediate_layers).parameters
    theirs = inspect.signature(timm_mambaout.MambaOut.prune_intermediate_layers).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


def test_forward_intermediates_stop_early_and_formats():
    model, x = small(), image()
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape[1:] for m in maps] == [(48, 16, 16), (96, 8, 8), (192, 4, 4), (288, 2, 2)]
        assert torch.equal(final, model.forward_features(x)) or close(final, model.forward_features(x))
        last, early = model.forward_intermediates(x, indices=[0, -3], stop_early=True)
        assert close(early[0], maps[0]) and close(early[1], maps[1])
        assert close(last.permute(0, 3, 1, 2), maps[1])     # the stage it stopped after, NHWC
        nhwc = model.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True, norm=True)
        assert close(nhwc[0].permute(0, 3, 1, 2), maps[2]) and close(nhwc[1].permute(0, 3, 1, 2), maps[3])


@pytest.mark.parametrize("prune_norm", [False, True])
def test_prune_intermediate_layers(prune_norm):
    model, x = small(), image()
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
    kept = model.prune_intermediate_layers([0, -2], prune_norm=prune_norm)
    assert kept == [0, 2] and len(model.stages) == 3 and len(model.feature_info) == 3
    assert model.num_features == 192 and model.num_classes == 0
    with torch.no_grad():
        final, pruned = model.forward_intermediates(x, indices=kept)
        assert close(pruned[0], maps[0]) and close(pruned[1], maps[2])
        assert close(model(x), final) and final.shape == (2, 4, 4, 192)  # head gone, as timm's: no pooling
    # all stages kept, head kept: nothing changes
    full = small()
    with torch.no_grad():
        want = full(x)
    assert full.prune_intermediate_layers(4, prune_norm=prune_norm, prune_head=False) == [0, 1, 2, 3]
    with torch.no_grad():
        assert close(full(x), want)


def test_timm_feature_getter_net():
    model, x = small(), image()
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        feats = FeatureGetterNet(model, out_indices=(1, 3))(x)
    assert [f.shape for f in feats] == [w.shape for w in want]
    assert all(close(f, w) for f, w in zip(feats, want))


# ---- tracing, scripting, export ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES[:2])
def test_torchvision_create_feature_extractor_equals_eager(name):
    model, x = small(name), image()
    fe = create_feature_extractor(model, {"stages.1": "s1", "stages.3": "s3", "head.fc": "logits"})
    with torch.no_grad():
        out = fe(x)
        logits = model(x)
        maps = model.forward_intermediates(x, indices=[1, 3], output_fmt="NHWC", intermediates_only=True)
    assert close(out["logits"], logits)
    assert close(out["s1"], maps[0]) and close(out["s3"], maps[1])
    # training mode: the traced graph takes the reference ops, the eager model its fast path
    model.train()
    fe = create_feature_extractor(model, {"head.fc": "logits"})
    assert close(fe(x)["logits"], model(x))


@pytest.mark.parametrize("name", NAMES)
def test_timm_feature_graph_net_equals_eager(name):
    """timm's FX extractor; the SSM hybrid's scan is a registered leaf (hybrid.py)."""
    model, x = small(name), image(1)
    net = FeatureGraphNet(model, out_indices=(0, 2))
    with torch.no_grad():
        feats = net(x)
        want = model.forward_intermediates(x, indices=[0, 2], output_fmt="NHWC", intermediates_only=True)
    assert all(close(f, w) for f, w in zip(feats, want))
    fe = create_feature_extractor(model, {"head.fc": "o"}, tracer_kwargs={"leaf_modules": [GridSSM]})
    with torch.no_grad():
        assert close(fe(x)["o"], model(x))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("name", NAMES[:2])
def test_jit_script_equals_eager(name):
    model, x = small(name), image()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        want = model(x)
        assert close(scripted(x), want)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        assert close(torch.jit.load(buf)(x), want)
    model.train()                     # grad mode too (drop path off: rate 0)
    assert close(torch.jit.script(model)(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_equals_eager(name):
    model, x = small(name), image(1)
    with torch.no_grad():
        want = model(x)
        ep = torch.export.export(model, (x,))
        assert close(ep.module()(x), want)


# ---- inference_mode, meta, copies ----------------------------------------------------------------
def test_built_and_run_under_inference_mode():
    ref = small()
    x = image()
    with torch.no_grad():
        want = ref(x)
    with torch.inference_mode():
        model = mambaout.create_model("mambaout_femto", num_classes=7, **SMALL).eval()
        first = model(x)                                 # random init: a plan built, not cached
        model.load_state_dict(ref.state_dict())          # in place, no version counter to see it
        got = model(x)
        assert not torch.equal(first, got)
        assert close(got, want) and close(model(x), got)
    blk = model.stages[0].blocks[0]
    assert cached_plans(blk) == []                       # inference tensors: never cached
    with torch.no_grad():                                # built there, run outside it
        assert close(model(x), want)
    with torch.inference_mode():                         # built outside, run inside
        assert close(ref(x), want)
        assert close(set_fast(copy.deepcopy(ref), False)(x), want)


@pytest.mark.parametrize("grad", [False, True])
def test_meta_device(grad):
    with torch.device("meta"):
        model = mambaout.create_model("mambaout_femto", num_classes=7, **SMALL).eval()
        x = torch.empty(2, 3, 64, 64)
    with torch.set_grad_enabled(grad):
        assert model(x).shape == (2, 7) and model(x).is_meta
        assert [m.shape for m in model.forward_intermediates(x, intermediates_only=True)][-1] == (2, 288, 2, 2)


def test_deepcopy_and_pickle_after_use():
    model, x = small(), image()
    with torch.no_grad():
        want = model(x)                                  # fills the plan cache
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.equal(clone(x), want)
            clone.stages[0].blocks[0].fc2.bias.add_(1.0)  # the copy's weights are its own
            assert not close(clone(x), want)
            assert torch.equal(model(x), want)


# ---- optimiser interface -------------------------------------------------------------------------
def test_group_matcher_drives_timm_layer_decay():
    model = small()
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.5)
    seen = [p for g in groups for p in g["params"]]
    assert len(seen) == len(list(model.parameters())) and len(set(map(id, seen))) == len(seen)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    # stem first (smallest lr), then the blocks in order, the head last (full lr)
    order = [scale[id(named[n])] for n in ("stem.conv1.weight", "stages.0.blocks.0.fc1.weight",
                                           "stages.1.downsample.conv.weight", "stages.3.blocks.0.fc2.weight",
                                           "head.fc.weight")]
    assert order == sorted(order) and order[-1] == 1.0 and order[0] < order[1] < order[-1]
    # a stage's downsample shares its first block's layer
    assert scale[id(named["stages.1.downsample.conv.weight"])] == scale[id(named["stages.1.blocks.0.fc1.weight"])]
    coarse = model.group_matcher(coarse=True)
    assert coarse["stem"] == r"^stem" and coarse["blocks"] == r"^stages\.(\d+)"


def test_no_weight_decay():
    assert small().no_weight_decay() == set()
    names = small("vmamba_mixed_stage_tiny").no_weight_decay()
    assert names and all(n.endswith((".A_log", ".D")) for n in names)
    assert any(n.startswith("stages.3.") for n in names) and not any(n.startswith("stages.0.") for n in names)


def test_set_grad_checkpointing_keeps_gradients():
    x = image()
    grads = []
    for enable in (False, True):
        model = small().train()
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))
