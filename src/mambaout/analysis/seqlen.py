"""The paper's long-sequence criterion: when does attention's quadratic term dominate?

A Transformer block of width D on L tokens costs, in FLOPs (1 multiply-add = 2 FLOPs):

* linear part, per token 12 D^2 multiply-adds: qkv projection 3 D^2, output projection D^2,
  MLP with ratio 4 8 D^2  ->  24 D^2 L FLOPs;
* quadratic part: Q K^T (L^2 D multiply-adds) and attention x V (L^2 D)  ->  4 L^2 D FLOPs.

quadratic / linear = 4 L^2 D / (24 D^2 L) = L / (6 D), so the quadratic term dominates, and
the task is "long-sequence", exactly when L > 6 D (Sec. 3 of MambaOut). Softmax, norms and
biases are left out, as in the paper.

Tokens are counted like a patch embedding (a convolution with kernel = stride = S, no padding):
L = floor(H / S) * floor(W / S), times floor(T / t) for a clip of T frames cut into tubelets of
t frames. For a hierarchical backbone pass the total stride of the stage you care about
(4, 8, 16 or 32 for MambaOut / Swin / ConvNeXt stages 1-4). A class token is not counted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import MambaOutError, WriteError

LONG = "long-sequence: quadratic term dominates"
SHORT = "short-sequence: linear term dominates"
EQUAL = "at the threshold: the two terms are equal"


@dataclass(frozen=True)
class Setting:
    """An input (image or clip) seen by a plain Transformer of width `dim`."""
    name: str
    height: int
    width: int
    stride: int
    dim: int
    frames: int = 1
    tubelet: int = 1
    note: str = ""

    @property
    def is_video(self) -> bool:
        return self.frames > 1 or self.tubelet > 1


# D = 384 is ViT-S / DeiT-S, the paper's example; stride 16 is the ViT patch size and the
# stage-3 stride of hierarchical backbones (where most of their blocks are).
PRESETS: Dict[str, Setting] = {p.name: p for p in [
    Setting("imagenet-224", 224, 224, 16, 384,
            note="ImageNet classification at 224x224, ViT-S/16 (the paper: 196 tokens, short)"),
    Setting("coco-800x1333", 800, 1333, 16, 384,
            note="COCO detection at the usual 800x1333 input, stride 16 (the paper: ~4K tokens)"),
    Setting("ade20k-512x2048", 512, 2048, 16, 384,
            note="ADE20K segmentation at 512x2048, stride 16 (the paper: ~4K tokens)"),
    Setting("kinetics-16x224", 224, 224, 16, 384, frames=16, tubelet=1,
            note="Kinetics-400 video, 16 frames at 224, 1x16x16 patches (VideoMamba-S's setup)"),
    Setting("kinetics-16x224-t2", 224, 224, 16, 384, frames=16, tubelet=2,
            note="the same clip in 2x16x16 tubelets (VideoMAE / ViViT style)"),
    # Something-Something V2 as Table 10 runs it: 8 frames at 224, 196 tokens a frame = 1,568.
    Setting("ssv2-8x224-videomamba-ti", 224, 224, 16, 192, frames=8, tubelet=1,
            note="SSV2, 8 frames at 224, VideoMamba-Ti (D=192, 1x16x16 patches; Table 10): long, as Hypothesis 2 says"),
    Setting("ssv2-8x224-femto-s3", 224, 224, 16, 192, frames=8, tubelet=1,
            note="SSV2, 8 frames at 224, MambaOut-Femto's stage 3 (stride 16, D=192) mixing over the whole clip"),
    Setting("ssv2-8x224-femto-s4", 224, 224, 32, 288, frames=8, tubelet=1,
            note="SSV2, 8 frames at 224, MambaOut-Femto's stage 4 (stride 32, D=288)"),
    # VMamba-T's stage 3 (stride 16, width 384, 9 of its 15 blocks) on the inputs of the paper's
    # comparisons: ImageNet, UperNet on ADE20K, Mask R-CNN at the FLOPs size 1280 x 800.
    Setting("vmamba-t-imagenet-224", 224, 224, 16, 384,
            note="VMamba-T stage 3 on ImageNet 224x224 (main table)"),
    Setting("vmamba-t-upernet-512x2048", 512, 2048, 16, 384,
            note="VMamba-T stage 3 in UperNet on ADE20K at 512x2048 (Table 3)"),
    Setting("vmamba-t-maskrcnn-800x1280", 800, 1280, 16, 384,
            note="VMamba-T stage 3 in Mask R-CNN at 1280x800 (the FLOPs size)"),
]}


def preset_names() -> List[str]:
    return list(PRESETS)


def get_preset(name: str) -> Setting:
    try:
        return PRESETS[name]
    except KeyError:
        raise MambaOutError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}, all") from None


def resolve_presets(names: Iterable[str]) -> List[Setting]:
    """Preset names (repeats dropped, order kept); 'all' means every preset. A name may also
    be a comma-separated list."""
    out: List[Setting] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            picked = list(PRESETS.values()) if name == "all" else [get_preset(name)]
            out += [p for p in picked if p not in out]
    if not out:
        raise MambaOutError(f"no preset given; known presets: {', '.join(PRESETS)}, all")
    return out


_SIZE = re.compile(r"^\s*([+-]?\d+)\s*(?:[xX*]\s*([+-]?\d+)\s*)?$")


def parse_img_size(text) -> Tuple[int, int]:
    """'224' -> (224, 224); '800x1333' -> (800, 1333) (height x width)."""
    if isinstance(text, int) and not isinstance(text, bool):
        h = w = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise MambaOutError(f"--img-size must be H or HxW with whole numbers, e.g. 224 or 800x1333; "
                                f"got {text!r}")
        h = int(m.group(1))
        w = int(m.group(2)) if m.group(2) is not None else h
    if h <= 0 or w <= 0:
        raise MambaOutError(f"image size must be positive, got {h}x{w}")
    return h, w


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MambaOutError(f"{what} must be a whole number, got {value!r}")
    if value <= 0:
        raise MambaOutError(f"{what} must be positive, got {value}")
    return value


def count_tokens(height: int, width: int, stride: int, frames: int = 1, tubelet: int = 1) -> int:
    """L = floor(T/t) * floor(H/S) * floor(W/S), the output size of a patch embedding."""
    height = _positive_int(height, "image height")
    width = _positive_int(width, "image width")
    stride = _positive_int(stride, "stride")
    frames = _positive_int(frames, "frames")
    tubelet = _positive_int(tubelet, "tubelet")
    if stride > height or stride > width:
        raise MambaOutError(f"stride {stride} is larger than the image ({height}x{width}): no tokens")
    if tubelet > frames:
        raise MambaOutError(f"tubelet {tubelet} is longer than the clip ({frames} frames): no tokens")
    return (frames // tubelet) * (height // stride) * (width // stride)


def threshold(dim: int) -> int:
    """The sequence length at which both terms are equal: 6 D."""
    return 6 * _positive_int(dim, "dim")


def linear_flops(tokens: int, dim: int) -> int:
    """qkv + proj + MLP(ratio 4): 12 D^2 multiply-adds per token = 24 D^2 L FLOPs."""
    return 24 * dim * dim * tokens


def quadratic_flops(tokens: int, dim: int) -> int:
    """Q K^T and attention x V: 2 L^2 D multiply-adds = 4 L^2 D FLOPs."""
    return 4 * tokens * tokens * dim


def block_flops(tokens: int, dim: int) -> Tuple[int, int]:
    """(linear, quadratic) FLOPs of one Transformer block."""
    tokens = _positive_int(tokens, "token count")
    dim = _positive_int(dim, "dim")
    return linear_flops(tokens, dim), quadratic_flops(tokens, dim)


def verdict(tokens: int, dim: int) -> str:
    t = threshold(dim)
    return LONG if tokens > t else SHORT if tokens < t else EQUAL


def analyse(setting: Setting) -> Dict:
    """Everything the table, the JSON and the plot show for one setting."""
    dim = _positive_int(setting.dim, "dim")
    tokens = count_tokens(setting.height, setting.width, setting.stride, setting.frames, setting.tubelet)
    lin, quad = block_flops(tokens, dim)
    return dict(
        name=setting.name, height=setting.height, width=setting.width, frames=setting.frames,
        tubelet=setting.tubelet, stride=setting.stride, dim=dim, tokens=tokens,
        threshold=threshold(dim), linear_flops=lin, quadratic_flops=quad,
        total_flops=lin + quad, ratio=quad / lin,  # == tokens / (6 * dim)
        long_sequence=tokens > threshold(dim), verdict=verdict(tokens, dim), note=setting.note,
    )


def analyse_image(height: int, width: int, stride: int = 16, dim: int = 384, frames: int = 1,
                  tubelet: int = 1, name: str = "custom") -> Dict:
    return analyse(Setting(name, height, width, stride, dim, frames, tubelet))


def settings_for(presets: Optional[Sequence[str]] = None, img_size=None, stride: Optional[int] = None,
                 dim: Optional[int] = None, frames: Optional[int] = None,
                 tubelet: Optional[int] = None) -> List[Setting]:
    """What the `seqlen` command analyses. Either presets (stride and dim override theirs), or
    one custom input from img_size (stride default 16, dim default 384 = ViT-S); with neither,
    every preset."""
    if img_size is not None:
        if presets:
            raise MambaOutError("give either --preset or --img-size, not both "
                                "(--stride and --dim do override a preset's)")
        h, w = parse_img_size(img_size)
        return [Setting("custom", h, w, 16 if stride is None else stride, 384 if dim is None else dim,
                        1 if frames is None else frames, 1 if tubelet is None else tubelet)]
    if frames is not None or tubelet is not None:
        raise MambaOutError("--frames and --tubelet describe a custom clip: give --img-size too")
    chosen = resolve_presets(presets or ["all"])
    changes = {k: v for k, v in (("stride", stride), ("dim", dim)) if v is not None}
    return [replace(p, **changes) for p in chosen]


def _input(r: Dict) -> str:
    hw = f"{r['height']}x{r['width']}"
    return f"{r['frames']}x{hw}" if r["frames"] > 1 or r["tubelet"] > 1 else hw


def _stride(r: Dict) -> str:
    s = r["stride"]
    return f"{r['tubelet']}x{s}x{s}" if r["frames"] > 1 or r["tubelet"] > 1 else str(s)


def format_table(rows: List[Dict]) -> str:
    w = max([20] + [len(r["name"]) + 2 for r in rows])
    head = (f"{'name':<{w}}{'input':<13}{'stride':>8}{'D':>6}{'L':>8}{'6D':>7}"
            f"{'linear GF':>11}{'quadr. GF':>11}{'ratio':>8}  verdict")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<{w}}{_input(r):<13}{_stride(r):>8}{r['dim']:>6}{r['tokens']:>8}"
                     f"{r['threshold']:>7}{r['linear_flops'] / 1e9:>11.3f}{r['quadratic_flops'] / 1e9:>11.3f}"
                     f"{r['ratio']:>8.3f}  {r['verdict']}")
    return "\n".join(lines)


def plot(rows: List[Dict], path) -> str:
    """Log-log plot of quadratic/linear = L/(6D) over L, one line per width D, the ratio-1
    line (L = 6D) and the rows marked. Returns the path written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..utils import atomic_write

    if not rows:
        raise MambaOutError("nothing to plot")
    dims = sorted({r["dim"] for r in rows})
    lo = min(min(r["tokens"] for r in rows), min(dims)) / 4
    hi = max(max(r["tokens"] for r in rows), 6 * max(dims)) * 4
    n = 200
    xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]

    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.axhspan(1, 1e9, color="tab:red", alpha=0.06, lw=0)
    ax.axhline(1.0, color="tab:red", ls="--", lw=1.2, label="ratio 1: L = 6D")
    for d in dims:
        ax.plot(xs, [x / (6 * d) for x in xs], lw=1.5, color="tab:blue" if len(dims) == 1 else None,
                label=f"4L$^2$D / 24D$^2$L = L/6D, D = {d} (6D = {6 * d})")
    # labels alternate above-left / below-right of the line (in order of L); a label whose
    # neighbour on the same side is close in L moves further out, with a leader line
    placed: List[Tuple[int, int]] = []  # (side, tokens)
    for i, r in enumerate(sorted(rows, key=lambda r: (r["tokens"], r["dim"]))):
        color = "tab:red" if r["long_sequence"] else "tab:green"
        ax.plot([r["tokens"]], [r["ratio"]], "o", color=color, ms=7, zorder=3)
        side = i % 2
        crowd = sum(1 for sd, t in placed if sd == side and r["tokens"] < 3 * t)
        placed.append((side, r["tokens"]))
        off = 18 + 24 * crowd
        label = r["name"] if len(dims) == 1 else f"{r['name']} (D={r['dim']})"
        ax.annotate(f"{label}\nL = {r['tokens']}", (r["tokens"], r["ratio"]),
                    textcoords="offset points", xytext=(-off, off) if side == 0 else (off, -off),
                    ha="right" if side == 0 else "left", va="bottom" if side == 0 else "top", fontsize=8,
                    arrowprops=dict(arrowstyle="-", color="0.5", lw=0.7))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo / (6 * max(dims)), hi / (6 * min(dims)))
    ax.set_xlabel("tokens L")
    ax.set_ylabel("quadratic / linear FLOPs per block")
    ax.text(0.02, 0.97, "long-sequence (quadratic term dominates)", transform=ax.transAxes,
            va="top", fontsize=8, color="tab:red")
    ax.text(0.98, 0.03, "short-sequence (linear term dominates)", transform=ax.transAxes,
            ha="right", fontsize=8, color="tab:green")
    ax.set_title("Long-sequence criterion L > 6D (Transformer block, MLP ratio 4), D = "
                 + ", ".join(str(d) for d in dims), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.08), fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    except WriteError as e:
        raise WriteError(path, e.error, what="plot") from None
    finally:
        plt.close(fig)
    return str(path)


__all__ = ["Setting", "PRESETS", "preset_names", "get_preset", "resolve_presets", "parse_img_size",
           "count_tokens", "threshold", "linear_flops", "quadratic_flops", "block_flops", "verdict",
           "analyse", "analyse_image", "settings_for", "format_table", "plot"]
