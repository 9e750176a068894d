"""LocalVMamba (LocalMamba's hierarchical model, "LocalVSSM"): VMamba with windowed local scans
searched per block and a channel gate on each direction, in pure PyTorch (CPU and GPU).

Facts from the LocalMamba repository (hunto/LocalMamba, commit 75e5d1f,
classification/lib/models/local_vmamba.py, mamba/multi_mamba.py, mamba/local_scan.py):

* The trunk is VMamba's (vmamba.py), built by the VMamba code LocalMamba ships: patch embed
  conv 4x4 stride 4 (bias) -> LayerNorm, NHWC; blocks x + DropPath(SS2D(LN(x))), no MLP;
  Swin patch merging between stages, which pads odd sizes with a zero row / column
  (VMamba v0 drops them); head LayerNorm -> global average pool -> Linear. LayerNorm eps 1e-5.
* SS2D as v0 (in_proj C -> 2E, E = 2C; depthwise 3x3 conv + SiLU; per direction x_proj and
  dt_proj, stacked; A_logs, Ds; softplus delta; out_norm; times SiLU(z); out_proj), except:
  - each block scans in its own 4 directions, searched (the `local_vssm_tiny` /
    `local_vssm_small` lists, copied below as data) from h (row-major), v (column-major),
    w2, w7 (the map cut into K x K windows, the windows in row-major order, row-major inside
    each) and their reverses (*_flip). A map whose sides are not multiples of K is padded
    with zeros at the bottom / right first; the padding tokens stay in the sequence (they
    decay the state: their B, C are 0, their delta softplus(dt bias)), the reverse of a
    windowed scan reverses the padded sequence, and all directions are padded at the end to
    the longest one, so the four run as one batch (the padded lengths are what the
    projections and the scan cost).
  - each direction's output, mapped back to row-major (padding dropped), is multiplied by a
    channel gate shared by the four directions ("BiAttn": LayerNorm(E), mean over the
    tokens, Linear E -> E/8, GELU, Linear E/8 -> E, sigmoid) before the four are summed and
    out_norm is applied.
* State-dict names are the release's (patch_embed.0 / .2, layers.N.blocks.M.norm,
  layers.N.blocks.M.op.* with the gate at op.multi_scan.attn.{norm, global_reduce,
  channel_select}, layers.N.downsample.{norm, reduction}, classifier.norm, classifier.head),
  so the released local_vssm_* checkpoints ({'model': ...} from the training script's
  CheckpointManager, or {'state_dict': ...} from its tools/convert_ckpt.py) load strictly.

One deviation, ours, with the release's behaviour kept as an option: the release maps the
column-major scans (v, v_flip) back with a reshape that is right only on square maps (it
reads the L outputs as H x W where they are W x H); on a non-square map it scrambles them.
By default we invert the scan exactly (the same result on square maps, so at 224 x 224 and
for every classification number); `official_v_reverse=True` reproduces the release on
non-square inputs (its detection / segmentation backbones ran that way).

Paper (LocalMamba, and its README): T 26M / 5.7G / 82.7, S 50M / 11.4G / 83.7. The params include
the classifier (25.53M / 49.75M counted here; without it 24.76M / 48.98M would print 25 /
49); the FLOPs are VMamba's fvcore convention (see `closed form` in the tests): 5.73G /
11.37G (T's layers.3.blocks.0 scans w2 on the 7 x 7 map, padded to 8 x 8).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .vmamba import SS2D, PatchMerging, Permute, StageClassifier, VSSLayer, init_linear_ln

# The searched directions of every block, in order over the stages (local_vmamba.py,
# local_vssm_tiny: 15 blocks, local_vssm_small: 33 blocks).
DIRECTIONS = {
    "tiny": (
        ("h", "h_flip", "w7", "w7_flip"),
        ("h_flip", "v_flip", "w2", "w2_flip"),
        ("h_flip", "v_flip", "w2_flip", "w7"),
        ("h_flip", "v", "v_flip", "w2"),
        ("h", "h_flip", "v_flip", "w2_flip"),
        ("h_flip", "v_flip", "w2", "w2_flip"),
        ("h", "w2_flip", "w7", "w7_flip"),
        ("h", "h_flip", "v", "v_flip"),
        ("h", "v_flip", "w7", "w7_flip"),
        ("h_flip", "v", "w2", "w7_flip"),
        ("v", "v_flip", "w2", "w7_flip"),
        ("h", "h_flip", "v_flip", "w2_flip"),
        ("v_flip", "w2_flip", "w7", "w7_flip"),
        ("h_flip", "v_flip", "w2_flip", "w7_flip"),
        ("h_flip", "v", "w7", "w7_flip"),
    ),
    "small": (
        ("h", "v", "v_flip", "w7_flip"),
        ("h", "h_flip", "v", "w7"),
        ("h_flip", "v", "v_flip", "w7"),
        ("h_flip", "v", "w2_flip", "w7"),
        ("h_flip", "v", "w2_flip", "w7"),
        ("h_flip", "v_flip", "w2", "w7_flip"),
        ("h_flip", "v", "v_flip", "w7"),
        ("h", "v", "v_flip", "w7"),
        ("h", "v", "v_flip", "w7"),
        ("h", "v", "v_flip", "w7_flip"),
        ("h", "h_flip", "v", "v_flip"),
        ("h", "v", "v_flip", "w2"),
        ("v", "v_flip", "w2_flip", "w7"),
        ("h", "h_flip", "v", "w2"),
        ("h_flip", "v", "v_flip", "w7_flip"),
        ("h", "h_flip", "v", "v_flip"),
        ("h", "v", "v_flip", "w7_flip"),
        ("h", "v", "v_flip", "w7_flip"),
        ("h", "h_flip", "v_flip", "w7"),
        ("h_flip", "v_flip", "w2_flip", "w7"),
        ("h_flip", "v", "v_flip", "w7_flip"),
        ("v", "v_flip", "w7", "w7_flip"),
        ("h", "v", "v_flip", "w7_flip"),
        ("h_flip", "v", "v_flip", "w2"),
        ("h", "v", "v_flip", "w2_flip"),
        ("h", "h_flip", "v", "w7"),
        ("h", "h_flip", "w7", "w7_flip"),
        ("h", "v_flip", "w2", "w2_flip"),
        ("h", "v_flip", "w2", "w7"),
        ("h", "v", "v_flip", "w7_flip"),
        ("h_flip", "v", "w2_flip", "w7"),
        ("h_flip", "v_flip", "w7", "w7_flip"),
        ("h", "v", "w7", "w7_flip"),
    ),
}

_DIRECTION = re.compile(r"(h|v|w(\d+))(_flip)?")


def parse_direction(direction: str) -> Tuple[str, int, bool]:
    """'h' | 'v' | 'w<K>', optionally '_flip' -> (kind 'h' / 'v' / 'w', window K or 0, flip)."""
    m = _DIRECTION.fullmatch(direction) if isinstance(direction, str) else None
    if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(f"unknown scan direction {direction!r}: use h, v or w<K> (K >= 1), each "
                         f"optionally with _flip")
    return m.group(1)[0], int(m.group(2) or 0), m.group(3) is not None


def scan_order(direction: str, h: int, w: int) -> torch.Tensor:
    """The token sequence one direction scans on an h x w map: the row-major positions
    (0 .. h*w - 1) in scan order, h*w standing for a zero padding token (windowed scans on
    sides that are not multiples of K)."""
    kind, k, flip = parse_direction(direction)
    grid = torch.arange(h * w, device="cpu").view(h, w)
    if kind == "h":
        seq = grid.reshape(-1)
    elif kind == "v":
        seq = grid.t().reshape(-1)
    else:
        hg, wg = -(-h // k), -(-w // k)
        grid = F.pad(grid, (0, wg * k - w, 0, hg * k - h), value=h * w)
        seq = grid.view(hg, k, wg, k).permute(0, 2, 1, 3).reshape(-1)   # window by window
    return seq.flip(0) if flip else seq


def reverse_order(direction: str, h: int, w: int, official_v_reverse: bool = False) -> torch.Tensor:
    """For each row-major position of the h x w map, where the direction's scan put it: the
    inverse of scan_order on the real tokens. official_v_reverse: the release's mapping for
    v / v_flip (exact on square maps only; module docstring)."""
    kind, _, flip = parse_direction(direction)
    L = h * w
    if official_v_reverse and kind == "v":
        wrong = torch.arange(L, device="cpu").view(h, w).t().reshape(-1)   # the release reads W x H outputs as H x W
        return L - 1 - wrong if flip else wrong
    seq = scan_order(direction, h, w)
    inv = torch.empty(L + 1, dtype=torch.long, device="cpu")
    inv[seq] = torch.arange(len(seq), device="cpu")        # the padding slot L gets some step; it is dropped
    return inv[:L]


@lru_cache(maxsize=256)
def _block_orders(directions: Tuple[str, ...], h: int, w: int, official_v_reverse: bool):
    """(K, Lmax) gather indices into the map plus a zero token at L (every direction padded at
    the end to the longest), and (K, L) indices of each position in its direction's output.
    Cached for every model: always ordinary CPU tensors, even when first asked for under
    torch.inference_mode (an inference tensor would poison later autograd use) or inside a
    torch.device("meta") context (explicit device="cpu" above)."""
    with torch.inference_mode(False):
        L = h * w
        seqs = [scan_order(d, h, w) for d in directions]
        longest = max(len(s) for s in seqs)
        order = torch.stack([F.pad(s, (0, longest - len(s)), value=L) for s in seqs])
        inverse = torch.stack([reverse_order(d, h, w, official_v_reverse) for d in directions])
    return order, inverse


def _compiling() -> bool:
    """Under torch.compile or torch.export (fake tensors)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class ChannelGate(nn.Module):
    """LocalMamba's "BiAttn" (its channel branch; the spatial one is commented out in the
    release): x * sigmoid(W2 GELU(W1 mean_tokens(LN(x)))), E -> int(E / 8) -> E, on (..., L, E)."""

    def __init__(self, dim: int, ratio: float = 0.125):
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.global_reduce = nn.Linear(dim, hidden)
        self.act_fn = nn.GELU()
        self.channel_select = nn.Linear(hidden, dim)
        self.gate_fn = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(x).mean(dim=-2, keepdim=True)
        return x * self.gate_fn(self.channel_select(self.act_fn(self.global_reduce(pooled))))


class MultiScan(nn.Module):
    """One block's scan directions: the sequences SS2D scans, and their outputs mapped back,
    gated (`attn`, shared by the directions) and summed. Named as the release's module."""

    def __init__(self, dim: int, directions: Sequence[str], official_v_reverse: bool = False):
        super().__init__()
        for d in directions:
            parse_direction(d)
        self.directions = tuple(directions)
        self.official_v_reverse = official_v_reverse
        self.attn = ChannelGate(dim)

    def orders(self, h: int, w: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
        # Under torch.compile / torch.export the tensors made here are fake: never cache those.
        build = _block_orders.__wrapped__ if _compiling() else _block_orders
        order, inverse = build(self.directions, h, w, self.official_v_reverse)
        return order.to(device), inverse.to(device)

    def scan(self, u: torch.Tensor) -> torch.Tensor:
        """(b, E, h, w) -> (b, K, E, Lmax): each direction's sequence, zero-padded."""
        b, e, h, w = u.shape
        order, _ = self.orders(h, w, u.device)
        tokens = F.pad(u.reshape(b, e, h * w), (0, 1))             # position h*w: the zero token
        return tokens[:, :, order].transpose(1, 2)

    def merge(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(b, K, Lmax, E) outputs in scan order -> (b, h, w, E): back to row-major, each
        direction gated, summed."""
        b, k, _, e = y.shape
        _, inverse = self.orders(h, w, y.device)
        y = y.gather(2, inverse[None, :, :, None].expand(b, k, h * w, e))
        return self.attn(y).sum(dim=1).view(b, h, w, e)

    def extra_repr(self) -> str:
        return ", ".join(self.directions) + (", official_v_reverse" if self.official_v_reverse else "")


class LocalSS2D(SS2D):
    """SS2D (vmamba.py) scanning in `directions` (their number is the block's K), with
    LocalMamba's gate on each direction (MultiScan)."""

    def __init__(self, dim: int, directions: Sequence[str], d_state: int = 16, official_v_reverse: bool = False,
                 **ss2d):
        super().__init__(dim, d_state=d_state, num_directions=len(directions), **ss2d)
        self.multi_scan = MultiScan(self.d_inner, directions, official_v_reverse)

    def scan_orders(self, u: torch.Tensor) -> torch.Tensor:
        return self.multi_scan.scan(u)

    def merge(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.multi_scan.merge(y, h, w)


class LocalVSSBlock(nn.Module):
    """x + DropPath(LocalSS2D(LN(x))) on NHWC maps (the release's names: norm, op)."""

    def __init__(self, dim: int, drop_path: float, directions: Sequence[str], **ss2d):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = LocalSS2D(dim, directions, **ss2d)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


class PatchMerging2D(PatchMerging):
    """VMamba's patch merging, odd sizes padded with a zero row / column (as the release)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2)))


class LocalVSSLayer(VSSLayer):
    """A stage (vmamba.VSSLayer: forward_blocks, downsample) of LocalVSSBlocks, each with its
    own directions (`directions`: one list per block of the stage)."""

    def make_block(self, dim: int, index: int, drop_path: float, directions=(), **block) -> nn.Module:
        return LocalVSSBlock(dim, drop_path, directions[index], **block)

    def make_downsample(self, dim: int) -> nn.Module:
        return PatchMerging2D(dim)


class Classifier(nn.Module):
    """The release's `classifier`: LayerNorm per token, (pooling), Linear head."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()


def resolve_directions(directions, depths: Sequence[int]) -> List[Tuple[str, ...]]:
    """Per-block direction lists: a table name ("tiny", "small"), one list for every block, or
    one list per block (sum(depths) of them). ValueError otherwise."""
    blocks = sum(depths)
    if isinstance(directions, str):
        if directions not in DIRECTIONS:
            raise ValueError(f"unknown directions table {directions!r}; tables: {', '.join(DIRECTIONS)}, "
                             f"or pass a list of directions (per block)")
        table = DIRECTIONS[directions]
        if len(table) != blocks:
            raise ValueError(f"the {directions!r} directions table has {len(table)} blocks but depths "
                             f"{tuple(depths)} make {blocks}: pass directions as a list")
        return [tuple(d) for d in table]
    directions = list(directions)
    if directions and all(isinstance(d, str) for d in directions):
        directions = [directions] * blocks
    if len(directions) != blocks or any(isinstance(d, str) or not len(d) for d in directions):
        raise ValueError(f"directions must be a table name, one list of directions, or {blocks} "
                         f"non-empty lists (one per block), got {len(directions)} entries")
    for block in directions:
        for d in block:
            parse_direction(d)
    return [tuple(d) for d in directions]


class LocalVMamba(StageClassifier, nn.Module):
    """LocalVMamba (LocalVSSM) with timm's classifier and feature interface.

    depths / dims: per stage (T: (2, 2, 9, 2), S: (2, 2, 27, 2), both 96-768; dims must double).
    directions: "tiny" / "small" (the release's searched lists), one list of directions for
    every block, or a list per block; names h, v, w<K>, each optionally _flip.
    drop_path_rate: peak stochastic depth, linear over the blocks. global_pool: "avg" or "".
    official_v_reverse: the release's mapping back of the column scans (wrong on non-square
    maps; module docstring). chunk: the selective scan's (ssm.run_scan).
    """

    # timm's interface: StageClassifier, on the release's `classifier.*` modules
    final_norm_path, head_path = "classifier.norm", "classifier.head"

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths=(2, 2, 9, 2),
                 dims=(96, 192, 384, 768), directions: Union[str, Sequence] = "tiny", d_state: int = 16,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 official_v_reverse: bool = False, chunk: Optional[int] = None):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} differ in length")
        if any(dims[i + 1] != 2 * dims[i] for i in range(len(dims) - 1)):
            raise ValueError(f"patch merging doubles the width: dims {tuple(dims)} must double per stage")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        per_block = resolve_directions(directions, depths)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.dims = tuple(dims)
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                                         Permute(0, 2, 3, 1), nn.LayerNorm(dims[0]))
        dpr = [drop_path_rate * i / max(1, sum(depths) - 1) for i in range(sum(depths))]   # linear from 0
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList([
            LocalVSSLayer(dims[i], depths[i], dpr[starts[i]:starts[i] + depths[i]], downsample=i < len(dims) - 1,
                          directions=per_block[starts[i]:starts[i] + depths[i]], d_state=d_state,
                          official_v_reverse=official_v_reverse, chunk=chunk)
            for i in range(len(depths))])
        self.classifier = Classifier(dims[-1], num_classes)
        self.head_drop = nn.Dropout(drop_rate)
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"layers.{i}") for i, d in enumerate(dims)]
        self.pretrained_cfg: dict = {}
        self.apply(init_linear_ln)            # the release's init: Linear trunc_normal(0.02), LN 1 / 0
