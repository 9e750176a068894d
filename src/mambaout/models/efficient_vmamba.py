"""EfficientVMamba (Pei et al., 2024, arXiv 2403.09977), the light vision Mamba of the MambaOut
paper's main table (EfficientVMamba-S: 11M params, 1.3G FLOPs, 78.7 top-1), in pure PyTorch.

Facts from the official repository (TerryPei/EfficientVMamba at commit 0bc5ee2,
classification/models/vmamba_efficient.py: EfficientVSSM, SS2D forward_corev2, EfficientScan /
EfficientMerge, BiAttn, VSSBlock; classification/lib/models/operations.py: InvertedResidual,
SqueezeExcite), checked against the module tree the training log prints
(classification/logs/log_efficient_vmamba_small.txt, the resumed run, lines 5257-5545), which
we trust over configs/vssm/vssm_efficient_small.yaml (a config of the other trainer):

* Layout (NHWC maps, as VMamba): patch embed = Sequential(Conv2d(3, C, 4, stride 4, bias),
  Permute, LayerNorm); four stages; classifier = Sequential(norm LayerNorm, permute,
  avgpool, flatten, head Linear). All LayerNorms eps 1e-5. S: dims 64-128-256-512, depths
  2-2-4-2 (log); trained with drop path 0.1 (the log's Namespace and its DropPath values
  0, 0.0111, ... = linspace(0, 0.1, 10); the yaml's 0.2 was not used), 11.274M params.
* Stages 1-2: `layers.i.blocks.j` efficient VSS blocks, then `layers.i.downsample`, Swin
  patch merging (PatchMerging2D: odd maps padded with a zero row / column, 2x2 neighbours
  in the order (0,0), (1,0), (0,1), (1,1), LayerNorm(4C), Linear 4C -> C' without bias).
  EVSS block: y = LN(x); x + DropPath(G(SS2D(y)) + G(conv(y))) with conv = depthwise 3x3
  (bias) -> BatchNorm -> GELU -> 1x1 (bias), and G ONE channel gate applied to both
  branches (official BiAttn, shared weights): LayerNorm, mean over the map, Linear C ->
  C/8, GELU, Linear C/8 -> C, sigmoid, times the (un-normalised) input. No MLP (the log's
  blocks have none).
* SS2D as VMamba's (in_proj C -> 2E, E = 2C, dwconv 3x3 + SiLU on x, SiLU on z, x_proj /
  dt_projs / A_logs / Ds stacked over K = 4, out_norm LayerNorm(E), y * SiLU(z), out_proj)
  but with the atrous ("skip sampling", step 2) scan of forward_corev2: the map (zero
  padded to even size) splits into its four stride-2 sub-grids, each scanned once,
  forwards, with its own parameters: (even rows, even cols) row-major, (odd, even)
  column-major, (even, odd) row-major, (odd, odd) column-major; each output goes back to
  its own positions (no sum), cropped to the map. Padded positions are scanned as zeros.
* Stages 3-4: `layers.i` = Sequential(Permute, InvertedResidual x depth, Permute,
  PatchMerging2D or Identity), so the blocks are `layers.i.1 ... layers.i.depth` and the
  merging `layers.i.{depth + 2}` (MobileNetV2 block, expand 4: 1x1 conv (no bias) -> BN ->
  ReLU, dw 3x3 (no bias) -> BN -> ReLU, squeeze-excite on the 4C channels (avgpool, 1x1
  conv 4C -> C/2 (bias), ReLU, 1x1 conv -> 4C (bias), sigmoid), 1x1 conv (no bias) -> BN;
  identity residual with drop path). BatchNorm: PyTorch defaults (eps 1e-5, momentum 0.1).
* Initialisation as EfficientVSSM: Linear trunc_normal(0.02) with zero bias, LayerNorm
  ones / zeros; convs and BatchNorms PyTorch's defaults; SS2D's own parameters as Mamba.

The state-dict keys are the official ones, so the released checkpoints (the lib trainer's
{'epoch', 'model', 'ema_model', 'optimizer', ...} files) load strictly. The module protocol
is VMamba's (`patch_embed`, `layers[i].forward_blocks` / `.downsample` on NHWC maps,
`feature_info`, `dims`), so the dense-prediction backbone of VMamba serves this family too;
the conv stages expose `blocks` / `downsample` as properties over their official indices.

Counting: the log's "FLOPs: 1.343 G" comes from a model `flops()` (lib/utils/measure.py
get_flops calls it when present; no committed EfficientVSSM has one, but the log's fvcore
warnings show what it was: fvcore's flop_count with the supported_ops of the repo's
models/vmamba.py VSSM.flops: the selective scan by formula, 9 B L D N + B D L; SiLU / exp /
neg / flip ignored; unsupported and so uncounted: the CrossScan / CrossMerge PythonOps, mul,
gelu, mean, sigmoid, add). That is our counter's convention (count_macs: 1.3415G for S, the
scan declared by ssm.run_scan over the sub-grids) plus one op per input element of each
nn.AdaptiveAvgPool2d, which fvcore counts and our counter does not (the squeeze-excite and
classifier pools, +1.03M): `paper_flops` writes that count out, 1.3426G, printed 1.343 (the
paper's 1.3). A full-resolution scan (x_proj, dt_proj and scan over all H W tokens) would add
0.68G: the logged model scanned sub-grids.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from .fast import fx_tracing
from .vmamba import SS2D, K, Permute, StageClassifier, init_linear_ln

PATCH = 4       # patch embedding stride: the smallest input side


class PatchEmbed(nn.Sequential):
    """Conv 4x4 stride 4 -> NHWC -> LayerNorm (official keys patch_embed.0 / patch_embed.2);
    one-line ValueError for images smaller than one patch."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__(nn.Conv2d(in_chans, dim, PATCH, stride=PATCH), Permute(0, 2, 3, 1), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (FX symbolic tracing: a Proxy's shape cannot be checked; the conv will refuse instead)
        if not fx_tracing(x) and (x.dim() != 4 or x.shape[-2] < PATCH or x.shape[-1] < PATCH):
            raise ValueError(f"EfficientVMamba needs images of at least {PATCH}x{PATCH} pixels (N, C, H, W), "
                             f"got shape {tuple(x.shape)}")
        return super().forward(x)


class PatchMerging2D(nn.Module):
    """Swin's 2x2 patch merging on NHWC maps, odd sizes padded with zeros (the official
    PatchMerging2D; VMamba v0's crops instead): LayerNorm(4C), Linear 4C -> out_dim (no bias)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class AtrousSS2D(SS2D):
    """VMamba's SS2D (same parameters and names, its selective_scan) with EfficientVMamba's
    atrous scan orders and merge: the four stride-2 sub-grids of the map, one direction each
    (module docstring)."""

    def scan_orders(self, u: torch.Tensor) -> torch.Tensor:
        """(b, E, h, w) -> (b, 4, E, L'): the map zero-padded to even size; its sub-grids
        (even, even) row-major, (odd, even) column-major, (even, odd) row-major, (odd, odd)
        column-major (rows, cols); L' = ceil(h / 2) ceil(w / 2)."""
        b, e, h, w = u.shape
        u = F.pad(u, (0, w % 2, 0, h % 2))
        L = (u.shape[2] // 2) * (u.shape[3] // 2)
        return torch.stack([u[:, :, 0::2, 0::2].reshape(b, e, L),
                            u[:, :, 1::2, 0::2].transpose(2, 3).reshape(b, e, L),
                            u[:, :, 0::2, 1::2].reshape(b, e, L),
                            u[:, :, 1::2, 1::2].transpose(2, 3).reshape(b, e, L)], dim=1)

    def merge(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(b, 4, L', E) outputs in scan order -> each at its own position, (b, h, w, E)."""
        b, _, _, e = y.shape
        hs, ws = (h + 1) // 2, (w + 1) // 2
        rows = lambda t: t.view(b, hs, ws, e)                                 # a row-major sub-grid
        cols = lambda t: t.view(b, ws, hs, e).transpose(1, 2)                 # a column-major one
        even_rows = torch.stack([rows(y[:, 0]), rows(y[:, 2])], dim=3)       # (b, hs, ws, col parity, e)
        odd_rows = torch.stack([cols(y[:, 1]), cols(y[:, 3])], dim=3)
        full = torch.stack([even_rows, odd_rows], dim=2).reshape(b, 2 * hs, 2 * ws, e)
        return full[:, :h, :w]


class ChannelGate(nn.Module):
    """The official BiAttn (its spatial half commented out there): x * sigmoid(fc2(GELU(fc1(
    mean_hw(LN(x)))))) on NHWC maps; hidden width int(C / 8)."""

    def __init__(self, dim: int, ratio: float = 0.125):
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.global_reduce = nn.Linear(dim, hidden)
        self.act_fn = nn.GELU()
        self.channel_select = nn.Linear(hidden, dim)
        self.gate_fn = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.norm(x).mean(dim=(1, 2), keepdim=True)
        return x * self.gate_fn(self.channel_select(self.act_fn(self.global_reduce(g))))


class EVSSBlock(nn.Module):
    """Efficient VSS block: x + DropPath(G(SS2D(LN x)) + G(conv branch(LN x))), one gate G."""

    def __init__(self, dim: int, drop_path: float = 0.0, d_state: int = 16, chunk: Optional[int] = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = AtrousSS2D(dim, d_state=d_state, chunk=chunk)
        self.conv_branch = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.se = ChannelGate(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        conv = self.conv_branch(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.se(self.op(y)) + self.se(conv))


class SqueezeExcite(nn.Module):
    """The official SqueezeExcite (NCHW): x * sigmoid(expand(ReLU(reduce(avgpool(x)))))."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.avgp = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act_fn = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate_fn = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_fn(self.conv_expand(self.act_fn(self.conv_reduce(self.avgp(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2's block as the official lib builds it (NCHW, stride 1, same width):
    1x1 expand -> BN -> ReLU, dw 3x3 -> BN -> ReLU, squeeze-excite, 1x1 project -> BN, + x."""

    def __init__(self, dim: int, expand_ratio: float = 4.0, se_ratio: float = 0.125, drop_path: float = 0.0):
        super().__init__()
        mid = int(dim * expand_ratio)
        self.conv_pw = nn.Sequential(nn.Conv2d(dim, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.conv_dw = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                     nn.ReLU(inplace=True))
        self.se = SqueezeExcite(mid, max(1, int(mid * se_ratio)))
        self.conv_pw2 = nn.Sequential(nn.Conv2d(mid, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()   # no state: keys unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv_pw2(self.se(self.conv_dw(self.conv_pw(x)))))


def _run(blocks, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False) if use_checkpoint and x.requires_grad else blk(x)
    return x


class EVSSLayer(nn.Module):
    """Stages 1-2: `blocks` (EVSS blocks) then `downsample` (patch merging; None on a last stage)."""

    def __init__(self, dim: int, out_dim: Optional[int], depth: int, drop_path: Sequence[float], **block):
        super().__init__()
        self.blocks = nn.Sequential(*[EVSSBlock(dim, drop_path[i], **block) for i in range(depth)])
        self.downsample = PatchMerging2D(dim, out_dim) if out_dim else None
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.blocks, x, self.grad_checkpointing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class InvertedResidualLayer(nn.Sequential):
    """Stages 3-4 in the official layout, Sequential(Permute, block x depth, Permute, merging or
    Identity), on NHWC maps; `blocks` and `downsample` (None for the Identity) are views of it."""

    def __init__(self, dim: int, out_dim: Optional[int], depth: int, drop_path: Sequence[float],
                 expand_ratio: float = 4.0, se_ratio: float = 0.125):
        super().__init__(Permute(0, 3, 1, 2),
                         *[InvertedResidual(dim, expand_ratio, se_ratio, drop_path[i]) for i in range(depth)],
                         Permute(0, 2, 3, 1),
                         PatchMerging2D(dim, out_dim) if out_dim else nn.Identity())
        self.depth = depth
        self.grad_checkpointing = False

    @property
    def blocks(self) -> List[nn.Module]:
        return [self[i + 1] for i in range(self.depth)]

    @property
    def downsample(self) -> Optional[nn.Module]:
        last = self[self.depth + 2]
        return None if isinstance(last, nn.Identity) else last

    @downsample.setter
    def downsample(self, value: None):
        """`layer.downsample = None` drops the merging (VMambaBackbone does so for its last
        stage); a module is not accepted here (nn.Module would register it beside the official
        slot instead of reaching this setter)."""
        if value is not None:
            raise ValueError("only None can be assigned to an inverted residual stage's downsample")
        self[self.depth + 2] = nn.Identity()

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.blocks, x.permute(0, 3, 1, 2), self.grad_checkpointing).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class EfficientVMamba(StageClassifier, nn.Module):
    """EfficientVMamba (official EfficientVSSM) with timm's classifier and feature interface.

    depths / dims: per stage (S: (2, 2, 4, 2), 64-512; the logs' T: (2, 2, 4, 2), 48-384 and B:
    (2, 2, 9, 2), 96-768 build here at their 6.494M / 33.717M). ssm_stages: how many leading stages are EVSS stages (2 officially; the
    rest are inverted residual stages with expand_ratio / se_ratio). drop_path_rate: peak
    stochastic depth, linear over all blocks. global_pool: "avg" or "". chunk: the
    selective scan's (ssm.run_scan): None picks by size and device.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths=(2, 2, 4, 2), dims=(64, 128, 256, 512),
                 d_state: int = 16, ssm_stages: int = 2, expand_ratio: float = 4.0, se_ratio: float = 0.125,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 chunk: Optional[int] = None):
        super().__init__()
        depths, dims = tuple(depths), tuple(dims)
        if not depths or len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must be non-empty and of one length")
        if min(depths) < 1 or min(dims) < 1:
            raise ValueError(f"depths {depths} and dims {dims} must be positive")
        if not 0 <= ssm_stages <= len(dims):
            raise ValueError(f"ssm_stages must be between 0 and {len(dims)}, got {ssm_stages}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.dims = dims
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = PatchEmbed(in_chans, dims[0])
        dpr = [drop_path_rate * i / max(1, sum(depths) - 1) for i in range(sum(depths))]   # linspace(0, rate)
        self.layers = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            out_dim = dims[i + 1] if i + 1 < len(dims) else None
            rates = dpr[sum(depths[:i]):sum(depths[:i + 1])]
            if i < ssm_stages:
                self.layers.append(EVSSLayer(dim, out_dim, depth, rates, d_state=d_state, chunk=chunk))
            else:
                self.layers.append(InvertedResidualLayer(dim, out_dim, depth, rates, expand_ratio, se_ratio))
        self.classifier = nn.Sequential(OrderedDict(
            norm=nn.LayerNorm(dims[-1]), permute=Permute(0, 3, 1, 2), avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1), head=nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()))
        self.head_drop = nn.Dropout(drop_rate)      # ours (timm's drop_rate); the official model has none
        self.feature_info = [dict(num_chs=d, reduction=PATCH * 2 ** i, module=f"layers.{i}")
                             for i, d in enumerate(dims)]
        self.pretrained_cfg: dict = {}
        self.apply(init_linear_ln)    # EfficientVSSM._init_weights: the same as VMamba's

    @property
    def norm(self) -> nn.LayerNorm:
        """The final LayerNorm (official key classifier.norm)."""
        return self.classifier.norm

    # How the paper counts this family's MACs, where it is not our counter's (analysis.complexity).
    paper_macs_convention = "EfficientVMamba's fvcore count (with pooling inputs)"

    def paper_macs(self, img_size) -> int:
        """This model's MACs at img_size in the paper's convention (`paper_flops`)."""
        return paper_flops(self, img_size)

    # timm's interface: StageClassifier, on the official `classifier.*` modules
    final_norm_path, head_path = "classifier.norm", "classifier.head"

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The official pooling modules (permute, AdaptiveAvgPool2d, flatten)."""
        return self.classifier.flatten(self.classifier.avgpool(self.classifier.permute(x)))


def paper_flops(model: EfficientVMamba, img_size=224) -> int:
    """The official FLOPs of `model` for one img_size image (int or (H, W)), written out: the
    count EfficientVSSM.flops() prints (fvcore's flop_count with VMamba's supported_ops; the
    training log's 1.343G for S at 224). Conv / Linear / einsum: one per multiply-add (no
    bias); LayerNorm 5 and eval BatchNorm 2 per element; the scan 9 L D N + L D per
    direction over its padded sub-grid; nn.AdaptiveAvgPool2d 1 per input element (the one
    term our counter, count_macs, leaves out: squeeze-excite and classifier pools);
    activations, gates, adds and BiAttn's mean 0. (fvcore reads einsum costs from numpy's
    einsum_path printout, 4 significant digits: +1.8K for S, below the printed precision.)"""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    h, w = h // PATCH, w // PATCH
    c = model.dims[0]
    total = h * w * c * (model.in_chans * PATCH * PATCH + 5)                 # patch embed + LN
    for layer in model.layers:
        L = h * w
        if isinstance(layer, EVSSLayer):
            for blk in layer.blocks:
                ss = blk.op
                e, r, n = ss.d_inner, ss.dt_rank, ss.d_state
                Lp = ((h + 1) // 2) * ((w + 1) // 2)                          # one sub-grid, padded
                hid = blk.se.global_reduce.out_features
                total += (5 * L * c + L * c * 2 * e + 9 * L * e                # norm, in_proj, dwconv
                          + K * Lp * e * (r + 2 * n) + K * Lp * r * e + K * Lp * e * (9 * n + 1)
                          + 5 * L * e + L * e * c                               # out_norm, out_proj
                          + L * c * (9 + 2 + c)                                 # conv branch: dw, BN, 1x1
                          + 2 * (5 * L * c + 2 * c * hid))                      # the gate, twice
        else:
            for blk in layer.blocks:
                m, s = blk.conv_pw[0].out_channels, blk.se.conv_reduce.out_channels
                total += (L * c * m + 2 * L * m + 9 * L * m + 2 * L * m        # 1x1 + BN, dw + BN
                          + L * m + 2 * m * s                                   # SE: pool, two 1x1
                          + L * m * c + 2 * L * c)                              # 1x1 + BN
        if layer.downsample is not None:
            h, w = (h + 1) // 2, (w + 1) // 2
            out = layer.downsample.reduction.out_features
            total += h * w * 4 * c * (5 + out)                                  # LN(4C), Linear
            c = out
    head = model.get_classifier()
    return total + 5 * h * w * c + h * w * c + (c * head.out_features if isinstance(head, nn.Linear) else 0)
