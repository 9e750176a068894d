"""MambaOut for video: the hierarchical MambaOut on clips, for the paper's Table 10
(MambaOut-Femto on Something-Something V2: 7M params, 58G MACs for 2 clips x 3 crops of 8 frames
at 224, 63.6 top-1).

The paper does not publish its video design; this one follows the paper's idea (Mamba's block
without the SSM: the token mixing is the Gated CNN block's depthwise conv) on clips:

* Per frame: the stem, the downsampling between stages, every LayerNorm and Linear (they act on
  the channels of one position) -- the 2D model's modules, run on (B T) frames.
* Time is mixed where the block mixes space: in the stages listed in `temporal_kernels` the
  depthwise conv is a depthwise 3D conv of kernel (kt, k, k), zero padded, fully visible (frame t
  sees t - kt//2 .. t + kt//2), on the block's conv channels; elsewhere it is the 2D conv frame by
  frame (kernel (1, k, k)).
* Head: global average pool over T, H and W, then the 2D head (norm, MLP, classifier).

Where: the 58G budget. The 2D Femto costs 1.156G per 224 frame, so 8 frames cost 9.24G (55.4G
for six views) and temporal mixing has 0.43G per view left. A kt = 3 kernel adds two more
k x k slices to a block's conv: in all four stages 104M MACs per frame (60.4G for six views),
in stages 2-4 59M (58.3G: the paper's 58G), in stages 3-4 37M (57.2G). So kt = 3 in stages 2, 3
and 4 (`temporal_kernels` (1, 3, 3, 3)); stage 1, at 56 x 56, runs frame by frame.

Initialisation from the image model: ImageNet MambaOut-Femto weights (timm's layout, or the
official one, which weights.fit_state_dict renames first) load with each 3D conv kernel inflated
(`adapt_state_dict`: the 2D kernel in the centre slice, zeros elsewhere), so the video model starts
as the image model: a clip of identical frames gives the image model's logits on that frame. All
other keys and shapes are the 2D model's (timm's names).

`mambaout_femto_frames` is the same backbone with temporal_kernels (1, 1, 1, 1): each frame alone,
the features averaged over T -- the frame-averaging baseline the temporal design is measured
against. Frame-by-frame blocks take the 2D block's fast path (models/fast.py) except while training
with stochastic depth, which drops a block for a whole clip (as in the temporal blocks), not for
single frames.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..errors import MambaOutError
from .blocks import (ACTIVATIONS, DefaultCfgAlias, Downsample, GatedCNNBlock, MlpHead, MlpHeadClassifier, StagedModel, Stem,
                     nchw_to_nhwc, nhwc_to_nchw)
from .weights import inflate_kernel


class VideoGatedCNNBlock(GatedCNNBlock):
    """The Gated CNN block on clips (B, T, H, W, C), its depthwise conv (kt, k, k) over time and
    space (kt > 1: an nn.Conv3d, weight (C, 1, kt, k, k)) or (1, k, k) frame by frame (kt = 1: the
    2D block's nn.Conv2d). Parameters and names are the 2D block's."""

    def __init__(self, dim, temporal_kernel: int = 3, **kwargs):
        super().__init__(dim, **kwargs)
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal kernel must be odd and positive, got {temporal_kernel}")
        self.temporal_kernel = temporal_kernel
        if temporal_kernel > 1:
            c, k = self.conv.in_channels, self.conv.kernel_size
            self.conv = nn.Conv3d(c, c, kernel_size=(temporal_kernel, *k),
                                  padding=(temporal_kernel // 2, *self.conv.padding), groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal_kernel == 1 and not self._drops_clips():
            # Frames are independent here: the 2D block (and its fast path) on B * T frames.
            return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.forward_clip(x)

    def _drops_clips(self) -> bool:
        return self.training and isinstance(self.drop_path, DropPath) and self.drop_path.drop_prob > 0

    def forward_clip(self, x: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 on (B, T, H, W, C); stochastic depth drops the block for whole clips."""
        shortcut = x
        x = self.norm(x)
        g, i, c = torch.split(self.fc1(x), self.split_indices, dim=-1)
        c = self._mix(c)
        x = self.fc2(self.act(g) * torch.cat((i, c), dim=-1))
        return self.drop_path(self.ls(x)) + shortcut

    def _mix(self, c: torch.Tensor) -> torch.Tensor:
        """The depthwise conv on (B, T, H, W, C): 3D over (T, H, W), or 2D per frame."""
        frames = nhwc_to_nchw(c.flatten(0, 1))
        if self.temporal_kernel == 1:
            return nchw_to_nhwc(self.conv(frames)).unflatten(0, c.shape[:2])
        return nchw_to_nhwc(self._conv3d_as_2d(frames, c.shape[1])).unflatten(0, c.shape[:2])

    def _conv3d_as_2d(self, frames: torch.Tensor, t: int) -> torch.Tensor:
        """self.conv (depthwise (kt, k, k), zero padding in time) on (B * T, C, H, W) frames as kt
        depthwise 2D convs, each added to the frames it reaches: the same numbers as nn.Conv3d
        (to float rounding), 3-9x faster on CPU, where depthwise Conv3d's backward is slow."""
        w, half = self.conv.weight, self.temporal_kernel // 2
        out = None
        for j in range(self.temporal_kernel):
            y = F.conv2d(frames, w[:, :, j], None, padding=self.conv.padding[1:], groups=w.shape[0])
            y = y.unflatten(0, (-1, t))
            shift = j - half        # output frame i reads input frame i + shift
            if shift < 0:
                y = F.pad(y[:, :t + shift], (0, 0, 0, 0, 0, 0, -shift, 0))
            elif shift > 0:
                y = F.pad(y[:, shift:], (0, 0, 0, 0, 0, 0, 0, shift))
            out = y if out is None else out + y
        if self.conv.bias is not None:
            out = out + self.conv.bias.view(1, 1, -1, 1, 1)
        return out.flatten(0, 1)


class VideoStage(nn.Module):
    """A MambaOut stage on clips (B, T, H, W, C): the 2D downsampling frame by frame, then blocks."""

    def __init__(self, dim, dim_out, depth, downsample: Optional[str] = None, drop_path=(), **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = nn.Identity() if downsample is None else \
            Downsample(dim, dim_out, norm_first=downsample == "conv_nf")
        self.blocks = nn.Sequential(*[VideoGatedCNNBlock(dim_out, drop_path=drop_path[j], **block_kwargs)
                                      for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class MambaOutVideo(DefaultCfgAlias, StagedModel, MlpHeadClassifier, nn.Module):
    """MambaOut video classifier: (B, C, T, H, W) clips -> (B, num_classes) logits.

    The 2D MambaOut's arguments (depths, dims, expansion_ratio, kernel_size, conv_ratio,
    ls_init_value, stem_mid_norm, downsample, head, act, drop_path_rate, drop_rate, global_pool),
    plus temporal_kernels: the depthwise conv's temporal size per stage (odd; 1 = frame by
    frame), and num_frames: the clip length it is meant for (clips of any length run; the MAC
    counter and the data read it). global_pool "avg" / "max" pools over T, H and W; "" keeps the
    (B, T, H, W) map.
    """

    def __init__(self, in_chans=3, num_classes=1000, depths=(3, 3, 9, 3), dims=(48, 96, 192, 288),
                 expansion_ratio=8 / 3, kernel_size=7, conv_ratio=1.0, ls_init_value=None,
                 stem_mid_norm=True, downsample="conv", head="mlp", act="gelu", drop_path_rate=0.0,
                 drop_rate=0.0, global_pool="avg", temporal_kernels: Sequence[int] = (1, 3, 3, 3),
                 num_frames: int = 8):
        super().__init__()
        if head not in ("mlp", "norm_mlp"):
            raise ValueError(f"head must be 'mlp' or 'norm_mlp', got {head!r}")
        if downsample not in ("conv", "conv_nf"):
            raise ValueError(f"downsample must be 'conv' or 'conv_nf', got {downsample!r}")
        if len(temporal_kernels) != len(depths):
            raise ValueError(f"temporal_kernels needs one entry per stage ({len(depths)}), got {temporal_kernels!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        act_layer = ACTIVATIONS[act]
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_frames, self.temporal_kernels = num_frames, tuple(temporal_kernels)
        self.stem = Stem(in_chans, dims[0], mid_norm=stem_mid_norm, act_layer=act_layer)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.Sequential()
        prev_dim, start = dims[0], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            self.stages.append(VideoStage(
                prev_dim, dim, depth, downsample=downsample if i > 0 else None,
                drop_path=rates[start:start + depth], temporal_kernel=temporal_kernels[i],
                expansion_ratio=expansion_ratio, kernel_size=kernel_size, conv_ratio=conv_ratio,
                ls_init_value=ls_init_value, act_layer=act_layer))
            prev_dim, start = dim, start + depth
        self.num_features = prev_dim
        self.head = MlpHead(prev_dim, num_classes, mid_norm=head == "mlp", act_layer=nn.GELU,
                            drop_rate=drop_rate, global_pool=global_pool)
        self.head_hidden_size = self.head.num_features
        self.pretrained_cfg: dict = {}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        """The 2D MambaOut's: trunc_normal(0.02) weights, zero biases (the 3D convs too)."""
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- timm's interface ------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """None beyond timm's default (every 1-d parameter), as the 2D MambaOut."""
        return set()

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """An image checkpoint (timm's names) made to fit: each 2D depthwise kernel whose block
        here is 3D inflated to it (`inflate_kernel`: the centre slice). Other keys pass through."""
        own = self.state_dict()
        out = dict(sd)
        for k, w in sd.items():
            target = own.get(k)
            if target is not None and target.dim() == 5 and w.dim() == 4:
                out[k] = inflate_kernel(w, target.shape[2])
        return out

    # ---- forward ---------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clip -> (B, T, H/32, W/32, C) channels-last feature maps."""
        if x.dim() != 5:
            raise MambaOutError(f"MambaOut video models take clips (batch, channels, frames, height, width); "
                                f"got a {x.dim()}-d input of shape {tuple(x.shape)}")
        b, t = x.shape[0], x.shape[2]
        x = self.stem(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, t))
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool over T as the head pools over H and W (the mean of equal-sized frame means is the
        mean over T, H, W), then the 2D head."""
        if self.head.global_pool == "avg":
            x = x.mean(1)
        elif self.head.global_pool == "max":
            x = x.amax(1)
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
