"""Vision Mamba (Vim), the isotropic vision Mamba of the paper's Table 5 (Vim-S: 26M params,
5.1G FLOPs, 80.5 top-1), in pure PyTorch (no CUDA kernel build).

Facts from the Vim repository (hustvl/Vim at dd0358a): vim/models_mamba.py, the model
``vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2`` (patch 16,
embed 384, depth 24, rms_norm, residual_in_fp32, fused_add_norm, if_abs_pos_embed, no rope,
bimamba_type "v2", if_cls_token, use_middle_cls_token, if_divide_out), its Mamba mixer in
mamba-1p1p1/mamba_ssm/modules/mamba_simple.py and RMSNorm in mamba_ssm/ops/triton/layer_norm.py:

* Patch embedding: conv p x p stride p with bias (``patch_embed.proj``), flattened to tokens.
  A class token is inserted in the MIDDLE of the L patch tokens (index L // 2), then a learned
  absolute position embedding (1, L + 1, D) is added, then dropout (``drop_rate``: Vim's
  pos_drop; Vim has no head dropout).
* Blocks are "Add -> Norm -> Mixer": block i receives (hidden, residual), sets residual =
  residual + DropPath_i(hidden) (the first block: residual = the embedded tokens), normalises
  it with RMSNorm (eps 1e-5, weight only), and returns (Mixer(norm), residual); the residual is
  kept in float32. After the last block: residual + DropPath(hidden), then ``norm_f``. Stochastic
  depth: block i's drop path has rate [0] + linspace(0, rate, depth) at index i (so it applies to
  block i - 1's mixer output) and the final add uses the full rate.
* The head reads the middle class token (use_middle_cls_token returns hidden[:, L // 2] before
  final_pool_type is consulted, so the "mean" in the name is never used).
* Mixer (Mamba, bimamba_type "v2", if_divide_out): a shared ``in_proj`` D -> 2E (no bias; E = 2D)
  split into x, z; per direction its own causal depthwise ``conv1d`` / ``conv1d_b`` (width 4,
  padding 3, the first L outputs, bias) -> SiLU, ``x_proj`` / ``x_proj_b`` E -> R + 2N (no bias,
  R = ceil(D / 16), N = 16), ``dt_proj`` / ``dt_proj_b`` R -> E (bias; delta = softplus),
  ``A_log`` / ``A_b_log`` (E, N), ``D`` / ``D_b`` (E,). The backward direction runs on the flipped
  sequence (x and z flipped, so its gating is SiLU(z) at the same tokens) and is flipped back;
  out = out_proj((y_fwd + y_bwd) * SiLU(z) / 2), ``out_proj`` E -> D without bias.
* Init: patch conv lecun_normal with zero bias, head trunc_normal(0.02) with zero bias,
  pos_embed / cls_token trunc_normal(0.02); Mamba's own (dt, S4D-real A, D = 1; in_proj, x_proj
  and the convs keep PyTorch's defaults); Mamba's ``_init_weights`` (rescale_prenorm_residual,
  n_residuals_per_layer 1): out_proj kaiming_uniform(a=sqrt 5) divided by sqrt(depth).
* State-dict keys are the official ones (patch_embed.proj, cls_token, pos_embed,
  layers.i.mixer.*, layers.i.norm.weight, norm_f.weight, head), so the released
  ``vim_s_midclstok_80p5acc.pth`` ({'model': ..., 'args': Namespace, ...}) loads strictly.

Our choices: the scan is the library's (ssm.run_scan, float32) with the two directions folded
into the batch, each with its own A and D; RMSNorm is computed in float32 and is elementwise
(our MAC counter, like fvcore on Vim's Triton kernel, counts it 0). The position embedding is
fixed by ``img_size``: another input grid is refused in one line, and `resample_pos_embed`
(`Vim.adapt_state_dict`) resamples a checkpoint's embedding to this model's grid with the
middle class token taken out and put back in the middle (Vim's own finetuning code assumes
the class token leads, which is wrong for these checkpoints).

timm's contract (issue 22): pretrained_cfg and its `default_cfg` alias, forward_intermediates /
prune_intermediate_layers, group_matcher, no_weight_decay, set_grad_checkpointing. BiMamba owns
the selective scan and is a registered FX leaf (ssm.py's docstring): timm's FeatureGraphNet
traces the model as it is, torchvision's create_feature_extractor with tracer_kwargs=
{"leaf_modules": timm.layers.get_notrace_modules()} (a block's graph output is its last op, the
mixer's output; the residual stream is what forward_intermediates gives). Deep copies, pickle,
inference_mode, the meta device and torch.export (token loop unrolled) work; TorchScript does
not (the mixer picks its parameters by name and the blocks pass Optional tuples; not rewritten:
torch.export covers deployment).

FLOPs: the paper's 5.1G is LocalMamba's hand count (hunto/LocalMamba at 75e5d1f,
classification/lib/models/local_vim.py, VisionMamba.flops()), written out in `paper_flops`:
5.14G. Our counter measures VMamba's convention (both directions' conv1d / x_proj / dt_proj, the
scan at 9 L E N + L E per direction): 5.90G.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, lecun_normal_, register_notrace_module, to_2tuple, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..errors import MambaOutError
from . import ssm
from .blocks import DefaultCfgAlias, stage_indices
from .fast import fx_tracing

GLOBAL_POOLS = ("token", "avg", "")


class PatchEmbed(nn.Module):
    """Conv p x p stride p (with bias): NCHW image -> (B, h * w, D) tokens and the grid (h, w)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (no bias), in float32, cast back to x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


@register_notrace_module          # owns a selective scan: an FX leaf
class BiMamba(nn.Module):
    """Vim's bidirectional Mamba mixer ("v2", outputs divided by 2) on (B, L, D) sequences;
    parameter names as mamba_simple.Mamba's (module docstring)."""

    export_unsupported = ssm.EXPORT_UNSUPPORTED

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 dt_rank: Optional[int] = None, divide_out: bool = True, chunk: Optional[int] = None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.dim, self.d_state, self.d_conv = dim, d_state, d_conv
        self.d_inner = inner = int(expand * dim)
        self.dt_rank = rank = dt_rank if dt_rank is not None else math.ceil(dim / 16)
        self.divide_out = divide_out
        self.chunk = chunk                          # ssm.run_scan's: None picks, 0 = the recurrence
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        for sfx, a in (("", "A_log"), ("_b", "A_b_log")):   # forward, backward direction
            self.add_module("conv1d" + sfx, nn.Conv1d(inner, inner, d_conv, padding=d_conv - 1, groups=inner))
            self.add_module("x_proj" + sfx, nn.Linear(inner, rank + 2 * d_state, bias=False))
            self.add_module("dt_proj" + sfx, nn.Linear(rank, inner))
            self.register_parameter(a, nn.Parameter(torch.empty(inner, d_state)))
            self.register_parameter("D" + sfx, nn.Parameter(torch.empty(inner)))
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Mamba's init of dt_proj, A and D per direction (the rest keeps PyTorch's defaults)."""
        for sfx, a in (("", "A_log"), ("_b", "A_b_log")):
            dt_proj = getattr(self, "dt_proj" + sfx)
            ssm.init_mamba_ssm(dt_proj.weight, dt_proj.bias, getattr(self, a), getattr(self, "D" + sfx),
                               self.dt_rank, self._dt_range)

    def _conv(self, x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
        """Causal depthwise conv + SiLU: (B, L, E) -> (B, L, E); output t sees tokens t-3..t."""
        length = x.shape[1]
        return F.silu(conv(x.transpose(1, 2))[..., :length]).transpose(1, 2)

    def _ssm_inputs(self, u: torch.Tensor, sfx: str):
        dt, B, C = getattr(self, "x_proj" + sfx)(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(getattr(self, "dt_proj" + sfx)(dt).float())
        return u.float(), delta, B.float(), C.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        fwd = self._ssm_inputs(self._conv(xs, self.conv1d), "")
        bwd = self._ssm_inputs(self._conv(xs.flip(1), self.conv1d_b), "_b")
        # Both directions as one batch of 2B sequences, each with its own A and D.
        u, delta, B, C = (torch.cat(pair, dim=0) for pair in zip(fwd, bwd))
        A = torch.stack([-torch.exp(self.A_log.float()), -torch.exp(self.A_b_log.float())])     # (2, E, N)
        D = torch.stack([self.D.float(), self.D_b.float()])[:, None]                          # (2, 1, E)
        A = A.repeat_interleave(b, dim=0)
        D = D.repeat_interleave(b, dim=0)
        y = ssm.run_scan(u, delta, A, B, C, D, chunk=self.chunk)
        y = y[:b] + y[b:].flip(1)
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.to(x.dtype) * F.silu(z))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, divide_out={self.divide_out}")


class Block(nn.Module):
    """Add -> RMSNorm -> Mixer: (hidden, residual) -> (mixer output, residual). hidden None:
    the residual is taken as it is (Vim's first block)."""

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, **mixer):
        super().__init__()
        self.mixer = BiMamba(dim, **mixer)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: Optional[torch.Tensor], residual: torch.Tensor):
        if hidden is not None:
            residual = residual + self.drop_path(hidden)
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(self.norm(residual)), residual


def resample_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int],
                       old_grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """A (1, h * w + 1, D) embedding with the class token in the middle (index h * w // 2) ->
    (1, H * W + 1, D) for `grid` (H, W), the class token's entry moved to index H * W // 2 and the
    patch entries resampled bicubically (as timm / Vim do). old_grid: default a square grid."""
    n = pos_embed.shape[1] - 1
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"pos_embed of {n} patch tokens is not a square grid: give old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"pos_embed has {n} patch tokens, not {old_grid[0]}x{old_grid[1]}")
    if tuple(old_grid) == tuple(grid):
        return pos_embed
    mid = n // 2
    cls = pos_embed[:, mid:mid + 1]
    patches = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
    patches = patches.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)
    new_mid = grid[0] * grid[1] // 2
    return torch.cat([patches[:, :new_mid], cls, patches[:, new_mid:]], dim=1)


def paper_flops(img_size=224, depth: int = 24, dim: int = 384, patch_size: int = 16, d_state: int = 16,
                expand: float = 2.0, d_conv: int = 4, num_classes: int = 1000, in_chans: int = 3) -> int:
    """The paper's Vim-S FLOPs (5.1G): LocalMamba's hand count (classification/lib/models/
    local_vim.py, VisionMamba.flops(), for Vim's two scan directions and no attention merge).
    Per block, over L = patches + 1 tokens: in_proj L D 2E; ONE causal conv1d (L + d_conv - 1) E
    d_conv; ONE x_proj L E (R + 2N) and dt_proj L R E; per direction 5 L E N + 2 L E for the scan
    (A: LEN, B: 2 LEN, C: 2 LEN, D: LE, z: LE); out_proj L E D; the norm L D. Plus the patch conv
    (no bias, get_flops_hook) and the classifier D x classes."""
    h, w = to_2tuple(img_size)
    patches = (h // patch_size) * (w // patch_size)
    L, E, N = patches + 1, int(expand * dim), d_state
    R = math.ceil(dim / 16)
    block = (L * dim * 2 * E + (L + d_conv - 1) * E * d_conv + L * E * (R + 2 * N) + L * R * E
             + 2 * (5 * L * E * N + 2 * L * E) + L * E * dim + L * dim)
    return patches * dim * in_chans * patch_size ** 2 + depth * block + dim * num_classes


class TokenClassifier:
    """timm's classifier interface of the Mamba token models (Vim, VideoMamba): a linear head on
    `num_features`, `global_pool` one of GLOBAL_POOLS, gradient checkpointing over `layers`."""

    @torch.no_grad()
    def _init_head(self):
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device, dtype = self.pos_embed.device, self.pos_embed.dtype
        self.head = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype) \
            if num_classes > 0 else nn.Identity()
        self._init_head()


class Vim(TokenClassifier, DefaultCfgAlias, nn.Module):
    """Vision Mamba with timm's classifier and feature interface.

    img_size: the input size the position embedding is built for (int or (H, W)); depth, dim,
    patch_size: 24, 384, 16 for Vim-S. d_state, d_conv, expand: the Mamba mixer's (16, 4, 2).
    drop_rate: dropout after the position embedding (Vim's pos_drop); drop_path_rate: peak
    stochastic depth (Vim's schedule, module docstring). global_pool: "token" (the middle class
    token, Vim's), "avg" (mean of the patch tokens) or "" (none: all tokens, as timm's ViT).
    chunk: ssm.run_scan's (None picks).
    """

    def __init__(self, img_size=224, depth: int = 24, dim: int = 384, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 norm_eps: float = 1e-5, residual_in_fp32: bool = True, global_pool: str = "token",
                 chunk: Optional[int] = None):
        super().__init__()
        img = to_2tuple(img_size)
        if depth < 1 or dim < 1 or patch_size < 1:
            raise ValueError(f"depth, dim and patch_size must be positive, got {depth}, {dim}, {patch_size}")
        if img[0] < patch_size or img[1] < patch_size:
            raise ValueError(f"img_size {img_size} is smaller than patch_size {patch_size}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if d_conv < 1 or d_state < 1:
            raise ValueError(f"d_conv and d_state must be positive, got {d_conv}, {d_state}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.patch_size = patch_size
        self.grid = (img[0] // patch_size, img[1] // patch_size)     # the conv drops a remainder, as Vim's
        self.num_patches = self.grid[0] * self.grid[1]
        self.cls_index = self.num_patches // 2                        # the class token sits in the middle
        self.num_features = self.head_hidden_size = self.embed_dim = dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList([
            Block(dim, rates[i], norm_eps, residual_in_fp32, d_state=d_state, d_conv=d_conv, expand=expand,
                  chunk=chunk) for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"layers.{i}") for i in range(depth)]
        self.pretrained_cfg: dict = {}
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self._init_head()
        for layer in self.layers:        # Mamba's rescale_prenorm_residual: 1 residual per block
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight.div_(math.sqrt(len(self.layers)))

    # How the paper counts this family's MACs, where it is not our counter's (analysis.complexity).
    paper_macs_convention = "LocalMamba's hand count (local_vim.py VisionMamba.flops())"

    def paper_macs(self, img_size) -> int:
        """This model's MACs at img_size in the paper's convention (`paper_flops`)."""
        mixer = self.layers[0].mixer
        return paper_flops(img_size, depth=len(self.layers), dim=self.embed_dim, patch_size=self.patch_size,
                           d_state=mixer.d_state, expand=mixer.d_inner / self.embed_dim, d_conv=mixer.d_conv,
                           num_classes=self.num_classes, in_chans=self.in_chans)

    # ---- timm's interface ------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-wise lr decay groups (timm.optim), as timm's ViT: the embeddings first, one
        group per block, the final norm with the last block, the head last (unmatched)."""
        return dict(stem=r"^(?:cls_token|pos_embed|patch_embed)",
                    blocks=[(r"^layers\.(\d+)\.", None), (r"^norm_f\.", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self):
        # Vim's list; timm's optimiser factory also exempts every 1-D parameter (D, D_b, norms, biases).
        return {"pos_embed", "cls_token"}

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A checkpoint's state dict made to fit this model's input grid: its pos_embed (square
        grid assumed) resampled with `resample_pos_embed`. Other keys pass through."""
        pos = sd.get("pos_embed")
        if pos is not None and pos.dim() == 3 and pos.shape[1] != self.pos_embed.shape[1]:
            sd = dict(sd, pos_embed=resample_pos_embed(pos, self.grid))
        return sd

    # ---- forward ---------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> patch tokens with the class token at index L // 2, position embedding added."""
        x, grid = self.patch_embed(x)
        if not fx_tracing(x) and grid != self.grid:     # (a Proxy's grid cannot be checked)
            raise MambaOutError(f"input gives a {grid[0]}x{grid[1]} token grid; this model's position "
                                f"embedding is for {self.grid[0]}x{self.grid[1]} (build it with "
                                f"img_size={grid[0] * self.patch_size} or resize the input)")
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :self.cls_index], cls, x[:, self.cls_index:]], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def _layer(self, layer: Block, hidden, residual):
        if self.grad_checkpointing and residual.requires_grad and not torch.jit.is_scripting():
            return checkpoint(layer, hidden, residual, use_reentrant=False)
        return layer(hidden, residual)

    def _drop_after(self, i: int) -> nn.Module:
        """The drop path applied to block i's mixer output (the next block's, or the final one)."""
        return self.layers[i + 1].drop_path if i + 1 < len(self.layers) else self.drop_path

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> normalised tokens (B, L + 1, D), the class token at index L // 2."""
        hidden, residual = None, self._embed(x)
        for layer in self.layers:
            hidden, residual = self._layer(layer, hidden, residual)
        residual = residual + self.drop_path(hidden)
        return self.norm_f(residual)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, self.cls_index]
        elif self.global_pool == "avg":                          # mean over the patch tokens
            x = torch.cat([x[:, :self.cls_index], x[:, self.cls_index + 1:]], dim=1).mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _to_grid(self, tokens: torch.Tensor, output_fmt: str) -> torch.Tensor:
        """(B, L + 1, D) -> the patch tokens as (B, D, h, w) (NCHW) or (B, h, w, D), class token removed."""
        patches = torch.cat([tokens[:, :self.cls_index], tokens[:, self.cls_index + 1:]], dim=1)
        grid = patches.reshape(patches.shape[0], self.grid[0], self.grid[1], -1)
        return grid.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else grid

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Each block's output, the residual stream after its mixer output is added (the next
        block's input before its norm), as the patch-token grid (class token removed), NCHW or
        NHWC. indices: None = all blocks, an int n = the last n, or block indices. norm: apply
        norm_f to them. Returns (final features as forward_features gives them, intermediates)
        or only the intermediates; with stop_early the blocks after the last index do not run
        and the final features are the un-normalised stream there."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = stage_indices(len(self.layers), indices)
        last = max(take) if stop_early else len(self.layers) - 1
        intermediates = []
        hidden, residual = None, self._embed(x)
        for i, layer in enumerate(self.layers[:last + 1]):
            hidden, residual = self._layer(layer, hidden, residual)
            if i in take:     # do the add here (once, with its drop path); the next block takes it as is
                hidden, residual = None, residual + self._drop_after(i)(hidden)
                intermediates.append(self._to_grid(self.norm_f(residual) if norm else residual, output_fmt))
        if intermediates_only:
            return intermediates
        if hidden is not None:
            residual = residual + self._drop_after(last)(hidden)
        return (self.norm_f(residual) if last == len(self.layers) - 1 else residual), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what forward_intermediates(indices) does not need, as timm's ViT: the blocks
        after the last one taken; norm_f (-> Identity) with prune_norm; the head (-> Identity,
        global_pool "") with prune_head. The final add keeps the drop path that followed the
        last kept block. Returns the kept indices (non-negative)."""
        take = stage_indices(len(self.layers), indices)
        last = max(take)
        self.drop_path = self._drop_after(last)
        self.layers = self.layers[:last + 1]
        self.feature_info = self.feature_info[:last + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take
