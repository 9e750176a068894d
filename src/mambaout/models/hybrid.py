"""Second token mixers inside the Gated CNN block: Table 7's two hybrid models.

The paper builds two tiny models that keep Gated CNN blocks in stages 1-2 and, in
stages 3-4, add a global token mixer right after the depthwise conv, inside the gate:

* VMamba-Mixed-Stage-T (28M, 5.2G): Mamba blocks, i.e. conv followed by a selective
  SSM. As in Mamba, the conv and the SSM see every non-gate channel (``conv_ratio``
  = expansion ratio, no identity channels) and the SSM's dt rank is ceil(dim / 16).
* MambaOut-Attn-T (26M, 4.7G): conv followed by self-attention.

The paper leaves the attention's parameterisation open, and its numbers constrain
it: MambaOut-Attn-T has fewer parameters (26M) than MambaOut-Tiny (26.5M), so the
attention cannot carry its own q/k/v projections (at stage 3 alone those would add
4M). Ours uses the conv branch itself, already a learned projection of the input
made by fc1, as query, key and value (heads of 32 channels) and adds no weights:
26.5M and 4.76G, within 2% of the table. The SSM choice lands at 27.9M and 5.0G.
Both second mixers scan / attend over the H*W tokens of a stage in raster order.

Tracing (ours): GridAttention is plain ops (FX, TorchScript, torch.export). The selective
scan picks its algorithm from the input's size and device (ssm.run_scan), which FX symbolic
tracing cannot follow, so GridSSM is registered with timm as a leaf module
(timm.layers.register_notrace_module): timm's FX feature extractors call it whole; with
torchvision's create_feature_extractor pass tracer_kwargs={"leaf_modules": [GridSSM]}.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

STAGE_MIXERS = ("", "attn", "ssm")


class GridAttention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) map with q = k = v = the input.

    No weights of its own (see the module docstring); fully visible; heads of
    `head_dim` channels (C must divide into them)."""

    def __init__(self, dim: int, head_dim: int = 32):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads = dim // head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        t = x.reshape(b, h * w, self.num_heads, c // self.num_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(t, t, t)
        return y.transpose(1, 2).reshape(b, h, w, c)


@register_notrace_module
class GridSSM(nn.Module):
    """Mamba's selective SSM over the H*W tokens of a (B, H, W, C) map, raster order."""

    def __init__(self, channels: int, model_dim: int, d_state: int = 16):
        super().__init__()
        from .ssm import SelectiveSSM
        self.ssm = SelectiveSSM(channels, d_state=d_state, dt_rank=math.ceil(model_dim / 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        return self.ssm(x.reshape(b, h * w, c)).reshape(b, h, w, c)


def stage_block_kwargs(kind: str, dim: int, expansion_ratio: float) -> dict:
    """Extra GatedCNNBlock keyword arguments for a stage of width `dim` whose second token
    mixer is `kind` ("" = none: a plain MambaOut stage)."""
    if kind not in STAGE_MIXERS:
        raise ValueError(f"stage mixer must be one of {STAGE_MIXERS}, got {kind!r}")
    if kind == "attn":
        return dict(mixer_layer=GridAttention)
    if kind == "ssm":  # Mamba block: conv and SSM on all non-gate channels
        return dict(conv_channels=int(expansion_ratio * dim),
                    mixer_layer=lambda channels: GridSSM(channels, dim))
    return {}
