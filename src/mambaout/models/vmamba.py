"""VMamba, the first ("v0", "Vanilla-VMamba") design the paper compares MambaOut against, in
pure PyTorch (CPU and GPU; no CUDA kernel build).

Facts from the VMamba repository (MzeroMiko/VMamba, the v0 code at commit 80959a76,
classification/models/vmamba/vmamba.py, and configs/vssm/vmambav0_*_224.yaml):

* Patch embedding: conv 4x4 stride 4 with bias, then LayerNorm; the network runs channels
  last (NHWC). Downsampling at the end of stages 1-3: Swin's patch merging (the 2x2
  neighbours concatenated in the order (0,0), (1,0), (0,1), (1,1), LayerNorm(4C), Linear
  4C -> 2C without bias; odd sizes drop the last row / column, as the v0 code does). Head:
  LayerNorm per token, global average pool, Linear. All norms LayerNorm, eps 1e-5.
* VSS block: x + DropPath(SS2D(LN(x))); no MLP.
* SS2D: in_proj C -> 2E (E = 2C, no bias) split into x, z; x -> depthwise 3x3 conv (bias)
  -> SiLU; K = 4 scan orders of the H x W map: row-major, column-major and both reversed;
  per direction x_proj E -> R + 2N (no bias) and dt_proj R -> E (bias), stored stacked over
  the directions (x_proj_weight (K, R + 2N, E), dt_projs_weight (K, E, R), dt_projs_bias
  (K, E)); R = ceil(C / 16), N = d_state = 16; A_logs (K E, N) S4D-real, Ds (K E,) ones, dt
  init as Mamba; the selective scan with softplus on delta + bias, in float32; the four
  outputs mapped back to row-major and summed; LayerNorm(E); times SiLU(z); out_proj E -> C.
* The state-dict names are the official ones (patch_embed.proj, layers.N.blocks.M.ln_1,
  layers.N.blocks.M.self_attention.x_proj_weight, layers.N.downsample.reduction, norm,
  head), so the released v0 checkpoints load strictly.

The scan is the library's one selective scan (ssm.run_scan): the four directions are folded
into the batch with their own A and D; its MACs are declared in VMamba's convention,
9 B L D N + B D L with D = K E.

timm's contract (issue 22; StageClassifier, shared with LocalVMamba and EfficientVMamba):
pretrained_cfg and its `default_cfg` alias, forward_intermediates / prune_intermediate_layers,
group_matcher (timm.optim's layer decay), no_weight_decay, set_grad_checkpointing. SS2D (and
its subclasses) owns a selective scan, so it is a registered FX leaf (ssm.py's docstring):
timm's FeatureGraphNet traces these models as they are; torchvision's create_feature_extractor
with tracer_kwargs={"leaf_modules": timm.layers.get_notrace_modules()}. They deep-copy, pickle,
build and run under torch.inference_mode and on the meta device, and torch.export (the token
loop unrolled for the input's shape). Not TorchScript: see `StageClassifier`.
"""
from __future__ import annotations

import math
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module, trunc_normal_
from torch.utils.checkpoint import checkpoint

from .blocks import DefaultCfgAlias, nhwc_to_nchw, stage_indices
from . import ssm
from .ssm import run_scan

K = 4   # scan directions


class Permute(nn.Module):
    """x.permute(*dims): the layout switches of LocalVMamba's and EfficientVMamba's official
    layouts (a module there, so it stays one here; no parameters)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class PatchEmbed(nn.Module):
    """Conv 4x4 stride 4 (with bias) + LayerNorm: NCHW image -> NHWC tokens."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin's 2x2 patch merging on NHWC maps: concat, LayerNorm(4C), Linear 4C -> 2C (no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2     # odd sizes: the last row / column drop
        x = x[:, :h, :w]
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


@register_notrace_module          # owns a selective scan: an FX leaf (subclasses too: isinstance)
class SS2D(nn.Module):
    """VMamba's 2D selective scan over four directions (module docstring), on NHWC maps."""

    export_unsupported = ssm.EXPORT_UNSUPPORTED

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, d_conv: int = 3,
                 dt_rank: Optional[int] = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, chunk: Optional[int] = None, num_directions: int = K):
        super().__init__()
        self.dim, self.d_state = dim, d_state
        self.num_directions = k = num_directions   # v0: 4; subclasses with their own scan orders differ
        self.d_inner = inner = int(expand * dim)
        self.dt_rank = rank = dt_rank if dt_rank is not None else math.ceil(dim / 16)
        self.chunk = chunk                      # ssm.run_scan's: None picks, 0 = the recurrence
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, d_conv, padding=(d_conv - 1) // 2, groups=inner)
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, inner))
        self.A_logs = nn.Parameter(torch.empty(k * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """x_proj as nn.Linear's default; dt_proj, A_logs and Ds as Mamba (and VMamba) initialise."""
        bound = 1 / math.sqrt(self.d_inner)      # nn.Linear's default for x_proj
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        ssm.init_mamba_ssm(self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds, self.dt_rank,
                           self._dt_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv2d(u.permute(0, 3, 1, 2)))                       # (b, E, h, w)
        y = self.scan(u)                                                     # (b, h, w, E) float32
        y = self.out_norm(y.to(x.dtype)) * F.silu(z)
        return self.out_proj(y)

    def scan(self, u: torch.Tensor) -> torch.Tensor:
        """(b, E, h, w) -> the directions' outputs, mapped back to row-major and summed, as
        (b, h, w, E) in float32: scan_orders, selective_scan, merge (subclasses with other scan
        orders override the first and the last)."""
        return self.merge(self.selective_scan(self.scan_orders(u)), u.shape[2], u.shape[3])

    def scan_orders(self, u: torch.Tensor) -> torch.Tensor:
        """(b, E, h, w) -> the K sequences (b, K, E, L): row-major, column-major, both reversed."""
        b, e, h, w = u.shape
        L = h * w
        rows, cols = u.reshape(b, e, L), u.transpose(2, 3).reshape(b, e, L)
        return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (b, K, E, L)

    def selective_scan(self, xs: torch.Tensor) -> torch.Tensor:
        """(b, K, E, L) sequences -> (b, K, L, E) float32: each direction's x_proj / dt_proj and
        its own A, D through the library's scan, the directions folded into the batch."""
        b, k, e, L = xs.shape
        n, r = self.d_state, self.dt_rank
        proj = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight.to(xs.dtype))
        dts, Bs, Cs = proj.split([r, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.to(xs.dtype))
        delta = F.softplus(dts.float() + self.dt_projs_bias.float()[None, :, :, None])
        seq = lambda t: t.transpose(2, 3).reshape(b * k, L, -1)             # (b, K, c, L) -> (b K, L, c)
        A = -torch.exp(self.A_logs.float()).view(1, k, e, n).expand(b, -1, -1, -1).reshape(b * k, e, n)
        D = self.Ds.float().view(1, k, 1, e).expand(b, -1, -1, -1).reshape(b * k, 1, e)
        return run_scan(seq(xs.float()), seq(delta), A, seq(Bs.float()), seq(Cs.float()), D,
                        chunk=self.chunk).view(b, k, L, e)

    def merge(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(b, K, L, E) outputs in scan order -> their sum in row-major order, (b, h, w, E)."""
        b, _, _, e = y.shape
        y_rows = y[:, 0] + y[:, 2].flip(1)                                   # row-major order
        y_cols = (y[:, 1] + y[:, 3].flip(1)).view(b, w, h, e).transpose(1, 2)
        return y_rows.view(b, h, w, e) + y_cols

    def extra_repr(self) -> str:
        return f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}"


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))) on NHWC maps."""

    def __init__(self, dim: int, drop_path: float = 0.0, d_state: int = 16, **ss2d):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, d_state=d_state, **ss2d)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class VSSLayer(nn.Module):
    """One stage: its blocks, then (stages 1-3) the patch merging to the next width."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], downsample: bool, **block):
        super().__init__()
        self.blocks = nn.ModuleList([self.make_block(dim, i, drop_path[i], **block) for i in range(depth)])
        self.downsample = self.make_downsample(dim) if downsample else None
        self.grad_checkpointing = False

    def make_block(self, dim: int, index: int, drop_path: float, **block) -> nn.Module:
        """The stage's block `index` (subclasses: other blocks, per-block options)."""
        return VSSBlock(dim, drop_path, **block)

    def make_downsample(self, dim: int) -> nn.Module:
        return PatchMerging(dim)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and x.requires_grad else blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


def init_linear_ln(m: nn.Module):
    """VMamba's (and LocalVMamba's, EfficientVMamba's) init: Linear trunc_normal(0.02) with zero
    bias, LayerNorm ones / zeros; convs and SS2D's own parameters keep their initialisation."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class StageClassifier(DefaultCfgAlias):
    """timm's classifier and feature interface for the VMamba-like families (VMamba, LocalVMamba,
    EfficientVMamba): a `patch_embed` (NCHW image -> NHWC map), `layers` (each with
    `forward_blocks` and `downsample`, None on the last), a final LayerNorm and a Linear head at
    the module paths `final_norm_path` / `head_path` (the official key names differ by family),
    `head_drop`, `global_pool` ("avg" or ""), `num_features`, `feature_info`, `pretrained_cfg`.

    TorchScript: not supported (ours). The scan itself scripts (ssm.run_scan compiles the
    recurrence), but these models reach their official modules through computed paths
    (final_norm_path / head_path), scan in orders built by Python (lambdas, LocalVMamba's cached
    index tables) and checkpoint blocks; rewriting all of that for TorchScript, which PyTorch
    has deprecated, buys nothing torch.export does not already give."""

    final_norm_path = "norm"
    head_path = "head"
    _init_weights = staticmethod(init_linear_ln)

    def final_norm(self) -> nn.Module:
        return self.get_submodule(self.final_norm_path)

    def _replace(self, path: str, module: nn.Module):
        """Put `module` at the dotted `path` (the official layouts nest the norm and head)."""
        parent, _, name = path.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, name, module)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for layer in self.layers:
            layer.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm.optim's param_groups_layer_decay),
        timm's regexes on the official names: the patch embedding first, then per stage (coarse)
        or per block. A stage's downsample comes AFTER its blocks here (it feeds the next stage)
        and joins the stage's last block (timm's (99999,) suffix: "the previous group"), as does
        the final norm; the head matches nothing and comes last. EfficientVMamba's conv stages
        keep their blocks at layers.i.1 .. layers.i.depth and the merging at layers.i.depth+2
        (its norm / reduction)."""
        if coarse:
            return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)")
        return dict(stem=r"^patch_embed", blocks=[
            (r"^layers\.(\d+)\.downsample\.", (99999,)),
            (r"^layers\.(\d+)\.blocks\.(\d+)\.", None),
            (r"^layers\.(\d+)\.\d+\.(?:norm|reduction)\.", (99999,)),    # conv stage's merging
            (r"^layers\.(\d+)\.(\d+)\.", None),                            # conv stage's blocks
            (r"^" + re.escape(self.final_norm_path) + r"\.", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self):
        return {name for name, _ in self.named_parameters() if name.endswith(("A_logs", "Ds"))}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.head_path)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(head)
            ref = self._first_param()
            head.to(ref.device, ref.dtype)
        self._replace(self.head_path, head)

    def _first_param(self) -> torch.Tensor:
        """The first parameter: the device and dtype of the model (a new head follows it)."""
        return next(self.patch_embed.parameters())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> NHWC map at stride 32, normalised per token."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm()(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC map -> (N, C): the global average."""
        return x.mean(dim=(1, 2))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = self.pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Each stage's output before its downsampling (strides 4, 8, 16, 32). indices: None =
        all, an int n = the last n, or stage indices. norm: the final LayerNorm on the last
        stage's map (the others have none in these families). Returns (final features,
        intermediates) or only the intermediates."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = stage_indices(len(self.layers), indices)
        last = max(take) if stop_early else len(self.layers) - 1
        final_norm = self.final_norm()
        intermediates = []
        x = self.patch_embed(x)
        for i, layer in enumerate(self.layers[:last + 1]):
            x = layer.forward_blocks(x)
            if i in take:
                y = final_norm(x) if norm and i == len(self.layers) - 1 else x
                intermediates.append(nhwc_to_nchw(y).contiguous() if output_fmt == "NCHW" else y)
            if layer.downsample is not None and i < last:
                x = layer.downsample(x)
        if intermediates_only:
            return intermediates
        return (final_norm(x) if last == len(self.layers) - 1 else x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what forward_intermediates(indices) does not need (timm's semantics, as its
        MambaOut and Swin): the stages after the last one taken (and that stage's downsample,
        which fed the next); the final norm with prune_norm; the head (-> Identity, no pooling)
        with prune_head. When stages were dropped the final norm and the head, sized for the
        last stage, go too. Returns the kept indices (non-negative)."""
        take = stage_indices(len(self.layers), indices)
        last = max(take)
        prune_end = last < len(self.layers) - 1
        self.layers = self.layers[:last + 1]
        self.feature_info = self.feature_info[:last + 1]
        if prune_end:
            self.layers[last].downsample = None
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_norm or prune_end:
            self._replace(self.final_norm_path, nn.Identity())
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take


class VMamba(StageClassifier, nn.Module):
    """VMamba v0 (VSSM) with timm's classifier and feature interface.

    depths / dims: per stage (T: (2, 2, 9, 2), 96-768; S, B: (2, 2, 27, 2), 96-768 / 128-1024).
    drop_path_rate: peak stochastic depth, linear over the blocks. global_pool: "avg" or "".
    chunk: the selective scan's (ssm.run_scan): None picks by size and device.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths=(2, 2, 9, 2),
                 dims=(96, 192, 384, 768), d_state: int = 16, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = "avg", chunk: Optional[int] = None):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} differ in length")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.dims = tuple(dims)
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = PatchEmbed(in_chans, dims[0])
        dpr = [drop_path_rate * i / max(1, sum(depths) - 1) for i in range(sum(depths))]   # linear from 0
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList([
            VSSLayer(dims[i], depths[i], dpr[starts[i]:starts[i] + depths[i]], downsample=i < len(dims) - 1,
                     d_state=d_state, chunk=chunk)
            for i in range(len(depths))])
        for i in range(len(dims) - 1):
            if dims[i + 1] != 2 * dims[i]:
                raise ValueError(f"patch merging doubles the width: dims {tuple(dims)} must double per stage")
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"layers.{i}") for i, d in enumerate(dims)]
        self.pretrained_cfg: dict = {}
        self.apply(self._init_weights)
