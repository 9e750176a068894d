"""Building blocks of MambaOut.

`GatedCNNBlock` is Algorithm 1 of the supplementary, line for line; read the
two side by side. Stages keep activations channels-last, (B, H, W, C), so the
LayerNorms and Linears act on the last dimension; only the depthwise conv and
the strided convs see (B, C, H, W).

Module and parameter names follow timm's MambaOut so that its checkpoints load
without renaming (see weights.py for the official release's names).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import List

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale, trunc_normal_

from .fast import fx_tracing, gated_cnn_fast

LayerNorm = partial(nn.LayerNorm, eps=1e-6)

ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh"), "silu": nn.SiLU}


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def nchw_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class GatedCNNBlock(nn.Module):
    """Gated CNN block (Algorithm 1): Mamba's block without the SSM.

    x -> LayerNorm -> fc1 -> split(gate, identity, conv)
      -> act(gate) * cat(identity, depthwise_conv(conv)) -> fc2 -> (layer scale) -> drop path -> + x

    Args:
        dim: input/output channels.
        expansion_ratio: hidden = int(expansion_ratio * dim). Default 8/3.
        kernel_size: depthwise conv kernel. Default 7.
        conv_ratio: conv_channels = int(conv_ratio * dim); the depthwise conv
            only sees these channels (partial-channel convolution).
        ls_init_value: layer-scale init; None disables layer scale.
        conv_channels: overrides conv_ratio with an exact channel count.
        mixer_layer: optional second token mixer applied to the conv output
            (channels -> module on (B, H, W, channels)); Table 7's hybrids, see hybrid.py.
    """

    def __init__(self, dim, expansion_ratio=8 / 3, kernel_size=7, conv_ratio=1.0,
                 ls_init_value=None, act_layer=nn.GELU, norm_layer=LayerNorm, drop_path=0.0,
                 conv_channels=None, mixer_layer=None):
        super().__init__()
        self.norm = norm_layer(dim)
        hidden = int(expansion_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden * 2)
        self.act = act_layer()
        if conv_channels is None:
            conv_channels = int(conv_ratio * dim)
        if not 0 < conv_channels <= hidden:
            raise ValueError(f"conv channels must be in 1..{hidden}, got {conv_channels}")
        self.split_indices = (hidden, hidden - conv_channels, conv_channels)
        self.conv = nn.Conv2d(conv_channels, conv_channels, kernel_size=kernel_size,
                              padding=kernel_size // 2, groups=conv_channels)
        self.mixer = mixer_layer(conv_channels) if mixer_layer is not None else None
        self.fc2 = nn.Linear(hidden, dim)
        self.ls = LayerScale(dim, init_values=ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # Use the fast path (models/fast.py); False runs the reference below. An instance
        # attribute (TorchScript sees only those); the class default keeps older pickles working.
        self.fast = True

    fast = True

    def forward(self, x):
        if torch.jit.is_scripting():  # TorchScript compiles only this branch: plain ops
            return self.forward_reference(x)
        if self.fast and self.mixer is None and not fx_tracing(x):  # FX: plain ops, traceable
            return gated_cnn_fast(self, x)
        return self.forward_reference(x)

    def forward_reference(self, x):  # x: [B, H, W, C]; Algorithm 1 line for line
        shortcut = x
        x = self.norm(x)
        g, i, c = torch.split(self.fc1(x), self.split_indices, dim=-1)
        c = nchw_to_nhwc(self.conv(nhwc_to_nchw(c)))
        if self.mixer is not None:  # Table 7 hybrids only: attention or SSM after the conv
            c = self.mixer(c)
        x = self.fc2(self.act(g) * torch.cat((i, c), dim=-1))
        x = self.ls(x)
        return self.drop_path(x) + shortcut


class Stem(nn.Module):
    """3x3/2 conv to dim/2 -> [LayerNorm] -> act -> 3x3/2 conv -> LayerNorm. NCHW in, NHWC out."""

    def __init__(self, in_chans, dim, mid_norm=True, act_layer=nn.GELU, norm_layer=LayerNorm):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = norm_layer(dim // 2) if mid_norm else None
        self.act = act_layer()
        self.conv2 = nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1)
        self.norm2 = norm_layer(dim)

    def forward(self, x):
        # Channels-last input: conv1 then writes a dense NHWC map, so the permutes around the
        # LayerNorms are free views (on CPU this is also the faster convolution layout).
        x = nchw_to_nhwc(self.conv1(x.contiguous(memory_format=torch.channels_last)))
        if self.norm1 is not None:
            x = self.norm1(x)
        x = self.conv2(nhwc_to_nchw(self.act(x)))
        return self.norm2(nchw_to_nhwc(x))


class Downsample(nn.Module):
    """Between stages: 3x3/2 conv then LayerNorm ("conv"), or LayerNorm first ("conv_nf"). NHWC."""

    def __init__(self, in_dim, out_dim, norm_first=False, norm_layer=LayerNorm):
        super().__init__()
        self.norm_first = norm_first
        if norm_first:  # registration order = state-dict order, matching timm's
            self.norm = norm_layer(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)
        if not norm_first:
            self.norm = norm_layer(out_dim)

    def forward(self, x):
        if self.norm_first:
            return nchw_to_nhwc(self.conv(nhwc_to_nchw(self.norm(x))))
        return self.norm(nchw_to_nhwc(self.conv(nhwc_to_nchw(x))))


class MlpHead(nn.Module):
    """Classifier head on an NHWC map: global average pool -> LayerNorm -> MLP.

    mid_norm=True is the paper's head (fc -> act -> LayerNorm -> fc); False is the
    `_rw` head (fc -> act -> fc). `pre_logits` stops before the last fc.
    """

    def __init__(self, dim, num_classes=1000, mlp_ratio=4, mid_norm=True, act_layer=nn.GELU,
                 norm_layer=LayerNorm, drop_rate=0.0, global_pool="avg"):
        super().__init__()
        self.global_pool = global_pool
        self.in_features = dim
        hidden = int(mlp_ratio * dim)
        self.norm = norm_layer(dim)
        layers = [("fc", nn.Linear(dim, hidden)), ("act", act_layer())]
        if mid_norm:
            layers.append(("norm", norm_layer(hidden)))
        self.pre_logits = nn.Sequential(OrderedDict(layers))
        self.num_features = hidden
        self.head_dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes, global_pool=None):
        """A freshly initialised last fc for `num_classes` (0 = none), on the head's device/dtype."""
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)
            ref = self.pre_logits.fc.weight
            self.fc.to(ref.device, ref.dtype)

    def forward(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        elif self.global_pool == "max":
            x = x.amax((1, 2))
        x = self.head_dropout(self.pre_logits(self.norm(x)))
        return x if pre_logits else self.fc(x)


class MlpHeadClassifier:
    """timm's classifier interface for models whose head is an MlpHead at `self.head`."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool=None):
        """Replace the last fc with a freshly initialised one for `num_classes` (0 = no fc)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)


class StagedModel:
    """timm's training interface of MambaOut-shaped models (`stem`, then `stages` each with an
    optional `downsample` and its `blocks`): gradient checkpointing per stage, and the layer-wise
    lr decay groups (timm.optim's param_groups_layer_decay): the stem first, then per stage (coarse)
    or per block, a stage's downsample with its first block; the head is what matches nothing
    (timm puts it last). timm's regexes, our names."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem",
                    blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.downsample", (0,)),
                                                            (r"^stages\.(\d+)\.blocks\.(\d+)", None)])


def stage_indices(n: int, indices) -> List[int]:
    """timm's forward_intermediates `indices` over n stages: None = all, an int k = the last k,
    or a list of stage indices (negative allowed); sorted, each in range."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices}: must be between 1 and {n}")
        return list(range(n - indices, n))
    out = []
    for i in indices:
        if not -n <= i < n:
            raise ValueError(f"stage index {i} out of range for {n} stages")
        out.append(i % n)
    return sorted(out)


class DefaultCfgAlias:
    """timm's models carry `default_cfg`, the older name of `pretrained_cfg`: the same dict
    (a mixin of every model family's class)."""
    __jit_unused_properties__ = ["default_cfg"]

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict):
        self.pretrained_cfg = cfg
