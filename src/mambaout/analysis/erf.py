"""Effective receptive field (ERF): how much each input pixel moves the centre of the last
feature map, averaged over images (`mambaout erf`).

The method is RepLKNet's, as VMamba reuses it. Facts from DingXiaoH/RepLKNet-pytorch
erf/visualize_erf.py and erf/analyze_erf.py (commits 82cf328 / 186ae32) and from
MzeroMiko/VMamba analyze/utils.py, class EffectiveReceiptiveField (commit 2ed52ea):

- the score of one image: the model's last feature map `out` (B, C, h, w), the scalar
  relu(out[:, :, h // 2, w // 2]).sum() (the central location, summed over channels after a
  ReLU), its gradient with respect to the input image, the positive part of that gradient
  (a ReLU, in both repositories, not abs) summed over the input channels: an (H, W) map;
- the maps are averaged over the images (timm's AverageMeter); an image whose map has a NaN
  is skipped;
- for reading and comparing (analyze_erf.py): log10(map + 1), then divided by its maximum so
  that it lies in [0, 1]; VMamba's figures use map ** 0.2 / max instead (`simpnorm`), only
  for display;
- the "high-contribution area ratio" at a threshold t: the smallest centred square, of side
  2i + 1 for i = 1, 2, ..., whose sum over the normalised map is MORE than t of the map's
  total; the ratio is its area over the image's area. RepLKNet prints t = 0.2, 0.3, 0.5, 0.99;
  we report 0.2, 0.5 and 0.99;
- the heat map: seaborn's heatmap with the RdYlGn colour map and center=0, which on data in
  [0, 1] shows the yellow-to-green half of RdYlGn; we draw that half with matplotlib;
- images: ImageNet val, resized to 1024 x 1024, ImageNet-normalised, 50 of them.

Our choices:
- the feature map is `model.forward_intermediates(x, indices=1, intermediates_only=True)[-1]`
  (NCHW): the last stage (hierarchical models) or the last layer's patch tokens (isotropic
  models), without the final norm, as RepLKNet's forward_features without `self.norm`;
- images are resized as the library's evaluation transform does (short side to the size,
  bicubic, centre crop: VMamba's Resize + CenterCrop; RepLKNet squashes to a square instead);
  without images, standard-normal noise in the normalised space (seeded, the same for every
  model);
- where no centred square smaller than the image passes t (RepLKNet's loop stops at side
  h - 1 and returns None), the square keeps growing, clipped to the image, and the ratio is
  the pixels it covers over all pixels (1.0 once it covers the image);
- we also report `pixel_fraction_T`: the smallest fraction of pixels, taken in decreasing
  order of contribution wherever they lie, holding more than t of the normalised map's total.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MambaOutError, first_line

log = logging.getLogger("mambaout")

THRESHOLDS = (0.2, 0.5, 0.99)   # RepLKNet prints 0.2, 0.3, 0.5, 0.99


# ---- the method --------------------------------------------------------------------------------

def last_feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's last feature map (B, C, h, w) through forward_intermediates."""
    fi = getattr(model, "forward_intermediates", None)
    if fi is None:
        name = getattr(model, "variant", None) or type(model).__name__
        raise MambaOutError(f"{name} has no forward_intermediates: the ERF needs its last feature map")
    out = fi(x, indices=1, intermediates_only=True)[-1]
    if out.dim() != 4:
        raise MambaOutError(f"forward_intermediates gave a {out.dim()}-d tensor, not an NCHW map")
    return out


def input_grad(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
    """RepLKNet's score of a batch (B, 3, H, W): d relu(central features).sum() / d image, its
    positive part summed over the batch and the input channels: (a float (H, W) map, the
    feature map's (C, h, w))."""
    x = images.detach().clone().requires_grad_(True)
    out = last_feature_map(model, x)
    h, w = out.shape[-2:]
    centre = F.relu(out[:, :, h // 2, w // 2]).sum()
    if not centre.requires_grad:     # e.g. a model run under torch.no_grad
        raise MambaOutError("the feature map does not depend on the input through autograd")
    (grad,) = torch.autograd.grad(centre, x)
    return F.relu(grad).sum((0, 1)), tuple(out.shape[1:])


def normalise(raw: np.ndarray) -> np.ndarray:
    """RepLKNet's analyze_erf.py: log10(map + 1) / max, in [0, 1] (all zeros stay zeros)."""
    data = np.log10(np.asarray(raw, dtype=np.float64) + 1.0)
    top = data.max()
    return data / top if top > 0 else data


def centred_square(data: np.ndarray, thresh: float) -> Tuple[Optional[int], Optional[float]]:
    """(side, area ratio) of the smallest centred square, side 2i + 1 (i >= 1), whose sum is more
    than `thresh` of the total (RepLKNet's get_rectangle), grown past the borders (clipped) where
    RepLKNet would give up; (None, None) for a map with nothing in it."""
    h, w = data.shape
    total = float(data.sum())
    if not total > 0:
        return None, None
    cy, cx = h // 2, w // 2
    for i in range(1, max(h, w) + 1):
        block = data[max(cy - i, 0):cy + i + 1, max(cx - i, 0):cx + i + 1]
        if float(block.sum()) / total > thresh:
            return 2 * i + 1, block.size / (h * w)
    return None, None   # only for thresh >= 1


def pixel_fraction(data: np.ndarray, thresh: float) -> Optional[float]:
    """The smallest fraction of pixels holding more than `thresh` of the total (ours)."""
    flat = np.sort(np.asarray(data, dtype=np.float64).ravel())[::-1]
    total = flat.sum()
    if not total > 0:
        return None
    k = int(np.searchsorted(np.cumsum(flat) / total, thresh, side="right")) + 1
    return min(k, flat.size) / flat.size


def area_ratios(raw: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, Optional[float]]:
    """area_ratio_T / side_T (RepLKNet's centred squares) and pixel_fraction_T (ours) of a raw
    map, measured on its normalised form; T is the threshold in percent (20, 50, 99)."""
    data = normalise(raw)
    out: Dict[str, Optional[float]] = {}
    for t in thresholds:
        key = f"{round(100 * t):d}"
        side, ratio = centred_square(data, t)
        out[f"area_ratio_{key}"] = None if ratio is None else round(ratio, 6)
        out[f"side_{key}"] = side
        frac = pixel_fraction(data, t)
        out[f"pixel_fraction_{key}"] = None if frac is None else round(frac, 6)
    return out


def where(raw: np.ndarray) -> dict:
    """peak (the largest pixel), centroid (the contribution-weighted mean position) and centre
    (the image's) of a map, as [row, column]."""
    data = np.asarray(raw, dtype=np.float64)
    peak = np.unravel_index(int(np.argmax(data)), data.shape)
    total = data.sum()
    if total > 0:
        rows, cols = np.indices(data.shape)
        centroid = [round(float((rows * data).sum() / total), 2), round(float((cols * data).sum() / total), 2)]
    else:
        centroid = None
    return dict(peak=[int(peak[0]), int(peak[1])], centroid=centroid,
                centre=[data.shape[0] // 2, data.shape[1] // 2])


def erf_map(model: nn.Module, images: Iterable[torch.Tensor], device=None,
            progress: Optional[Callable[[int, float], None]] = None) -> Tuple[np.ndarray, int, tuple]:
    """The mean score map over `images` (each (3, H, W) or (1, 3, H, W), normalised): (map as
    float64 (H, W), images used, the feature map's (C, h, w)). The model is put in eval mode;
    an image whose map has a NaN is skipped with a warning (as RepLKNet does).
    progress(i, seconds): called after each image."""
    model.eval()
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    total, count, shape, i = None, 0, (), 0
    for i, img in enumerate(images, 1):
        x = (img if img.dim() == 4 else img.unsqueeze(0)).to(device)
        start = time.perf_counter()
        try:
            grad, shape = input_grad(model, x)
        except (RuntimeError, ValueError) as e:   # e.g. an input too small for the model
            raise MambaOutError(f"{getattr(model, 'variant', type(model).__name__)} at "
                                f"{x.shape[-2]}x{x.shape[-1]}: {first_line(e)}") from None
        score = grad.detach().double().cpu().numpy()
        if not np.isfinite(score).all():
            log.warning("image %d: the gradient map has NaN or inf values; skipped", i)
        else:
            total = score if total is None else total + score
            count += 1
        if progress:
            progress(i, time.perf_counter() - start)
    if total is None:
        raise MambaOutError("no images to measure" if i == 0 else
                            f"none of the {i} image(s) gave a finite gradient map")
    return total / count, count, shape


# ---- images ------------------------------------------------------------------------------------

def image_paths(data) -> List[Path]:
    """The image files of a folder, flat or ImageFolder-like (root/<class>/<image>), sorted."""
    from ..data.datasets import IMG_EXTENSIONS
    root = Path(data)
    if not root.is_dir():
        raise MambaOutError(f"data folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise MambaOutError(f"no images found under {root} (a folder of images, or <class>/<image>)")
    return paths


def folder_images(paths: Sequence[Path], n: int, img_size: int) -> Iterator[torch.Tensor]:
    """Up to n normalised (3, S, S) images from `paths` in order: resized as the library's eval
    transform does (short side, bicubic, centre crop); unreadable ones skipped with a warning."""
    from ..data.datasets import READ_ERRORS, load_image, read_error
    from ..data.transforms import eval_transform
    tf = eval_transform(img_size, crop_pct=1.0)
    given = 0
    for p in paths:
        if given == n:
            return
        try:
            img = load_image(p)
        except READ_ERRORS as e:
            log.warning("skipping unreadable image %s (%s)", p, read_error(e)[:120])
            continue
        given += 1
        yield tf(img)
    if given == 0:
        raise MambaOutError(f"none of the {len(paths)} image file(s) could be read")
    if given < n:
        log.warning("only %d readable image(s) found, fewer than the %d asked for", given, n)


def noise_images(n: int, img_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """n standard-normal (3, S, S) images (noise in the normalised space), image i from seed + i."""
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        yield torch.randn(3, img_size, img_size, generator=g)


# ---- the command -------------------------------------------------------------------------------

@dataclass
class ErfSettings:
    models: Sequence[str]
    output: str
    checkpoints: Sequence[str] = field(default_factory=list)
    data: Optional[str] = None
    num_images: int = 50
    img_size: int = 1024
    device: str = "cpu"
    seed: int = 0      # of the noise images and of a fresh model's initialisation


def _labels(models: Sequence[str], checkpoints: Sequence[Optional[str]]) -> List[str]:
    """One label per model: its name, with the checkpoint's stem where a name repeats."""
    labels, used = [], set()
    for name, ckpt in zip(models, checkpoints):
        base = name if models.count(name) == 1 else f"{name}@{Path(ckpt).stem if ckpt else 'init'}"
        label, k = base, 1
        while label in used:
            k += 1
            label = f"{base}#{k}"
        used.add(label)
        labels.append(label)
    return labels


def check(s: ErfSettings) -> List[Optional[str]]:
    """Every user error before any model runs; returns one checkpoint (or None) per model."""
    from ..models import get_variant
    if not s.models:
        raise MambaOutError("name at least one model")
    for name in s.models:
        get_variant(name)
    checkpoints = list(s.checkpoints or [])
    if checkpoints and len(checkpoints) != len(s.models):
        raise MambaOutError(f"{len(checkpoints)} --checkpoint for {len(s.models)} models: give none, "
                            "or one per model in the same order")
    for c in checkpoints:
        if not Path(c).is_file():
            raise MambaOutError(f"checkpoint not found: {c}")
    if isinstance(s.num_images, bool) or not isinstance(s.num_images, int) or s.num_images < 1:
        raise MambaOutError(f"-n must be a positive number of images, got {s.num_images}")
    if isinstance(s.img_size, bool) or not isinstance(s.img_size, int) or s.img_size < 8:
        raise MambaOutError(f"--img-size must be at least 8 pixels, got {s.img_size}")
    if s.data is not None:
        image_paths(s.data)
    return checkpoints or [None] * len(s.models)


def run(s: ErfSettings, say: Callable[[str], None] = lambda msg: None) -> Dict[str, dict]:
    """`mambaout erf`: for each model, the mean score map over the images, saved as
    <output>/<label>_erf.npy (raw mean, float64), its area ratios, and one PNG panel per model
    in <output>/erf.png. Returns {label: {area_ratio_20, area_ratio_50, area_ratio_99, ...}}
    (also written to <output>/erf.json). say(msg): progress lines."""
    from ..models import create_model
    from ..utils import atomic_write, resolve_device
    checkpoints = check(s)
    device = resolve_device(s.device)
    out = Path(s.output)
    paths = image_paths(s.data) if s.data is not None else None
    source = (f"{s.data} ({len(paths)} image files; the first {s.num_images} readable, "
              f"resized and centre-cropped to {s.img_size}px)" if paths is not None else
              f"{s.num_images} random-noise images (standard normal in the normalised space, seed {s.seed}; "
              "no --data given)")
    labels = _labels(list(s.models), checkpoints)
    results: Dict[str, dict] = {}
    maps: List[Tuple[str, np.ndarray]] = []
    for name, ckpt, label in zip(s.models, checkpoints, labels):
        torch.manual_seed(s.seed)      # a fresh model's initialisation is reproducible too
        try:
            model = create_model(name, checkpoint_path=ckpt, img_size=s.img_size)
        except NotImplementedError as e:    # a family not written yet
            raise MambaOutError(f"{name}: {first_line(e)}") from None
        if not hasattr(model, "forward_intermediates"):
            raise MambaOutError(f"{name} has no forward_intermediates: the ERF needs its last feature map")
        model.to(device)
        if not maps:      # said once the first model is built, so that its errors come alone
            say(f"ERF at {s.img_size}x{s.img_size} on {source}")
        images = (folder_images(paths, s.num_images, s.img_size) if paths is not None
                  else noise_images(s.num_images, s.img_size, s.seed))
        step = max(1, s.num_images // 10)

        def progress(i, seconds, label=label):
            if i == 1 or i % step == 0 or i == s.num_images:
                say(f"{label}: image {i}/{s.num_images} ({seconds:.1f} s)")
        mean, count, shape = erf_map(model, images, device, progress)
        del model
        npy = out / f"{label}_erf.npy"
        atomic_write(npy, lambda tmp: _save_npy(tmp, mean))
        results[label] = dict(area_ratios(mean), model=name, checkpoint=ckpt, images=count,
                              img_size=s.img_size, feature_map=list(shape), **where(mean),
                              data=s.data if paths is not None else "noise", npy=str(npy))
        maps.append((label, mean))
    png = plot(maps, out / "erf.png", results)
    for r in results.values():
        r["png"] = png
    import json
    atomic_write(out / "erf.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    return results


def _save_npy(path, array):
    with open(path, "wb") as f:   # a file object: np.save would add ".npy" to the temporary name
        np.save(f, array)


def plot(maps: Sequence[Tuple[str, np.ndarray]], path, results: Optional[Dict[str, dict]] = None) -> str:
    """One heat-map panel per model (normalised maps, RdYlGn as RepLKNet's figures), titled with
    the label and, from `results`, the 20/50/99% area ratios. Returns the path written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from ..utils import atomic_write
    if not maps:
        raise MambaOutError("nothing to plot")
    n = len(maps)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1.2, 3.6 * rows), squeeze=False,
                             layout="constrained")
    # seaborn's heatmap(cmap="RdYlGn", center=0) on [0, 1] data: the upper half of RdYlGn
    cmap = ListedColormap(plt.get_cmap("RdYlGn")(np.linspace(0.5, 1.0, 256)))
    image = None
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, raw) in zip(axes.ravel(), maps):
        image = ax.imshow(normalise(raw), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        title = label
        r = (results or {}).get(label)
        if r:
            ratios = "/".join("-" if r[f"area_ratio_{k}"] is None else f"{r[f'area_ratio_{k}']:.3f}"
                              for k in ("20", "50", "99"))
            title += f"\n20/50/99%: {ratios}"
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="log10(map + 1) / max")
    fig.suptitle("effective receptive field; area ratios of the centred squares at 20/50/99%", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return str(path)
