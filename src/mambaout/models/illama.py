"""iLLaMA ("Adapting LLaMA Decoder to Vision Transformer"), the LLaMA-style ViT of Table 11:
causal (iLLaMA's own mode) and fully visible (the paper's "we remove the causal mask").

Facts from the iLLaMA repository (techmonsterwang/iLLaMA, commit dfc93b9: models/illama.py
`illama_tiny`, mask_scheduler.py, main_soft.py, engine_soft.py, scripts/train_illama_tiny_in1k.sh,
logs/illama-tiny-in1k-75.0.txt, README.md):

* Patch embedding: conv, kernel = stride = 16, with bias. A class token is appended LAST
  (after the patches in raster order), then a learned absolute position embedding over the
  N = patches + 1 tokens, then dropout (`pos_drop`, p = drop_rate: iLLaMA's only use of
  drop_rate; there is no head dropout). Tiny: dim 192, depth 12, 3 heads of 64.
* Block: x + DropPath(Attention(RMSNorm(x))), x + DropPath(SwiGLU(RMSNorm(x))). RMSNorm: weight
  only, eps 1e-6, normalised in float32 and cast back before the weight. SwiGLU:
  fc2(silu(fc1(x)) * fc3(x)), no biases, hidden int(2 * 4D / 3) rounded up to a multiple of 256
  (512 at D = 192). Attention: qkv Linear with bias, proj Linear with bias, scale head_dim^-0.5.
* RoPE on q and k, one-dimensional over the token sequence: token i (patches 0 .. N-2 in raster
  order, the class token N-1) is rotated by i * theta^(-2j / head_dim), theta 10000, on the
  adjacent pairs (2j, 2j + 1) of each head's channels; computed in float32. The position
  embedding is added as well.
* The mask multiplies the attention AFTER the softmax and the rows are not renormalised:
  attn = softmax(q k^T * scale) * mask, mask = r * ones + (1 - r) * tril (the soft mask; r = 0
  is causal). So a token's output is a sum over earlier values only, but its softmax
  denominator still runs over all keys (later tokens change it through the normaliser).
  The class token (last row) sees everything. Fully visible: no mask (= r = 1).
* Soft mask schedule (iLLaMA's training of the 75.0 tiny): r = 1.0 (main_soft.py's --soft_mask
  default) for the first 50 epochs (--mask_mode soft --mask_schedule constant --cutoff_soft 50),
  then 0 (causal) to the end; the log shows train_soft_mask_rate 1.0 for epochs 0-49 and 0.0
  from epoch 50. The rate is a plain attribute, not in the state dict (our `set_soft_mask`); a
  freshly built causal model is causal (r = 0), as iLLaMA's evaluation builds it.
* Head: final RMSNorm over all tokens, the LAST token (the class token) -> Linear.
* Init: Linear trunc_normal(0.02) with zero bias, pos_embed and cls_token trunc_normal(0.02),
  the patch conv PyTorch's default, RMSNorm ones. No weight decay on pos_embed, cls_token.
* State-dict keys (ours are the same): patch_embed.proj, cls_token, pos_embed,
  blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, mlp.fc3}, norm, head. RoPE
  frequencies are not stored. The released illama-tiny-in1k-75.0.pth (README, Hugging Face
  techmonsterwang/iLLaMA) comes from utils.save_model: {'model', 'optimizer', 'epoch',
  'scaler', 'args': argparse.Namespace[, 'model_ema']}.
* Size: 5,701,096 parameters (the log's n_parameters; README 5.7M). MACs: README 1.3G. Counted
  as fvcore does (convs, linears and the two attention matmuls; RMSNorm, RoPE and the mask are
  elementwise and not counted): 1.254G at 224, which `paper_macs` writes out and our counter
  measures exactly. Without the attention matmuls (a Linear/Conv-only counter) it would be
  1.075G, which does not round to 1.3, so iLLaMA's 1.3G counts them.

Our choices: RoPE is written with real cos / sin (the same rotation as iLLaMA's complex product,
exportable); without a mask (fully visible, or r = 1) attention runs through
F.scaled_dot_product_attention, with one the explicit softmax-times-mask; an input of another
size than the model was built for gets the patch part of the position embedding resized
(bicubic, as timm's resample_abs_pos_embed) and RoPE positions 0 .. N-1 for its own N (iLLaMA
asserts the built size); the class token's position embedding is kept.

timm's contract (issue 22): pretrained_cfg and its `default_cfg` alias, forward_intermediates /
prune_intermediate_layers (as timm's ViT), group_matcher, no_weight_decay,
set_grad_checkpointing; FX (torchvision's and timm's feature extractors; under symbolic tracing
the input is taken to have the built size), TorchScript, torch.export, deep copies, pickle,
inference_mode and the meta device.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..errors import MambaOutError
from .blocks import DefaultCfgAlias, stage_indices
from .fast import fx_tracing

ROPE_THETA = 10000.0


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) in float32, cast back, times a learned weight (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def swiglu_hidden(dim: int, mlp_ratio: float = 4.0, multiple_of: int = 256) -> int:
    """LLaMA's FFN width: int(2/3 of mlp_ratio * dim), rounded up to a multiple of 256."""
    hidden = int(2 * int(dim * mlp_ratio) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class Mlp(nn.Module):
    """SwiGLU without biases: fc2(silu(fc1(x)) * fc3(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


def rope_angles(n: int, head_dim: int, device: Optional[torch.device] = None,
                theta: float = ROPE_THETA) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (n, head_dim / 2) in float32: position i, frequency theta^(-2j / head_dim)."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    angles = torch.outer(torch.arange(n, device=device).float(), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the adjacent channel pairs (2j, 2j + 1) of x (B, H, N, head_dim) by the angles of
    each token, in float32, and cast back."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def soft_mask(n: int, ratio: float, device: Optional[torch.device] = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """iLLaMA's soft mask over n tokens: ratio * ones + (1 - ratio) * lower-triangular ones."""
    causal = torch.ones(n, n, device=device, dtype=dtype).tril()
    return ratio * torch.ones_like(causal) + (1 - ratio) * causal


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) [* mask] @ v over (B, H, N, head_dim): iLLaMA's mask
    multiplies the softmaxed weights, whose rows are not renormalised. Without a mask,
    PyTorch's fused attention (the same product)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    attn = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)
    return ((attn * mask.to(attn.dtype)) @ v.to(attn.dtype)).to(v.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on q and k; `mask` multiplies the softmaxed weights."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of an even width (RoPE rotates pairs)")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor],
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = rope
        x = masked_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """LLaMA decoder layer: x + attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = RMSNorm(dim, eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor],
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rope, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch: NCHW image -> NCHW grid of patch embeddings."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def paper_macs(img_size: int = 224, patch_size: int = 16, dim: int = 192, depth: int = 12,
               mlp_hidden: int = 512, in_chans: int = 3, num_classes: int = 1000,
               attention_matmuls: bool = True) -> int:
    """MACs of one image in iLLaMA's / fvcore's convention, written out: the patch conv, per
    block qkv, q k^T, attn v, proj and the three SwiGLU linears, and the head; RMSNorm, RoPE and
    the mask are elementwise (0). attention_matmuls=False leaves out q k^T and attn v (what a
    Linear/Conv-only counter would report)."""
    p = (img_size // patch_size) ** 2
    n = p + 1
    block = n * dim * 3 * dim + n * dim * dim + 3 * n * dim * mlp_hidden
    if attention_matmuls:
        block += 2 * n * n * dim
    return p * in_chans * patch_size ** 2 * dim + depth * block + dim * num_classes


class ILLaMA(DefaultCfgAlias, nn.Module):
    """iLLaMA with timm's classifier and feature interface (architecture and facts: module
    docstring).

    Args:
        img_size: the input size the position embedding is made for (224); other input sizes
            resize it. patch_size, dim, depth, num_heads: 16, 192, 12, 3 for iLLaMA-T.
        causal: iLLaMA's (soft) causal mask; False = fully visible (no mask).
        mlp_ratio: the FFN's nominal ratio (4; SwiGLU's hidden is 2/3 of it, rounded up to 256).
        drop_rate: dropout after the position embedding (iLLaMA's pos_drop).
        drop_path_rate: stochastic depth, linear from 0 over the blocks.
        global_pool: "token" (the class token, last), "avg" (mean of the patch tokens) or "".
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 dim: int = 192, depth: int = 12, num_heads: int = 3, causal: bool = False,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = "token"):
        super().__init__()
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if patch_size <= 0 or min(img) < patch_size:
            raise ValueError(f"img_size {img_size} must be at least one patch ({patch_size})")
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = dim
        self.patch_size = patch_size
        self.head_dim = dim // num_heads
        self.grid = (img[0] // patch_size, img[1] // patch_size)
        self.causal = causal
        self.soft_mask_ratio = 0.0            # iLLaMA's soft_mask_rate; causal models only
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        hidden = swiglu_hidden(dim, mlp_ratio)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([Block(dim, num_heads, hidden, r, norm_eps) for r in rates])
        self.norm = RMSNorm(dim, norm_eps)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.pretrained_cfg: dict = {}

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- the soft mask ---------------------------------------------------------------------
    def set_soft_mask(self, ratio: float):
        """The mask ratio r of a causal model: mask = r * ones + (1 - r) * causal; 0 = causal,
        1 = fully visible. A training recipe sets it per epoch (it is not in the state dict)."""
        if not self.causal:
            raise ValueError("this iLLaMA is fully visible: it has no mask to soften")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"the soft mask ratio must be in [0, 1], got {ratio}")
        self.soft_mask_ratio = float(ratio)

    def attention_mask(self, n: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        """The (n, n) mask the blocks apply after the softmax; None when there is none (fully
        visible, or a soft mask of ratio 1, which is all ones)."""
        if not self.causal or self.soft_mask_ratio == 1.0:
            return None
        return soft_mask(n, self.soft_mask_ratio, device)

    # ---- timm's interface ------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-wise lr decay groups (timm.optim), as timm's ViT: the embeddings first, one
        group per block, the final norm with the last block, the head last (unmatched)."""
        return dict(stem=r"^(?:cls_token|pos_embed|patch_embed)",
                    blocks=[(r"^blocks\.(\d+)\.", None), (r"^norm\.", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        p = self.pos_embed
        self.head = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype) \
            if num_classes > 0 else nn.Identity()
        self._init_weights(self.head)

    def _pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The position embedding for a token grid: the built one, or its patch part resized."""
        if grid == self.grid:
            return self.pos_embed
        patches, cls = self.pos_embed[:, :-1], self.pos_embed[:, -1:]
        patches = patches.reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(self.pos_embed.dtype)
        return torch.cat((patches, cls), dim=1)

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor):
        if fx_tracing(x):      # a Proxy's size cannot be checked
            return
        if min(x.shape[-2:]) < self.patch_size:
            raise MambaOutError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}px patch")

    @torch.jit.unused
    def _grid_of(self, x: torch.Tensor) -> Tuple[int, int]:
        """The token grid of the patch embedding's output; the built one under FX tracing."""
        return self.grid if fx_tracing(x) else (x.shape[2], x.shape[3])

    def _tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], Tuple[torch.Tensor, torch.Tensor],
                                                  Optional[torch.Tensor]]:
        """Image -> (tokens with the class token last and positions added, grid, rope, mask).
        Under FX symbolic tracing the grid is taken to be the built one."""
        if not torch.jit.is_scripting():
            self._check_input(x)
        x = self.patch_embed(x)
        if torch.jit.is_scripting():
            grid = (x.shape[2], x.shape[3])
        else:
            grid = self._grid_of(x)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((x, self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)), dim=1)
        x = self.pos_drop(x + self._pos_embed(grid))
        n = grid[0] * grid[1] + 1
        device = self.pos_embed.device          # (not x's: a Proxy under FX)
        return x, grid, rope_angles(n, self.head_dim, device), self.attention_mask(n, device)

    def _block(self, blk: nn.Module, x: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor],
               mask: Optional[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, rope, mask, use_reentrant=False)
        return blk(x, rope, mask)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> normalised tokens (B, patches + 1, D), the class token last."""
        x, _, rope, mask = self._tokens(x)
        if torch.jit.is_scripting():
            for blk in self.blocks:
                x = blk(x, rope, mask)
        else:
            for blk in self.blocks:
                x = self._block(blk, x, rope, mask)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, -1]
        elif self.global_pool == "avg":
            x = x[:, :-1].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The outputs of the blocks in `indices` as timm's VisionTransformer gives them: the
        class token removed, the patch tokens as an NCHW map over the token grid ("NLC": as
        (B, L, D) tokens). indices: None = all blocks, an int n = the last n, or block indices
        (negative allowed). norm: the final RMSNorm on each. Returns (final features, as
        forward_features gives them, intermediates) or only the intermediates."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = stage_indices(len(self.blocks), indices)
        last = max(take) if stop_early else len(self.blocks) - 1
        x, grid, rope, mask = self._tokens(x)
        intermediates = []
        for i, blk in enumerate(self.blocks[:last + 1]):
            x = self._block(blk, x, rope, mask)
            if i in take:
                y = (self.norm(x) if norm else x)[:, :-1]
                if output_fmt == "NCHW":
                    y = y.reshape(y.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what forward_intermediates(indices) does not need, as timm's ViT: the blocks
        after the last one taken; the final norm (-> Identity) with prune_norm; the head
        (-> Identity, global_pool "") with prune_head. Returns the kept indices (non-negative)."""
        take = stage_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max(take) + 1]
        self.feature_info = self.feature_info[:max(take) + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take
