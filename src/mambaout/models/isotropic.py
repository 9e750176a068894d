"""Isotropic (ViT-like) models: the token-mixer study of Table 8, the causal vs
fully-visible ViTs of Table 11, and the isotropic MambaOut of Table 5.

`IsotropicNet` (Tables 8 and 11)
    patch embedding (conv, kernel = stride = patch) -> learnable position embedding ->
    `depth` residual layers, each  x + mixer(LN(x))  then  x + MLP(LN(x))  (MLP ratio 4,
    GELU) -> final LN -> pooling (token mean, or a class token) -> Linear head.
    Token mixers, as the paper describes them:
      "conv": the Mamba block without gate and SSM:
              Linear(D, 2D) -> 7x7 depthwise conv over the token grid -> Linear(2D, D).
      "attn": ViT multi-head self-attention (qkv Linear(D, 3D), proj Linear(D, D));
              causal=True masks attention to earlier tokens (raster order).
      "ssm":  the Mamba block without gate and conv:
              Linear(D, 2D) -> selective SSM (d_state 16, dt_rank ceil(D / 16)) -> Linear(2D, D).
              Causal; bidirectional=True adds a reversed scan (Vim).

    Table 8 (CIFAR, 32x32, patch 4 -> 64 tokens, 12 layers, mean pooling), with the
    MAC counter of analysis/complexity.py (fvcore convention; the scan per VMamba's formula):

        mixer             dim   params    MACs      paper
        conv               64   0.684M    43.3M     0.7M  43M
        attn (+causal)     64   0.608M    44.7M     0.7M  45M
        ssm                64   0.696M    56.6M     0.7M  56M
        ssm bidirectional  64   0.785M    74.8M     -
        conv              192   5.59M    356.3M     6M   357M
        attn (+causal)    192   5.36M    360.7M     6M   361M
        ssm               192   5.70M    401.1M     6M   399M
        ssm bidirectional 192   6.04M    460.4M     -

    The attention model cannot reach the table's 0.7M / 6M with a standard ViT layer:
    qkv (3D^2) + proj (D^2) + MLP (8D^2) is 12D^2 per layer, the same as the conv and
    SSM layers' two Linears (4D^2) and MLP (8D^2) but without their depthwise conv
    (2D * 49 + 2D) or SSM (x_proj, dt_proj, A, D: 116D at D=64) parameters. 12 layers
    of 12 * 64^2 are 0.59M, so 0.61M in all, which rounds to 0.6M, and 5.36M at D=192
    (the paper prints "6M" for all three). We keep the standard layer rather than
    inflate it to match.

    Table 11 (ImageNet, 224x224, patch 16, depth 12, class token): ViT-T (D 192,
    3 heads) 5.72M params / 1.26G MACs; ViT-S (D 384, 6 heads) 22.05M / 4.61G (Table 5:
    22M, 4.6G). In fully-visible mode the class token comes first, as in ViT; in causal
    mode it comes LAST, as in iLLaMA, so that it attends to every patch.

    Our choices: heads default to max(2, D // 64) (D 64: 2 heads of 32; D 192: 3 of
    64, as ViT-T); no activation inside the conv and SSM mixers (Mamba's SiLU follows
    its causal conv, which these mixers do not have, and the paper names none); LayerNorm
    eps 1e-6 everywhere; qkv with bias, as ViT. Parameter names follow timm's
    VisionTransformer (patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head), so the fully-visible ViT-T/S load
    timm's ViT weights; the conv and SSM mixers sit under blocks.N.mixer.

`IsotropicMambaOut` (Table 5, MambaOut-S iso.)
    patch-16 conv stem (Conv2d(3, 384, 16, stride 16)) -> LayerNorm -> N Gated CNN
    blocks (dim 384, expansion 8/3, kernel 7) -> the hierarchical model's MLP head.
    The table gives 24M params and 4.3G MACs but not how many blocks. One block has
    1.202M params (LN 768 + fc1 384*2048+2048 + dwconv 384*49+384 + fc2 1024*384+384)
    and 235.3M MACs at 14x14 = 196 tokens (per token: LN 5*384 + fc1 384*2048 + dwconv
    384*49 + fc2 1024*384 = 1.2M); the stem has 0.296M params / 58.2M MACs and the head
    2.132M / 2.1M. N = 18 gives 21.64 + 0.30 + 2.13 = 24.07M params and 4.235 + 0.058 +
    0.002 = 4.295G MACs (24M, 4.3G); N = 17 gives 22.86M / 4.06G and N = 19 25.27M /
    4.53G. The "residual blocks" column of Table 5 also says 18.

timm's contract (issue 22), both models: pretrained_cfg and its `default_cfg` alias,
feature_info (one entry per block, at stride patch_size), forward_intermediates /
prune_intermediate_layers (as timm's ViT), group_matcher, no_weight_decay,
set_grad_checkpointing; FX feature extraction (under symbolic tracing IsotropicNet takes the
input to have the built size; its SSM mixer's SelectiveSSM is a registered FX leaf, which
torchvision's create_feature_extractor needs named: tracer_kwargs={"leaf_modules":
timm.layers.get_notrace_modules()}), TorchScript (all three mixers: the scan compiles as its
recurrence), torch.export, deep copies, pickle, inference_mode and the meta device.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..errors import MambaOutError
from .blocks import (DefaultCfgAlias, GatedCNNBlock, LayerNorm, MlpHead, MlpHeadClassifier, nchw_to_nhwc,
                     nhwc_to_nchw, stage_indices)
from .fast import fx_tracing
from .ssm import SelectiveSSM


def _init_weights(m: nn.Module):
    """trunc_normal(0.02) weights and zero biases for Linear/Conv; SSM dt_proj kept."""
    if isinstance(m, (nn.Linear, nn.Conv2d)) and not getattr(m, "_keep_init", False):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ---- token mixers: (batch, L, D) -> (batch, L, D) -------------------------------------

class ConvMixer(nn.Module):
    """Mamba block without gate and SSM: Linear(D, 2D) -> depthwise conv -> Linear(2D, D)."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.conv = nn.Conv2d(2 * dim, 2 * dim, kernel_size, padding=kernel_size // 2, groups=2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x).transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])   # tokens in raster order
        x = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc2(x)


class Attention(nn.Module):
    """ViT multi-head self-attention; `causal` lets token t see tokens <= t only."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class SSMMixer(nn.Module):
    """Mamba block without gate and conv: Linear(D, 2D) -> selective SSM -> Linear(2D, D)."""

    def __init__(self, dim: int, d_state: int = 16, bidirectional: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.ssm = SelectiveSSM(2 * dim, d_state=d_state, dt_rank=math.ceil(dim / 16),
                                bidirectional=bidirectional)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        return self.fc2(self.ssm(self.fc1(x)))


class IsotropicLayer(nn.Module):
    """x + mixer(LN(x)), then x + MLP(LN(x)) (pre-norm Transformer layer)."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        # timm's name for attention, so that ViT checkpoints load; "mixer" for the others.
        self.mixer_name = "attn" if isinstance(mixer, Attention) else "mixer"
        self.add_module(self.mixer_name, mixer)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        # by name, not getattr(self, self.mixer_name): TorchScript resolves hasattr when compiling
        if hasattr(self, "attn"):
            y = self.attn(self.norm1(x), grid)
        else:
            y = self.mixer(self.norm1(x), grid)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch size; NCHW image -> (B, H/p, W/p, D)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nchw_to_nhwc(self.proj(x))


class _ClassifierAPI(DefaultCfgAlias):
    """timm-style helpers shared by both isotropic models (need self.blocks)."""

    grad_checkpointing = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.unused
    def _run_blocks(self, x, *args):
        """The blocks, checkpointed when grad checkpointing is on and autograd records
        (TorchScript runs them plainly instead: see the forward_features)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.blocks:
                x = checkpoint(blk, x, *args, use_reentrant=False)
            return x
        for blk in self.blocks:
            x = blk(x, *args)
        return x

    def _prune_blocks(self, indices) -> List[int]:
        take = stage_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max(take) + 1]
        self.feature_info = self.feature_info[:max(take) + 1]
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class IsotropicNet(_ClassifierAPI, nn.Module):
    """ViT-like isotropic model with a conv, attention or selective-SSM token mixer.

    See the module docstring for the architecture, the Table 8 / 11 numbers and our
    choices. Args:
        mixer: "conv", "attn" or "ssm".
        dim, depth, patch_size, img_size: width, layers, patch size and the image size
            the position embedding is made for (inputs must have that size).
        num_heads: attention heads (default max(2, dim // 64)).
        causal: causal attention ("attn" only).
        bidirectional: add a reversed scan ("ssm" only; otherwise the SSM is causal).
        pool: "avg" (mean over patch tokens) or "cls" (a class token; first in
            fully-visible mode, last when the mixer is causal).
        kernel_size: depthwise conv kernel ("conv"); d_state: SSM state size ("ssm").
        drop_path_rate: stochastic depth, linear over the layers; drop_rate: dropout
            before the head.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, mixer: str = "attn",
                 dim: int = 192, depth: int = 12, patch_size: int = 16, img_size: int = 224,
                 num_heads: Optional[int] = None, causal: bool = False, bidirectional: bool = False,
                 pool: str = "avg", mlp_ratio: float = 4.0, kernel_size: int = 7, d_state: int = 16,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0):
        super().__init__()
        if mixer not in ("conv", "attn", "ssm"):
            raise ValueError(f"mixer must be 'conv', 'attn' or 'ssm', got {mixer!r}")
        if pool not in ("avg", "cls"):
            raise ValueError(f"pool must be 'avg' or 'cls', got {pool!r}")
        if causal and mixer != "attn":
            raise ValueError("causal=True applies to the 'attn' mixer (the 'ssm' one is causal "
                             "unless bidirectional)")
        if bidirectional and mixer != "ssm":
            raise ValueError("bidirectional=True applies to the 'ssm' mixer only")
        if pool == "cls" and mixer == "conv":
            raise ValueError("the 'conv' mixer works on the token grid; use pool='avg'")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if img[0] % patch_size or img[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = dim
        self.mixer = mixer
        self.grid = (img[0] // patch_size, img[1] // patch_size)
        self.patch_size = patch_size
        self.global_pool = pool
        self.causal = causal or (mixer == "ssm" and not bidirectional)
        num_heads = num_heads or max(2, dim // 64)

        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        n_tokens = self.grid[0] * self.grid[1]
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            n_tokens += 1
        else:
            self.cls_token = None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, dim))

        def make_mixer():
            if mixer == "conv":
                return ConvMixer(dim, kernel_size)
            if mixer == "attn":
                return Attention(dim, num_heads, causal=causal)
            return SSMMixer(dim, d_state=d_state, bidirectional=bidirectional)

        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([IsotropicLayer(dim, make_mixer(), mlp_ratio, r) for r in rates])
        self.norm = LayerNorm(dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.pretrained_cfg: dict = {}

        self.apply(_init_weights)
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    def _cls_index(self) -> int:
        return -1 if self.causal else 0

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-wise lr decay groups (timm.optim), as timm's ViT: the embeddings first, one
        group per layer, the final norm with the last layer, the head last (unmatched)."""
        return dict(stem=r"^(?:cls_token|pos_embed|patch_embed)",
                    blocks=[(r"^blocks\.(\d+)\.", None), (r"^norm\.", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """timm's ViT's (pos_embed, cls_token) and, with the SSM mixer, its A_log and D (Mamba's
        `_no_weight_decay` marks), as the hierarchical hybrids do."""
        names = {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())
        return names | {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in ("A_log", "D", "A_log_b", "D_b")}

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what forward_intermediates(indices) does not need, as timm's ViT: the layers
        after the last one taken; the final norm (-> Identity) with prune_norm; the head
        (-> Identity, global_pool "": all tokens) with prune_head. Returns the kept indices."""
        take = self._prune_blocks(indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """New head for `num_classes` (0 = none); global_pool "avg", "cls" (needs a class token)
        or "" (no pooling: all tokens, as timm's ViT)."""
        if global_pool is not None:
            if global_pool not in ("avg", "cls", "") or (global_pool == "cls" and self.cls_token is None):
                raise ValueError(f"global_pool {global_pool!r} not available for this model")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device, dtype = self.pos_embed.device, self.pos_embed.dtype
        self.head = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype) \
            if num_classes > 0 else nn.Identity()
        _init_weights(self.head)

    @torch.jit.unused
    def _grid_of(self, x: torch.Tensor) -> Tuple[int, int]:
        """The token grid of the patch embedding's NHWC output, which must be the built one
        (one-line error otherwise); under FX symbolic tracing assumed to be."""
        if fx_tracing(x):
            return self.grid
        grid = (x.shape[1], x.shape[2])
        if grid != self.grid:
            raise MambaOutError(f"input gives a {grid[0]}x{grid[1]} token grid; this model's "
                                f"position embedding is for {self.grid[0]}x{self.grid[1]} (build it "
                                f"with img_size={grid[0] * self.patch_size})")
        return grid

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """NCHW image -> (tokens with the class token, if any, and positions added, grid)."""
        x = self.patch_embed(x)
        if torch.jit.is_scripting():
            grid = (x.shape[1], x.shape[2])     # the position embedding's add checks the size
        else:
            grid = self._grid_of(x)
        x = x.flatten(1, 2)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            if self.causal:
                x = torch.cat([x, cls], dim=1)
            else:
                x = torch.cat([cls, x], dim=1)
        return x + self.pos_embed, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> normalised tokens (B, L, D), class token included if any."""
        x, grid = self._embed(x)
        if torch.jit.is_scripting():
            for blk in self.blocks:
                x = blk(x, grid)
        else:
            x = self._run_blocks(x, grid)
        return self.norm(x)

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The outputs of the layers in `indices` as timm's VisionTransformer gives them: the
        class token (if any) removed, the patch tokens as an NCHW map over the token grid
        ("NLC": as (B, L, D) tokens). indices: None = all layers, an int n = the last n, or
        layer indices (negative allowed). norm: apply the final LayerNorm to each. Returns
        (final features, intermediates), the final ones as forward_features gives them (all
        tokens, normalised), or only the intermediates."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = stage_indices(len(self.blocks), indices)
        last = max(take) if stop_early else len(self.blocks) - 1
        x, grid = self._embed(x)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        intermediates = []
        for i, blk in enumerate(self.blocks[:last + 1]):
            x = checkpoint(blk, x, grid, use_reentrant=False) if ckpt else blk(x, grid)
            if i in take:
                y = self.norm(x) if norm else x
                if self.cls_token is not None:     # first in fully-visible mode, last when causal
                    y = y[:, :-1] if self.causal else y[:, 1:]
                if output_fmt == "NCHW":
                    y = y.reshape(y.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "cls":
            x = x[:, self._cls_index()]
        elif self.global_pool == "avg":
            if self.cls_token is not None:                # mean over the patch tokens only
                x = (x[:, :-1] if self.causal else x[:, 1:]).mean(1)
            else:
                x = x.mean(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


class PatchStem(nn.Module):
    """Patch conv then LayerNorm: NCHW image -> NHWC map at stride `patch_size`."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(nchw_to_nhwc(self.conv(x)))


class IsotropicMambaOut(MlpHeadClassifier, _ClassifierAPI, nn.Module):
    """Isotropic MambaOut (Table 5, MambaOut-S iso.): patch stem -> Gated CNN blocks -> MLP head.

    The derivation of depth 18 from the table's 24M params / 4.3G MACs is in the module
    docstring. Any input size divisible by the patch size works (no position embedding).
    Args:
        depth, dim, patch_size: blocks, width (384) and patch size (16).
        expansion_ratio, kernel_size, conv_ratio: Gated CNN block options (8/3, 7, 1.0).
        drop_path_rate: stochastic depth, linear over the blocks; drop_rate: head dropout.
        img_size: accepted for a uniform constructor; unused.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depth: int = 18, dim: int = 384,
                 patch_size: int = 16, expansion_ratio: float = 8 / 3, kernel_size: int = 7,
                 conv_ratio: float = 1.0, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                 img_size=None, global_pool: str = "avg"):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = dim
        self.stem = PatchStem(in_chans, dim, patch_size)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[
            GatedCNNBlock(dim, expansion_ratio=expansion_ratio, kernel_size=kernel_size,
                          conv_ratio=conv_ratio, drop_path=r) for r in rates])
        self.head = MlpHead(dim, num_classes, drop_rate=drop_rate, global_pool=global_pool)
        self.head_hidden_size = self.head.num_features
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.pretrained_cfg: dict = {}
        self.apply(_init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-wise lr decay groups (timm.optim): the stem first, one group per block, the
        head (MlpHead, with its norm) last (unmatched)."""
        return dict(stem=r"^stem", blocks=r"^blocks\.(\d+)\.")

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()      # nothing beyond timm's default (1-d parameters), as MambaOut

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what forward_intermediates(indices) does not need, as timm's MambaOut: the
        blocks after the last one taken and, with prune_head, the head's norm and MLP and its
        classifier (the model then returns the NHWC map). prune_norm: there is no norm outside
        the head, so it changes nothing. Returns the kept indices (non-negative)."""
        take = self._prune_blocks(indices)
        if prune_head:
            self.head.norm = nn.Identity()
            self.head.pre_logits = nn.Identity()
            self.head.in_features = self.head.num_features = self.head_hidden_size = self.num_features
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> NHWC feature map at stride `patch_size`."""
        x = self.stem(x)
        if torch.jit.is_scripting():
            return self.blocks(x)
        return self._run_blocks(x)

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The outputs of the blocks in `indices` (maps at stride `patch_size`), NCHW or NHWC.
        indices: None = all blocks, an int n = the last n, or block indices (negative allowed).
        `norm` is accepted for timm compatibility; there is no norm after the last block (the
        head's LayerNorm follows the pooling), so it does nothing. Returns (final features,
        NHWC as forward_features gives them, intermediates) or only the intermediates."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = stage_indices(len(self.blocks), indices)
        last = max(take) if stop_early else len(self.blocks) - 1
        x = self.stem(x)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        intermediates = []
        for i, blk in enumerate(self.blocks[:last + 1]):
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
            if i in take:
                intermediates.append(nhwc_to_nchw(x).contiguous() if output_fmt == "NCHW" else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)
