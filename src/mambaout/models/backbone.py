"""MambaOut (and VMamba) as dense-prediction backbones: multi-scale NCHW feature maps, no head.

The backbone is the classification model's stem and stages, under the same module
names (`stem.*`, `stages.N.*`), so an ImageNet checkpoint maps onto it key for key.
As the authors answered for their detection / segmentation runs (official issue
#251), a LayerNorm is added on each output stage (`out_norms.<stage index>`); those
norms are not in any classification checkpoint and start at weight 1, bias 0.

Strides and sizes: the stem and every downsample are 3x3 stride-2 convs with padding
1, which map a side of n pixels to ceil(n / 2). A stage at stride s therefore has
ceil(H / s) x ceil(W / s) positions for any input size (97 x 131 -> 25 x 33 at
stride 4, ..., 4 x 5 at stride 32).
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from timm.models import FeatureInfo

from ..errors import MambaOutError
from .blocks import LayerNorm, nhwc_to_nchw
from .efficient_vmamba import EfficientVMamba
from .local_vmamba import LocalVMamba
from .mambaout import MambaOut
from .vmamba import VMamba
from .registry import check_options, get_variant, model_kwargs, pretrained_cfg
from .weights import extract_state_dict, fetch_pretrained, fit_state_dict, official_to_timm, read_checkpoint

log = logging.getLogger("mambaout")

# Options of the classifier that have no meaning without its head.
_HEAD_OPTIONS = {"num_classes", "head", "drop_rate", "global_pool"}


class MambaOutBackbone(nn.Module):
    """Stem and stages of a hierarchical MambaOut with a LayerNorm on each output.

    forward(x: N x C x H x W) returns one map per entry of `out_indices`, at strides
    4 / 8 / 16 / 32 for stages 0 / 1 / 2 / 3, shaped N x out_channels[i] x ceil(H / s)
    x ceil(W / s). The maps are channels-last in memory (a free view of the stages'
    NHWC activations); call .contiguous() where a dense NCHW layout matters.
    Stages after the last requested one are not built.

    Args:
        out_indices: stage indices to return (0..3, any order on input, returned sorted).
        drop_path_rate, in_chans, depths, dims, ...: the MambaOut constructor's arguments
            (see mambaout.MambaOut); the stochastic-depth schedule is the full model's.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **model_kwargs):
        super().__init__()
        full = MambaOut(num_classes=0, **model_kwargs)
        _set_outputs(self, out_indices, full, LayerNorm)
        self.stem = full.stem
        self.stages = full.stages[:self.out_indices[-1] + 1]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block's activations in the backward pass (less memory, more time)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if str(i) in self.out_norms:
                outs.append(self._output(self.out_norms[str(i)](x)))
        return outs

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.output_fmt == "NHWC" else nhwc_to_nchw(x)

    def load_classification_state_dict(self, sd: Dict[str, torch.Tensor], source: str = "checkpoint"):
        """Load a classification model's weights (timm or official layout) into the trunk.

        The classifier head (`head.*`, the official `norm.*` / `head.*`) and the stages this
        backbone does not build are dropped; every other key must fit exactly (missing,
        unexpected or misshapen keys raise CheckpointError naming the first one). The
        output norms are left as they are. A state dict of the backbone itself (it has
        `out_norms.*`) loads whole, output norms included.
        """
        _load_trunk(self, official_to_timm(dict(sd)), {"stem": self.stem, "stages": self.stages},
                    lambda k: not k.startswith("head.") and not _unbuilt(k, r"stages\.(\d+)\.", len(self.stages)),
                    source)


class VMambaBackbone(nn.Module):
    """Patch embedding and stages of VMamba v0 (vmamba.py) with a LayerNorm on each output.

    forward(x) returns, for each of `out_indices`, the stage's output before its patch
    merging, N x C x H/s x W/s at strides 4 / 8 / 16 / 32 (each patch merging floors odd
    sizes: 97 x 131 -> 24 x 32 at stride 4, ..., 3 x 4 at stride 32), channels-last in
    memory. Module names are the classifier's (`patch_embed.*`, `layers.N.*`), so a VMamba
    checkpoint maps onto it key for key; `out_norms.<stage>` are new (VMamba's detection and
    segmentation backbones also norm each output).
    """

    model_cls = VMamba
    head_prefixes = ("head.", "norm.")      # the classifier's keys a backbone has no use for

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **model_kwargs):
        super().__init__()
        full = self.model_cls(num_classes=0, **model_kwargs)
        _set_outputs(self, out_indices, full, nn.LayerNorm)
        self.patch_embed = full.patch_embed
        self.layers = full.layers[:self.out_indices[-1] + 1]
        last = self.layers[-1]
        # The classifier checkpoint's keys of the dropped downsampling (VMamba: `downsample.*`;
        # EfficientVMamba's conv stages keep it under a block index of the official layout).
        self._dropped_prefix = next((f"layers.{len(self.layers) - 1}.{name}." for name, m in last.named_children()
                                     if last.downsample is not None and m is last.downsample), None)
        last.downsample = None                     # nothing is computed after the last output

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer.forward_blocks(x)
            if str(i) in self.out_norms:
                outs.append(self._output(self.out_norms[str(i)](x)))
            if layer.downsample is not None:
                x = layer.downsample(x)
        return outs

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.output_fmt == "NHWC" else nhwc_to_nchw(x)

    def load_classification_state_dict(self, sd: Dict[str, torch.Tensor], source: str = "checkpoint"):
        """As MambaOutBackbone's: head and final norm dropped, unbuilt stages (and the last
        built stage's patch merging) dropped, the rest strict."""
        dropped = self._dropped_prefix

        def keep(k):
            return (not k.startswith(self.head_prefixes) and not _unbuilt(k, r"layers\.(\d+)\.", len(self.layers))
                    and not (dropped and k.startswith(dropped)))
        _load_trunk(self, dict(sd), {"patch_embed": self.patch_embed, "layers": self.layers}, keep, source)


def _set_outputs(backbone: nn.Module, out_indices: Sequence[int], full: nn.Module, norm) -> None:
    """A backbone's output description from the full model's feature_info: out_indices (sorted,
    checked), in_chans, a `norm` per output (out_norms), feature_info, out_channels, out_strides,
    output_fmt.

    feature_info is timm's FeatureInfo, as on the module `timm.create_model(name,
    features_only=True)` returns (timm/models/_features.py): it describes every stage of the
    full model, and channels() / reduction() / module_name() give the values of the outputs
    (out_indices), so code written for timm's feature extractors (segmentation_models_pytorch,
    detection wrappers) reads this backbone unchanged. Iterating it yields all stages' dicts;
    out_channels / out_strides are the outputs' lists. output_fmt: "NCHW" (default) or "NHWC"
    (the stages' own layout, no permute), as timm's `output_fmt`."""
    info = full.feature_info
    n = len(info)
    if not out_indices or any(not isinstance(i, int) or not 0 <= i < n for i in out_indices):
        raise ValueError(f"out_indices must be stage indices in 0..{n - 1}, got {tuple(out_indices)}")
    backbone.out_indices = tuple(sorted(set(out_indices)))
    backbone.in_chans = full.in_chans
    backbone.output_fmt = "NCHW"
    backbone.out_norms = nn.ModuleDict({str(i): norm(info[i]["num_chs"]) for i in backbone.out_indices})
    backbone.feature_info = FeatureInfo([dict(f) for f in info], backbone.out_indices)
    backbone.out_channels = backbone.feature_info.channels()
    backbone.out_strides = backbone.feature_info.reduction()


class LocalVMambaBackbone(VMambaBackbone):
    """LocalVMamba (local_vmamba.py): VMamba's stages with local scans, the same protocol; its
    classifier is `classifier.*`."""
    model_cls = LocalVMamba
    head_prefixes = ("classifier.",)


class EfficientVMambaBackbone(VMambaBackbone):
    """EfficientVMamba (efficient_vmamba.py) on VMamba's protocol (patch_embed, layers with
    forward_blocks / downsample on NHWC maps); its classifier is `classifier.*`."""
    model_cls = EfficientVMamba
    head_prefixes = ("classifier.",)


BACKBONES = {"mambaout": (MambaOut, MambaOutBackbone), "vmamba": (VMamba, VMambaBackbone),
             "local_vmamba": (LocalVMamba, LocalVMambaBackbone),
             "efficient_vmamba": (EfficientVMamba, EfficientVMambaBackbone)}


def _load_trunk(backbone: nn.Module, sd: Dict[str, torch.Tensor], parts: Dict[str, nn.Module], keep, source: str):
    """A backbone's own state dict (with out_norms) whole; else the classifier's keys that
    `keep` accepts, strictly, into the trunk modules `parts`."""
    if any(k.startswith("out_norms.") for k in sd):
        fit_state_dict(backbone, sd, source=source)
        return
    trunk = nn.Module()                      # a view holding only the checkpoint's part
    for name, module in parts.items():
        setattr(trunk, name, module)
    fit_state_dict(trunk, {k: v for k, v in sd.items() if keep(k)}, source=source)


def _unbuilt(key: str, pattern: str, built: int) -> bool:
    found = re.match(pattern, key)
    return found is not None and int(found.group(1)) >= built


def create_backbone(name: str, out_indices: Sequence[int] = (0, 1, 2, 3), pretrained: bool = False,
                    checkpoint_path=None, **kwargs) -> nn.Module:
    """Backbone of a hierarchical variant ('mambaout_tiny', 'mambaout_base_plus_rw.sw_e150_in12k',
    'vmamba_tiny', 'local_vmamba_tiny', 'efficient_vmamba_small', ...): a MambaOutBackbone or
    a VMambaBackbone (or its LocalVMamba / EfficientVMamba subclass).

    pretrained: the variant's released ImageNet weights (the same hub files as create_model).
    checkpoint_path: any classification checkpoint `load_checkpoint` reads (timm or official
        layout, plain or wrapped, .pth / .safetensors); the head is dropped, the rest strict.
    kwargs: the model's constructor options (drop_path_rate, in_chans, kernel_size, ...).
    """
    v = get_variant(name)
    if v.arch not in BACKBONES:
        raise MambaOutError(f"{v.name} is not a 4-stage model (arch '{v.arch}') and has no multi-scale "
                            f"backbone; use one of: {', '.join(sorted(BACKBONES))}")
    model_cls, backbone_cls = BACKBONES[v.arch]
    options = model_kwargs(v)
    check_options(model_cls, kwargs, "backbone", exclude=_HEAD_OPTIONS)
    options.update(kwargs)
    try:
        backbone = backbone_cls(out_indices=tuple(out_indices), **options)
    except ValueError as e:
        raise MambaOutError(f"{v.name}: {e}") from None
    backbone.variant = v.name
    if checkpoint_path is not None:
        sd = extract_state_dict(read_checkpoint(checkpoint_path))
        backbone.load_classification_state_dict(sd, source=f"checkpoint {checkpoint_path}")
    elif pretrained:
        tag = pretrained_cfg(name)["tag"]
        if tag is None:
            raise MambaOutError(f"{v.name} has no released weights")
        path = fetch_pretrained(v.name, tag)
        backbone.load_classification_state_dict(extract_state_dict(read_checkpoint(path)),
                                                 source=f"{v.name}.{tag} weights")
        log.info("loaded pretrained backbone weights %s", path)
    return backbone

