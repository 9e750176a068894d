"""Semantic segmentation evaluation, as pure functions: mIoU from a confusion matrix, whole /
sliding-window / multi-scale+flip inference, and colour maps for predictions.

Metrics follow mmsegmentation's IoUMetric: pixels labelled `ignore_index` are left out; per
class IoU = TP / (TP + FP + FN) and Acc = TP / (TP + FN); a class whose IoU (Acc) is 0/0 is
NaN and left out of mIoU (mAcc); aAcc = all TP / all labelled pixels; all in percent.
Inference follows mmseg's EncoderDecoder (slide_inference, whole_inference, aug_test): every
function returns scores at the ORIGINAL image size, (N, C, H, W), and the caller takes argmax.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...data.transforms import rescale_size
from .data import IGNORE_INDEX
from ...errors import MambaOutError

ModelFn = Callable[[torch.Tensor], torch.Tensor]   # normalised (N,3,h,w) -> logits (N,C,h',w')
Size = Union[int, Tuple[int, int]]


# ----------------------------------------------------------------------------- metrics

def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts: row = ground-truth class, column = predicted
    class, over the pixels whose target is not ignore_index. pred and target: label maps of
    the same shape. Values outside 0..num_classes-1 raise ValueError (a bug upstream, which
    would otherwise corrupt the counts silently)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    for name, v in (("target", t), ("prediction", p)):
        if v.numel() and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} holds values outside 0..{num_classes - 1} (and {ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def metrics_from_confusion(matrix: torch.Tensor) -> dict:
    """{"aAcc", "mIoU", "mAcc": float, "IoU", "Acc": per-class lists}, all in percent; a class
    absent from both ground truth and prediction has IoU NaN, one absent from the ground truth
    has Acc NaN, and NaNs are left out of the means (mmseg's nanmean)."""
    m = matrix.double().cpu()
    tp, gt, pred = m.diag(), m.sum(1), m.sum(0)
    iou = tp / (gt + pred - tp) * 100          # 0/0 -> NaN
    acc = tp / gt * 100
    return {"aAcc": (tp.sum() / gt.sum() * 100).item(), "mIoU": torch.nanmean(iou).item(),
            "mAcc": torch.nanmean(acc).item(), "IoU": iou.tolist(), "Acc": acc.tolist()}


class IoUMeter:
    """Accumulates a confusion matrix over batches. Under DDP every process updates its own
    meter and then sums the matrices (`all_reduce`, or `matrix` directly) before `compute`."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device=None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: predicted labels (e.g. scores.argmax(1)), target: ground truth, same shape."""
        cm = confusion_matrix(pred, target.to(pred.device), self.num_classes, self.ignore_index)
        self.matrix += cm.to(self.matrix.device)

    def all_reduce(self, reduce_fn: Callable[[torch.Tensor], Optional[torch.Tensor]]) -> "IoUMeter":
        """Sum the matrix over processes: reduce_fn sums a tensor in place and/or returns the sum,
        e.g. `meter.all_reduce(lambda t: all_reduce_sum(t, d))` (mambaout.distributed). The
        matrix must be on the backend's device (construct with device=... for NCCL)."""
        summed = reduce_fn(self.matrix)
        if summed is not None:
            self.matrix = summed
        return self

    def compute(self) -> dict:
        """metrics_from_confusion of the matrix so far."""
        return metrics_from_confusion(self.matrix)


# ----------------------------------------------------------------------------- inference

def _pair(v: Size) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _logits(model_fn: ModelFn, image: torch.Tensor, num_classes: int) -> torch.Tensor:
    """model_fn(image) as float32 at the input's size (bilinear, as mmseg's encode_decode, if the
    model answers at a lower resolution); a wrong number of classes is the user's error (a
    checkpoint for another dataset)."""
    logits = model_fn(image)
    if logits.dim() != 4 or logits.shape[:2] != (image.shape[0], num_classes):
        raise MambaOutError(f"the model gives scores of shape {tuple(logits.shape)} for {image.shape[0]} "
                            f"image(s); expected {num_classes} classes")
    return _resize(logits.float(), image.shape[-2:])


@torch.no_grad()
def infer_whole(model_fn: ModelFn, image: torch.Tensor, num_classes: int,
                out_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Logits (N, C, H, W) for a batch of normalised images (N, 3, h, w) in one forward pass,
    resized bilinearly to out_size (the original image size) if given."""
    return _resize(_logits(model_fn, image, num_classes), out_size or image.shape[-2:])


@torch.no_grad()
def infer_slide(model_fn: ModelFn, image: torch.Tensor, num_classes: int, crop: Size = 512,
                stride: Size = 341, out_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """mmseg's slide_inference: crop x crop windows every `stride` pixels, the last row and
    column moved back to end at the border; each window's logits are added in place and every
    pixel is divided by the number of windows covering it. A side shorter than the crop is
    taken whole (no padding), so the model must accept any size. Logits (N, C, H, W), resized
    to out_size if given. mmseg's ADE20K slide settings: crop 512, stride 341."""
    (ch, cw), (sh, sw) = _pair(crop), _pair(stride)
    n, _, h, w = image.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    total = image.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            total[:, :, y1:y2, x1:x2] += _logits(model_fn, image[:, :, y1:y2, x1:x2], num_classes)
            count[:, :, y1:y2, x1:x2] += 1
    return _resize(total / count, out_size or (h, w))


@torch.no_grad()
def infer_multiscale(model_fn: ModelFn, image: torch.Tensor, num_classes: int,
                     scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True,
                     mode: str = "whole", base_size: Optional[Tuple[int, int]] = (2048, 512),
                     crop: Size = 512, stride: Size = 341,
                     out_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Multi-scale (+ flip) test, mmseg's aug_test: for each ratio r the image is resized to fit
    within (int(base_size[0] * r), int(base_size[1] * r)) keeping its aspect ratio (the
    MultiScaleFlipAug of the Swin-era ADE20K configs; base_size=None: r times the image's own
    size, as mmseg 1.x's TestTimeAug), inferred (`mode` "whole" or "slide"), and, with flip,
    inferred again mirrored and mirrored back; the logits are resized to out_size (default: the
    input's size), turned into softmax probabilities, and averaged over all 2 x len(scales)
    passes. Pass the image at its original size for mmseg's exact sizes. Returns
    probabilities (N, C, H, W)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    h, w = image.shape[-2:]
    out_size = tuple(out_size or (h, w))
    probs = image.new_zeros((image.shape[0], num_classes, *out_size), dtype=torch.float32)
    passes = 0
    for r in scales:
        if base_size is not None:
            size = rescale_size(h, w, (int(base_size[0] * r), int(base_size[1] * r)))
        else:
            size = (int(h * r + 0.5), int(w * r + 0.5))
        scaled = _resize(image, size)
        for mirrored in ((False, True) if flip else (False,)):
            x = scaled.flip(-1) if mirrored else scaled
            if mode == "slide":
                logits = infer_slide(model_fn, x, num_classes, crop, stride, out_size)
            else:
                logits = infer_whole(model_fn, x, num_classes, out_size)
            probs += (logits.flip(-1) if mirrored else logits).softmax(1)
            passes += 1
    return probs / passes


# ----------------------------------------------------------------------------- pictures

def _labels(label_map) -> np.ndarray:
    if isinstance(label_map, torch.Tensor):
        label_map = label_map.detach().cpu().numpy()
    labels = np.asarray(label_map).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {labels.shape}")
    return labels


def colorize(label_map, palette: Sequence[Sequence[int]]) -> Image.Image:
    """An RGB picture of a (H, W) label map: class k in palette[k]; ignore (255) and any value
    without a colour in black."""
    labels = _labels(label_map)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    known = (labels >= 0) & (labels < len(colours))
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    out[known] = colours[labels[known]]
    return Image.fromarray(out)


def overlay(image, label_map, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> Image.Image:
    """The image with the label map's colours blended in at `alpha`; pixels without a colour
    (ignore) keep the image. image: PIL image or (H, W, 3) uint8 array of the label map's size."""
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    labels = _labels(label_map)
    if base.shape[:2] != labels.shape:
        raise ValueError(f"image {base.shape[1]}x{base.shape[0]} and label map "
                         f"{labels.shape[1]}x{labels.shape[0]} differ in size")
    colours = np.asarray(colorize(labels, palette), dtype=np.float32)
    known = ((labels >= 0) & (labels < len(palette)))[..., None]
    out = np.where(known, (1 - alpha) * base + alpha * colours, base)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
