"""Every comparator family meets the contract timm holds its models to (issue 22), as MambaOut
does in test_timm_contract.py: VMamba, LocalVMamba, EfficientVMamba (vmamba.StageClassifier),
Vim, iLLaMA (causal and not), IsotropicNet (attention / conv / SSM mixers), IsotropicMambaOut.

Checked against timm's installed source (timm/models/mambaout.py and vision_transformer.py for
forward_intermediates / prune_intermediate_layers, _manipulate.py group_with_matcher,
_features_fx.py FeatureGraphNet) and torchvision's create_feature_extractor. Depth-reduced
models at 32 px, batch 1-2.
"""
import copy
import inspect
import io
import pickle

import pytest
import torch
from timm.layers import get_notrace_modules
from timm.models import PretrainedCfg
from timm.models import mambaout as timm_mambaout
from timm.models._features_fx import FeatureGraphNet
from timm.models._manipulate import group_with_matcher
from timm.optim._param_groups import param_groups_layer_decay
from torchvision.models.feature_extraction import create_feature_extractor

import mambaout
from mambaout.models import local_vmamba, ssm
from mambaout.models.efficient_vmamba import EfficientVMamba
from mambaout.models.illama import ILLaMA
from mambaout.models.isotropic import IsotropicMambaOut, IsotropicNet
from mambaout.models.local_vmamba import LocalVMamba
from mambaout.models.vim import Vim
from mambaout.models.vmamba import VMamba
from helpers import assert_fp32_close, randomize

HIER = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=5)
ISO = dict(img_size=32, depth=2, dim=32, patch_size=8, num_classes=5)
BUILD = {
    "vmamba": lambda: VMamba(**HIER),
    "local_vmamba": lambda: LocalVMamba(directions=["h", "v_flip", "w2", "w2_flip"], **HIER),
    "efficient_vmamba": lambda: EfficientVMamba(**HIER),
    "vim": lambda: Vim(**ISO),
    "illama": lambda: ILLaMA(num_heads=2, **ISO),
    "illama_causal": lambda: ILLaMA(num_heads=2, causal=True, **ISO),
    "iso_attn": lambda: IsotropicNet(mixer="attn", pool="cls", **ISO),
    "iso_conv": lambda: IsotropicNet(mixer="conv", **ISO),
    "iso_ssm": lambda: IsotropicNet(mixer="ssm", pool="cls", **ISO),
    "iso_mambaout": lambda: IsotropicMambaOut(depth=2, dim=32, patch_size=8, num_classes=5),
}
NAMES = list(BUILD)
HIERARCHICAL = ["vmamba", "local_vmamba", "efficient_vmamba"]
# Stage models and Vim own selective scans reached through Python-built orders and computed
# names: not TorchScript (vmamba.StageClassifier / vim.py docstrings). The rest script.
NOT_SCRIPTABLE = HIERARCHICAL + ["vim"]
SCAN_FAMILIES = HIERARCHICAL + ["vim", "iso_ssm"]


def small(name):
    torch.manual_seed(0)
    return randomize(BUILD[name]()).eval()


def image(b=2, size=32):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(3))


def classifier_path(model):
    return next(n for n, m in model.named_modules() if m is model.get_classifier())


def stack_of(model):
    """The ModuleList / Sequential forward_intermediates indexes (stages or blocks)."""
    return model.layers if hasattr(model, "layers") else model.blocks


# ---- signatures, pretrained_cfg / default_cfg ------------------------------------------------------
@pytest.mark.parametrize("cls", [VMamba, LocalVMamba, EfficientVMamba, Vim, ILLaMA, IsotropicNet, IsotropicMambaOut])
def test_signatures_are_timms(cls):
    for method in ("forward_intermediates", "prune_intermediate_layers"):
        ours = inspect.signature(getattr(cls, method)).parameters
        theirs = inspect.signature(getattr(timm_mambaout.MambaOut, method)).parameters
        assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]
    for method in ("set_grad_checkpointing", "group_matcher", "no_weight_decay", "get_classifier",
                   "reset_classifier", "forward_head"):
        assert callable(getattr(cls, method)), method


@pytest.mark.parametrize("name, kw", [
    ("vmamba_tiny", dict(depths=(1, 1, 1, 1))), ("local_vmamba_tiny", dict(depths=(1, 1, 1, 1), directions=["h"])),
    ("efficient_vmamba_small", dict(depths=(1, 1, 1, 1))), ("vim_small", dict(depth=1)),
    ("illama_tiny_causal", dict(depth=1)), ("vit_tiny_p16", dict(depth=1)), ("mambaout_s_iso", dict(depth=1))])
def test_default_cfg_is_the_pretrained_cfg(name, kw):
    model = mambaout.create_model(name, **kw)
    assert model.default_cfg is model.pretrained_cfg and model.default_cfg
    cfg = PretrainedCfg(**model.default_cfg)          # timm's fields only
    modules = dict(model.named_modules())
    assert modules[cfg.classifier] is model.get_classifier()
    assert isinstance(modules[cfg.first_conv], torch.nn.Conv2d)
    model.default_cfg = {"crop_pct": 0.9}
    assert model.pretrained_cfg == {"crop_pct": 0.9}


# ---- forward_intermediates / prune_intermediate_layers -------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_prune_intermediate_layers(name):
    model, x = small(name), image()
    n = len(stack_of(model))
    with torch.no_grad():
        want = model(x)
        _, maps = model.forward_intermediates(x)
    # all kept, head kept: nothing changes
    assert model.prune_intermediate_layers(n, prune_head=False) == list(range(n))
    with torch.no_grad():
        assert_fp32_close(model(x), want)
    keep = [0, n - 2]
    kept = model.prune_intermediate_layers([0, -2], prune_norm=True)
    assert kept == keep and len(stack_of(model)) == n - 1 and len(model.feature_info) == n - 1
    assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
    with torch.no_grad():
        final, pruned = model.forward_intermediates(x, indices=kept)
        for got, i in zip(pruned, kept):
            assert_fp32_close(got, maps[i])
        assert_fp32_close(model(x), final)      # head gone, no pooling: the final features
        assert model(x).dim() > 2
    if name in HIERARCHICAL:                     # the last kept stage, before any downsample
        assert model.num_features == HIER["dims"][n - 2]
        assert_fp32_close(final.permute(0, 3, 1, 2), maps[n - 2])


@pytest.mark.parametrize("name", ["vmamba", "vim", "illama"])
def test_prune_keeps_the_norm_unless_asked(name):
    model, x = small(name), image()
    with torch.no_grad():
        feats = model.forward_features(x)
    model.prune_intermediate_layers(len(stack_of(model)), prune_norm=False, prune_head=True)
    with torch.no_grad():
        assert_fp32_close(model(x), feats)
    assert model.num_classes == 0


# ---- optimiser interface ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_group_matcher_drives_timm_layer_decay(name):
    model = small(name)
    named = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd <= set(named), nwd - set(named)
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=nwd, layer_decay=0.5)
    seen = [p for g in groups for p in g["params"]]
    assert len(seen) == len(named) and len(set(map(id, seen))) == len(seen)

    layer = group_with_matcher(model.named_parameters(), model.group_matcher(), reverse=True)
    head = classifier_path(model)
    stem = min(layer.values())
    blocks = []                                  # the layer id of each block, in order
    for i, mod in enumerate(stack_of(model)):
        for j, blk in enumerate(getattr(mod, "blocks", [mod])):
            prefix = next(n for n, m in model.named_modules() if m is blk) + "."
            ids = {layer[n] for n in named if n.startswith(prefix)}
            assert len(ids) == 1, (prefix, ids)
            blocks.append(ids.pop())
    assert stem == 0 and blocks == sorted(set(blocks)) and blocks[0] > stem
    assert layer[head + ".weight"] == max(layer.values()) > blocks[-1]
    if name in HIERARCHICAL:                     # a stage's downsample joins its last block
        merge = next(n for n in named if n.startswith("layers.0.") and ".reduction." in n)
        assert layer[merge] == blocks[0]
        merge = next(n for n in named if n.startswith("layers.2.") and ".reduction." in n)
        assert layer[merge] == blocks[2]
        coarse = group_with_matcher(model.named_parameters(), model.group_matcher(coarse=True), reverse=True)
        assert len(set(coarse.values())) == 6        # stem, 4 stages, the norm and head
    if name in SCAN_FAMILIES:
        assert any(n.rsplit(".", 1)[-1] in ("A_logs", "A_log", "A_b_log") for n in nwd) or name == "vim"


@pytest.mark.parametrize("name", NAMES)
def test_set_grad_checkpointing_keeps_gradients(name):
    x = image()
    grads = []
    for enable in (False, True):
        model = small(name).train()
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert_fp32_close(b, a, rtol=1e-4)


# ---- FX tracing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_timm_feature_graph_net_equals_eager(name):
    """timm's FX extractor on feature_info's modules; the scan modules are registered leaves."""
    model, x = small(name), image(1)
    net = FeatureGraphNet(model, out_indices=(0, 1))
    seen = {}
    hooks = [model.get_submodule(model.feature_info[i]["module"]).register_forward_hook(
        lambda m, a, out, i=i: seen.__setitem__(i, out)) for i in (0, 1)]
    with torch.no_grad():
        feats = net(x)
        model(x)
    for h in hooks:
        h.remove()
    for i, f in enumerate(feats):
        # a Vim block returns (mixer output, residual): the graph's node is its last op, the mixer
        want = seen[i][0] if isinstance(seen[i], tuple) else seen[i]
        assert_fp32_close(f, want)


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_create_feature_extractor(name):
    model, x = small(name), image(1)
    head = classifier_path(model)
    fe = create_feature_extractor(model, {head: "logits"}, tracer_kwargs={"leaf_modules": get_notrace_modules()})
    with torch.no_grad():
        assert_fp32_close(fe(x)["logits"], model(x))
    if name in SCAN_FAMILIES:        # without the leaves named, the scan's Python loop cannot be traced
        with pytest.raises(Exception):
            create_feature_extractor(small(name), {head: "logits"})


# ---- TorchScript ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOT_SCRIPTABLE])
def test_jit_script_equals_eager(name):
    model, x = small(name), image()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        want = model(x)
        assert_fp32_close(scripted(x), want)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        assert_fp32_close(torch.jit.load(buf)(x), want)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_the_scan_scripts():
    """run_scan under TorchScript compiles the recurrence; same results as eager."""
    g = torch.Generator().manual_seed(0)
    u, B, C = (torch.randn(2, 7, n, generator=g) for n in (6, 4, 4))
    delta = torch.rand(2, 7, 6, generator=g)
    A, D = -torch.rand(6, 4, generator=g) - 0.1, torch.randn(6, generator=g)
    scripted = torch.jit.script(ssm.run_scan)
    assert_fp32_close(scripted(u, delta, A, B, C, D), ssm.selective_scan_ref(u, delta, A, B, C, D))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("name", NOT_SCRIPTABLE)
def test_scan_stage_models_do_not_script(name):
    """Documented (vmamba.StageClassifier, vim.py): these need torch.export instead."""
    with pytest.raises(Exception):
        torch.jit.script(small(name))


# ---- torch.export ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_torch_export_equals_eager(name):
    model, x = small(name), image(1)
    local_vmamba._block_orders.cache_clear()
    with torch.no_grad():
        want = model(x)
        ep = torch.export.export(model, (x,))
        assert_fp32_close(ep.module()(x), want)
        assert_fp32_close(model(x), want)       # nothing fake left in any cache (LocalVMamba's orders)


# ---- inference_mode, meta, copies ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_built_and_run_under_inference_mode(name):
    ref, x = small(name), image()
    with torch.no_grad():
        want = ref(x)
    local_vmamba._block_orders.cache_clear()
    with torch.inference_mode():
        model = BUILD[name]().eval()
        model.load_state_dict(ref.state_dict())
        assert_fp32_close(model(x), want)
    with torch.no_grad():                         # built there, run outside it
        assert_fp32_close(model(x), want)
    with torch.inference_mode():                  # built outside, run inside
        assert_fp32_close(ref(x), want)
    ref.train()                                   # caches filled under inference_mode serve autograd
    ref(x).sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_meta_device(name):
    with torch.device("meta"):
        model = BUILD[name]().eval()
        x = torch.empty(2, 3, 32, 32)
        out = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (2, 5) and out.is_meta
    assert all(m.is_meta and m.dim() == 4 and m.shape[0] == 2 for m in maps)
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in model.feature_info]


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_and_pickle_after_use(name):
    model, x = small(name), image()
    with torch.no_grad():
        want = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.equal(clone(x), want)
            clone.get_classifier().bias.add_(1.0)          # the copy's weights are its own
            assert not torch.equal(clone(x), want)
            assert torch.equal(model(x), want)
