"""VideoMamba, the video Mamba of the paper's Table 10 (VideoMamba-Ti on Something-Something V2:
7M params, 54G MACs for 2 clips x 3 crops of 8 frames at 224, 65.1 top-1), in pure PyTorch.

Facts from OpenGVLab/VideoMamba (at f3427e4): videomamba/video_sm/models/videomamba.py
(``VisionMamba``, ``videomamba_tiny``), the finetuning script's checkpoint surgery
(video_sm/run_class_finetuning.py), the SSV2 run (exp/ssv2/videomamba_tiny/run_f8x224.sh: 174
classes, 8 frames, tubelet 1, drop path 0.1, 2 clips x 3 crops at test) and its Mamba fork
(mamba/mamba_ssm/modules/mamba_simple.py):

* Patch embedding: a Conv3d with kernel = stride = (tubelet, p, p) and bias (``patch_embed.proj``);
  VideoMamba-Ti: p 16, tubelet 1, embed 192, depth 24.
* Tokens: per frame, the class token FIRST, then the h * w patches; the spatial embedding
  ``pos_embed`` (1, 1 + h * w, D) is added to all of them (the class token gets its entry 0), then
  the temporal embedding ``temporal_pos_embedding`` (1, T / tubelet, D) to the patches of each frame
  (not to the class token). The sequence is [class token, frame 0's patches, frame 1's, ...]
  (spatial first, one class token for the clip), then ``pos_drop``.
* Blocks: Vim's "Add -> RMSNorm -> Mixer" blocks (vim.Block: residual in float32, stochastic depth
  [0] + linspace(0, rate, depth) shifted by one block, the final add at the full rate), the mixer
  the bidirectional Mamba of its fork, whose two directions are SUMMED (``out + out_b.flip``: no
  division by 2, unlike Vim's if_divide_out), then ``norm_f``.
* Head: ``head(head_drop(norm_f(...)[:, 0]))``: the class token; ``head_drop`` is fc_drop_rate.
* Init (VisionMamba.__init__): every Linear trunc_normal(0.02) with zero bias (segm_init_weights
  over the whole model: in_proj, x_proj and dt_proj too, which also zeroes Mamba's dt bias), then
  out_proj kaiming_uniform(a=sqrt 5) / sqrt(depth); pos_embed trunc_normal(0.02); cls_token and
  temporal_pos_embedding zeros; the Conv3d and conv1d keep PyTorch's defaults; A and D as Mamba's.
* State-dict keys are the official ones (patch_embed.proj, cls_token, pos_embed,
  temporal_pos_embedding, layers.i.mixer.*, layers.i.norm.weight, norm_f.weight, head), so the
  released video checkpoints (videomamba_t16_ssv2_f8_res224.pth, {"model": sd} or the plain dict)
  load strictly. `VideoMamba.adapt_state_dict` makes other checkpoints fit, as the finetuning
  script does: the ImageNet VideoMamba-Ti (videomamba_t16_in1k_res224.pth, image_sm layout: a
  Conv2d patch embedding [192, 3, 16, 16], no temporal embedding) has its kernel inflated (the 2D
  kernel in the centre slice, zeros elsewhere: inflate_weight(center=True)) and a zero temporal
  embedding; a temporal embedding of another length is interpolated linearly (align_corners
  False), a spatial one of another grid bicubically with the class token kept first. A
  classifier of another class count is re-initialised by weights.fit_state_dict.

Our choices: clips are (B, C, T, H, W); a clip of another length than ``num_frames`` runs with the
temporal embedding interpolated on the fly (the same interpolation adapt_state_dict applies to a
checkpoint); another spatial grid is refused in one line (as Vim: build the model with that
img_size, the checkpoint's embedding is then resampled). num_frames lives on the model (an
attribute and constructor argument), not in its pretrained_cfg, whose keys stay timm's.

MACs: our counter (analysis.complexity) counts every conv / linear of both directions and the scan
in VMamba's convention: 14.49G per 8 x 224 view (86.9G for six). VideoMamba's own numbers are
plain fvcore on the model with LayerNorm in place of RMSNorm (its script's instruction): the
fused Mamba function (conv1d, x_proj, dt_proj, the scan, the gating) is a Python op fvcore does
not see, so per block only in_proj, out_proj and the norm count (`fvcore_macs`). That count gives
its ImageNet model zoo's FLOPs (Ti / S / M at 224, 448, 576: 1.1 / 4.3 / 7.1, 4.3 / 16.9 / 28.0,
12.7 / 50.4 G; M at 576 83.3 for its 83.1) and 8.60G per 8 x 224 view of the SSV2 model, which
its video table prints as 9G: 9 x 6 views = the 54G the MambaOut paper quotes (8.60 x 6 = 51.6G).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, resample_abs_pos_embed, to_2tuple, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..errors import MambaOutError
from .blocks import DefaultCfgAlias
from .vim import Block, RMSNorm, TokenClassifier
from .weights import inflate_kernel

GLOBAL_POOLS = ("token", "avg", "")


class PatchEmbed3d(nn.Module):
    """Conv3d (tubelet, p, p) stride (tubelet, p, p) with bias: (B, C, T, H, W) -> (B, D, t, h, w)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, tubelet_size: int):
        super().__init__()
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def resample_temporal_embed(embed: torch.Tensor, length: int) -> torch.Tensor:
    """(1, t, D) -> (1, length, D), linear with align_corners=False (the finetuning script's)."""
    if embed.shape[1] == length:
        return embed
    out = F.interpolate(embed.permute(0, 2, 1).float(), size=(length,), mode="linear", align_corners=False)
    return out.permute(0, 2, 1).to(embed.dtype)


def fvcore_macs(img_size=224, num_frames: int = 8, depth: int = 24, dim: int = 192, patch_size: int = 16,
                tubelet_size: int = 1, expand: float = 2.0, num_classes: int = 174, in_chans: int = 3) -> int:
    """VideoMamba's MACs of one clip as its repository counts them: fvcore's FlopCountAnalysis
    on the model built with rms_norm=False, fused_add_norm=False (LayerNorm with affine: 5 per
    element). Its Mamba forward runs the fused mamba_inner_fn_no_out_proj (conv1d, x_proj,
    dt_proj, scan and gating inside one autograd Function), which fvcore skips; it sees the
    patch Conv3d (no bias), per block in_proj (L D 2E), out_proj (L E D) and the norm (5 L D),
    the final norm, and the classifier (D x classes), over L = 1 + t h w tokens."""
    h, w = to_2tuple(img_size)
    patches = (num_frames // tubelet_size) * (h // patch_size) * (w // patch_size)
    L, E = patches + 1, int(expand * dim)
    block = L * dim * 2 * E + L * E * dim + 5 * L * dim
    return (patches * dim * in_chans * tubelet_size * patch_size ** 2 + depth * block + 5 * L * dim
            + dim * num_classes)


class VideoMamba(TokenClassifier, DefaultCfgAlias, nn.Module):
    """VideoMamba video classifier: (B, C, T, H, W) clips -> (B, num_classes) logits.

    img_size, num_frames: the input the position embeddings are built for (int or (H, W); T).
    depth, dim, patch_size, tubelet_size: 24, 192, 16, 1 for VideoMamba-Ti. d_state, d_conv,
    expand: the Mamba mixer's (16, 4, 2). drop_rate: dropout after the position embeddings
    (VideoMamba's pos_drop); fc_drop_rate: dropout before the classifier (its head_drop);
    drop_path_rate: peak stochastic depth (0.1 for SSV2). global_pool: "token" (the class
    token, VideoMamba's), "avg" (mean of the patch tokens) or "" (none: all tokens).
    chunk: ssm.run_scan's (None picks).
    """

    def __init__(self, img_size=224, num_frames: int = 8, depth: int = 24, dim: int = 192,
                 patch_size: int = 16, tubelet_size: int = 1, in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0.0, fc_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 d_state: int = 16, d_conv: int = 4, expand: float = 2.0, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, global_pool: str = "token", chunk: Optional[int] = None):
        super().__init__()
        img = to_2tuple(img_size)
        if depth < 1 or dim < 1 or patch_size < 1 or tubelet_size < 1:
            raise ValueError(f"depth, dim, patch_size and tubelet_size must be positive, got "
                             f"{depth}, {dim}, {patch_size}, {tubelet_size}")
        if img[0] < patch_size or img[1] < patch_size:
            raise ValueError(f"img_size {img_size} is smaller than patch_size {patch_size}")
        if num_frames < tubelet_size:
            raise ValueError(f"num_frames {num_frames} is smaller than tubelet_size {tubelet_size}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_frames, self.patch_size, self.tubelet_size = num_frames, patch_size, tubelet_size
        self.grid = (img[0] // patch_size, img[1] // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]          # per frame
        self.num_features = self.head_hidden_size = self.embed_dim = dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(in_chans, dim, patch_size, tubelet_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames // tubelet_size, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList([
            Block(dim, rates[i], norm_eps, residual_in_fp32, d_state=d_state, d_conv=d_conv, expand=expand,
                  divide_out=False, chunk=chunk) for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(dim, eps=norm_eps)
        self.head_drop = nn.Dropout(fc_drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg: dict = {}
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        """VideoMamba's init (module docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        for layer in self.layers:        # Mamba's rescale_prenorm_residual: 1 residual per block
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight.div_(math.sqrt(len(self.layers)))

    # How the paper counts this family's MACs, where it is not our counter's (analysis.complexity).
    paper_macs_convention = "VideoMamba's fvcore count (LayerNorm for RMSNorm, the fused Mamba function unseen)"

    def paper_macs(self, img_size) -> int:
        """MACs of one clip of num_frames at img_size in VideoMamba's convention (`fvcore_macs`)."""
        mixer = self.layers[0].mixer
        return fvcore_macs(img_size, self.num_frames, depth=len(self.layers), dim=self.embed_dim,
                           patch_size=self.patch_size, tubelet_size=self.tubelet_size,
                           expand=mixer.d_inner / self.embed_dim, num_classes=self.num_classes,
                           in_chans=self.in_chans)

    # ---- timm's interface ------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-wise lr decay groups (timm.optim): the embeddings first, one group per block,
        the final norm with the last block, the head last (unmatched)."""
        return dict(stem=r"^(?:cls_token|pos_embed|temporal_pos_embedding|patch_embed)",
                    blocks=[(r"^layers\.(\d+)\.", None), (r"^norm_f\.", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self):
        # VideoMamba's list; timm's optimiser factory also exempts every 1-D parameter.
        return {"pos_embed", "cls_token", "temporal_pos_embedding"}

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A checkpoint's state dict made to fit this model (module docstring): a 2D patch
        kernel inflated, a missing temporal embedding as zeros, a temporal embedding of another
        length and a spatial one of another (square) grid resampled. Other keys pass through."""
        sd = dict(sd)
        proj = sd.get("patch_embed.proj.weight")
        if proj is not None and proj.dim() == 4:
            sd["patch_embed.proj.weight"] = inflate_kernel(proj, self.tubelet_size)
        length = self.temporal_pos_embedding.shape[1]
        if "temporal_pos_embedding" not in sd:          # an image checkpoint
            sd["temporal_pos_embedding"] = torch.zeros_like(self.temporal_pos_embedding, device="cpu")
        elif sd["temporal_pos_embedding"].dim() == 3:
            sd["temporal_pos_embedding"] = resample_temporal_embed(sd["temporal_pos_embedding"], length)
        pos = sd.get("pos_embed")
        if pos is not None and pos.dim() == 3 and pos.shape[1] != self.pos_embed.shape[1]:
            sd["pos_embed"] = resample_abs_pos_embed(pos, list(self.grid), num_prefix_tokens=1,
                                                     interpolation="bicubic", antialias=False)
        return sd

    # ---- forward ---------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> [class token, frame 0's patches, frame 1's, ...] with both embeddings added."""
        if x.dim() != 5:
            raise MambaOutError(f"VideoMamba takes clips (batch, channels, frames, height, width); got a "
                                f"{x.dim()}-d input of shape {tuple(x.shape)}")
        x = self.patch_embed(x)                                   # (B, D, t, h, w)
        b, d, t = x.shape[:3]
        if tuple(x.shape[3:]) != self.grid:
            raise MambaOutError(f"input gives a {x.shape[3]}x{x.shape[4]} token grid; this model's position "
                                f"embedding is for {self.grid[0]}x{self.grid[1]} (build it with "
                                f"img_size={x.shape[3] * self.patch_size} or resize the input)")
        patches = x.permute(0, 2, 3, 4, 1).reshape(b, t, -1, d)
        patches = patches + self.pos_embed[:, None, 1:]
        patches = patches + resample_temporal_embed(self.temporal_pos_embedding, t)[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        return self.pos_drop(torch.cat([cls, patches.flatten(1, 2)], dim=1))

    def _layer(self, layer: Block, hidden, residual):
        if self.grad_checkpointing and residual.requires_grad and not torch.jit.is_scripting():
            return checkpoint(layer, hidden, residual, use_reentrant=False)
        return layer(hidden, residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clip -> normalised tokens (B, 1 + t h w, D), the class token first."""
        hidden, residual = None, self._embed(x)
        for layer in self.layers:
            hidden, residual = self._layer(layer, hidden, residual)
        residual = residual + self.drop_path(hidden)
        return self.norm_f(residual)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, 1:].mean(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
