"""Semantic segmentation data: the ADE20K folder layout (also for a user's own data), joint
image/mask transforms that follow mmsegmentation's ADE20K pipeline, and an embedded digits
set for few-minute CPU runs.

Bad data never stops a run and is never silently wrong. A sample that cannot be used (image or
annotation unreadable, sizes that differ, label values the model does not know) comes back as
a `SkippedSample` that names the file and the reason, and a warning is logged. The collate
functions here drop those and return a `SkipCounts` (reason -> count) with every batch, so a
training loop can sum them per epoch (`SkipCounts.to_tensor` for a DDP all-reduce) and print
"skipped 3 (2 unreadable image, 1 size mismatch)". A marker object, rather than None, is what
carries the reason out of a DataLoader worker process. Images without an annotation file are
found when the dataset is built: one warning, and `dataset.scan_skips` holds the count.

Randomness: the training transforms draw from python's `random` and torch's global RNG only,
which `SeededSamples` seeds per (seed, epoch, index); the digits canvases come from a generator
seeded by their index, so a canvas is the same whatever was drawn before it.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ...errors import MambaOutError
from .ade20k import ADE20K_CLASSES, ADE20K_PALETTE
from ...data.canvas import paste_digits
from ...data import skips
from ...data.datasets import IMG_EXTENSIONS, READ_ERRORS, DigitsDataset, load_image
from ...data.skips import skip
from ...data.transforms import rescale_size
from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("mambaout")

IGNORE_INDEX = 255
SPLIT_ALIASES = {"train": "training", "val": "validation"}
SKIP_REASONS = ("no annotation", "unreadable image", "unreadable annotation", "size mismatch",
                "label out of range")


# ----------------------------------------------------------------------------- skipped samples

class SkipCounts(skips.SkipCounts):
    """Skipped segmentation samples per reason (SKIP_REASONS)."""
    REASONS = SKIP_REASONS


def _split_batch(batch):
    """(first SampleFailure or None, usable samples, SkipCounts)."""
    counts = SkipCounts()
    failure, good = skips.split_batch(batch, counts)
    return failure, good, counts


def collate_seg_train(batch):
    """Training batches: (images (N,3,h,w) float, masks (N,h,w) int64, SkipCounts), with
    (None, None, counts) when every sample was skipped, or the batch's first SampleFailure
    (the caller raises DataPipelineError). Every sample must have the same size (the training
    transform pads to the crop size)."""
    failure, good, skips = _split_batch(batch)
    if failure is not None:
        return failure
    if not good:
        return None, None, skips
    return torch.stack([b[0] for b in good]), torch.stack([b[1] for b in good]), skips


def collate_seg_eval(batch):
    """Evaluation batches: (list of images (3,h,w), list of masks (H,W), SkipCounts), lists
    because every image keeps its own size; or the batch's first SampleFailure."""
    failure, good, skips = _split_batch(batch)
    if failure is not None:
        return failure
    return [b[0] for b in good], [b[1] for b in good], skips


# ----------------------------------------------------------------------------- datasets

def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """ADE20K's convention (mmseg LoadAnnotations(reduce_zero_label=True)): 0 ("other") becomes
    255 (ignored), 1..N become 0..N-1, and 255 stays 255."""
    out = label - 1
    out[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def load_label_map(path) -> np.ndarray:
    """A PNG label map as an (H, W) integer array: grey ("L", "I", "I;16") values or palette
    ("P") indices. Colour images are refused: their pixels are not class indices."""
    with Image.open(path) as im:
        im.load()
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise ValueError(f"not a single-channel label map (mode {im.mode})")
        return np.asarray(im, dtype=np.int64)


def read_class_names(source: Union[str, Path, Sequence[str]]) -> list:
    """Class names from a file (one per line, blank lines ignored) or from a list."""
    if isinstance(source, (str, Path)):
        try:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise MambaOutError(f"cannot read class names file {source}: {e}") from None
        return [line.strip() for line in lines if line.strip()]
    return [str(c) for c in source]


def default_palette(n: int) -> list:
    """n distinct RGB colours: the bits of each class index spread over the high bits of R, G
    and B (the PASCAL VOC colour-map scheme); class 0 is black."""
    palette = []
    for i in range(n):
        rgb, c = [0, 0, 0], i
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        palette.append(tuple(rgb))
    return palette


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


class SegFolder(Dataset):
    """Images and PNG label maps in the ADE20K layout:

        root/images/{training,validation}/<name>.jpg      (any image type; subfolders allowed)
        root/annotations/{training,validation}/<name>.png (same relative path and stem)

    Item i is `transform(image, mask)` with image a tv_tensors.Image (3,H,W) uint8 and mask a
    tv_tensors.Mask (H,W) int64 holding 0..num_classes-1 or 255 (ignore); without a transform,
    that pair itself. A sample that cannot be used comes back as a SkippedSample (see the module
    docstring).

    ADE20K: the defaults (reduce_zero_label, 150 classes, its names and palette). Own data:
    `reduce_zero_label=False` when 0 is a real class, `num_classes`, and `class_names` (a file
    with one name per line, or a list) whose length must be num_classes.
    """

    def __init__(self, root, split: str = "training", transform: Optional[Callable] = None,
                 reduce_zero_label: bool = True, num_classes: Optional[int] = None,
                 class_names: Union[str, Path, Sequence[str], None] = None):
        root = Path(root)
        split = SPLIT_ALIASES.get(split, split)
        layout = f"{root}/images/{split}/<name>.jpg with {root}/annotations/{split}/<name>.png"
        if not root.is_dir():
            raise MambaOutError(f"dataset folder not found: {root}")
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise MambaOutError(f"{root} has no {d.relative_to(root)} folder (expected {layout})")

        names = read_class_names(class_names) if class_names is not None else None
        names_from = f"class names file {class_names}" if isinstance(class_names, (str, Path)) else "class_names"
        if names is not None and not names:
            raise MambaOutError(f"{names_from} holds no names")
        if num_classes is None:
            num_classes = len(names) if names else (len(ADE20K_CLASSES) if reduce_zero_label else None)
        if not num_classes:
            raise MambaOutError(f"{root}: give num_classes (or a class names file) for data "
                                "whose label 0 is a real class")
        if not 1 <= num_classes <= IGNORE_INDEX:
            raise MambaOutError(f"num_classes must be 1..{IGNORE_INDEX} ({IGNORE_INDEX} is the ignore "
                                f"label), got {num_classes}")
        if names is not None and len(names) != num_classes:
            raise MambaOutError(f"{names_from} has {len(names)} names for {num_classes} classes")
        is_ade = names is None and reduce_zero_label and num_classes == len(ADE20K_CLASSES)
        self.classes = list(ADE20K_CLASSES) if is_ade else names or [str(i) for i in range(num_classes)]
        self.palette = list(ADE20K_PALETTE) if is_ade else default_palette(num_classes)
        self.num_classes, self.reduce_zero_label, self.ignore_index = num_classes, reduce_zero_label, IGNORE_INDEX
        self.root, self.split, self.transform = root, split, transform

        self.samples, unpaired = [], []
        for p in sorted(img_dir.rglob("*")):
            if p.suffix.lower() in IMG_EXTENSIONS and p.is_file():
                ann = (ann_dir / p.relative_to(img_dir)).with_suffix(".png")
                if ann.is_file():
                    self.samples.append((str(p), str(ann)))
                else:
                    unpaired.append(p)
        self.scan_skips = SkipCounts({"no annotation": len(unpaired)} if unpaired else {})
        if unpaired:
            log.warning("skipping %d of %d images in %s that have no annotation in %s (e.g. %s)",
                        len(unpaired), len(unpaired) + len(self.samples), img_dir, ann_dir, unpaired[0].name)
        if not self.samples:
            raise MambaOutError(f"no annotated images under {root} (expected {layout})")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        img_path, ann_path = self.samples[i]
        try:
            img = load_image(img_path)
        except READ_ERRORS as e:
            return skip(i, img_path, "unreadable image", _first_line(e))
        try:
            label = load_label_map(ann_path)
        except READ_ERRORS as e:
            return skip(i, ann_path, "unreadable annotation", _first_line(e))
        if label.shape != (img.height, img.width):
            return skip(i, ann_path, "size mismatch", f"annotation {label.shape[1]}x{label.shape[0]}, "
                                                            f"image {img.width}x{img.height}")
        label = torch.from_numpy(label)
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        bad = ((label < 0) | (label >= self.num_classes)) & (label != IGNORE_INDEX)
        if bad.any():
            values = label[bad].unique().tolist()
            return skip(i, ann_path, "label out of range",
                              f"values {values[:5]} not in 0..{self.num_classes - 1} or {IGNORE_INDEX}"
                              + (" after reduce-zero-label" if self.reduce_zero_label else ""))
        image, mask = tv_tensors.Image(F.pil_to_tensor(img)), tv_tensors.Mask(label)
        return self.transform(image, mask) if self.transform else (image, mask)



class DigitsSegmentation(Dataset):
    """An embedded segmentation set for a few-minute CPU run, made from scikit-learn's 8x8
    digits (no download): `size` x `size` RGB canvases holding 1-3 digits at random,
    non-overlapping places and sizes (`digit_px`), on a random background colour with a gentle
    gradient, each digit in a contrasting colour, plus Gaussian noise. Labels: 0 background,
    1 + d where digit d's (bilinearly upscaled) intensity is above half -> 11 classes.

    Digits come from data.DigitsDataset's split (every 5th of each class to val), so val
    canvases hold digits never seen in training. Canvas i is drawn from a generator seeded by
    (seed, split, i): the same canvas every time, whatever the global RNG. Item i is
    `transform(image, mask)` (tv_tensors, as for SegFolder), or that pair without a transform.
    For training, e.g. seg_train_transform(64, scale=(64, 64)).
    """

    classes = ["background"] + [str(d) for d in range(10)]
    num_classes = 11
    reduce_zero_label = False
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", size: int = 64, transform: Optional[Callable] = None,
                 length: Optional[int] = None, digit_px: Tuple[int, int] = (16, 28), seed: int = 0):
        split = {v: k for k, v in SPLIT_ALIASES.items()}.get(split, split)
        if split not in ("train", "val"):
            raise MambaOutError(f"split must be 'train' or 'val', got {split!r}")
        digits = DigitsDataset(split)
        self.digit_images, self.digit_labels = digits.images, np.asarray(digits.targets)
        self.split, self.size, self.transform, self.seed = split, size, transform, seed
        self.length = length if length is not None else (1000 if split == "train" else 200)
        self.digit_px = (min(digit_px[0], size), min(digit_px[1], size))
        self.palette = default_palette(self.num_classes)

    def __len__(self):
        return self.length

    def canvas(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(image (size,size,3) uint8, mask (size,size) int64) of canvas `index`."""
        rng = np.random.default_rng([self.seed, ("train", "val").index(self.split), index])
        image, instances = paste_digits(rng, self.size, self.digit_images, self.digit_labels, self.digit_px, 3)
        mask = np.zeros((self.size, self.size), dtype=np.int64)
        for m, digit in instances:
            mask[m] = 1 + digit
        return image, mask

    def __getitem__(self, i):
        image, mask = self.canvas(i)
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        return self.transform(image, mask) if self.transform else (image, mask)


# ----------------------------------------------------------------------------- transforms
# Values from mmsegmentation's configs/_base_/datasets/ade20k.py (train_pipeline: RandomResize
# scale=(2048, 512) ratio_range=(0.5, 2.0) keep_ratio; RandomCrop crop_size=(512, 512)
# cat_max_ratio=0.75; RandomFlip prob=0.5; PhotoMetricDistortion defaults; test_pipeline:
# Resize scale=(2048, 512) keep_ratio) and its data preprocessor (ImageNet mean/std in RGB,
# pad to the crop size with 0 for the image and 255 for the mask). Behaviour of each op from
# mmseg/datasets/transforms/transforms.py and mmcv's Resize / RandomResize / rescale_size.

def as_tv_tensors(image, mask=None):
    """(tv_tensors.Image uint8 (3,H,W), tv_tensors.Mask int64 (H,W) or None) from PIL images,
    numpy arrays (H,W,3) / (H,W) or tensors."""
    if isinstance(image, Image.Image):
        image = F.pil_to_tensor(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    if mask is not None and not isinstance(mask, tv_tensors.Mask):
        mask = tv_tensors.Mask(torch.as_tensor(np.asarray(mask)).long())
    return image, mask


def resize_mask(mask: tv_tensors.Mask, size: Sequence[int]) -> tv_tensors.Mask:
    """Nearest-neighbour resize that samples each output pixel's centre ("nearest-exact"), so
    the mask stays aligned with a bilinear (align_corners=False) image. Plain "nearest" (and
    OpenCV's INTER_NEAREST, which mmcv uses) samples floor(i * in / out): half a source pixel
    off the image, several pixels at large upscales. Done here rather than by v2's resize,
    which falls back to plain nearest for masks in older torchvision."""
    out = torch.nn.functional.interpolate(mask[None, None].float(), size=list(size), mode="nearest-exact")
    return tv_tensors.wrap(out[0, 0].to(mask.dtype), like=mask)


class RescaleToFit:
    """Resize to fit within `scale` keeping the aspect ratio (bilinear for the image, nearest
    for the mask, see resize_mask). With `ratio_range`, mmseg's RandomResize: scale =
    (int(scale[0] * r), int(scale[1] * r)) with r uniform in ratio_range. Bilinear without
    antialiasing, as cv2's resize in mmcv. `resize_mask=False` leaves the mask at its size
    (evaluation)."""

    def __init__(self, scale: Tuple[int, int] = (2048, 512), ratio_range: Optional[Tuple[float, float]] = None,
                 resize_mask: bool = True):
        self.scale, self.ratio_range, self.resize_mask = tuple(scale), ratio_range, resize_mask

    def __call__(self, image, mask):
        scale = self.scale
        if self.ratio_range is not None:
            r = random.uniform(*self.ratio_range)
            scale = (int(scale[0] * r), int(scale[1] * r))
        size = list(rescale_size(*image.shape[-2:], scale))
        image = F.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        if self.resize_mask and mask is not None:
            mask = resize_mask(mask, size)
        return image, mask

    def __repr__(self):
        return f"{type(self).__name__}(scale={self.scale}, ratio_range={self.ratio_range})"


class RandomCropCatMax:
    """mmseg's RandomCrop: a random crop_size window (the whole side where the image is
    smaller). With cat_max_ratio < 1, up to `tries` windows are checked and the first one in
    which the most frequent class (ignoring `ignore_index`) covers less than cat_max_ratio of
    the labelled pixels, with at least two classes present, is taken; if none passes, a fresh
    window after the last check is taken unchecked."""

    def __init__(self, crop_size, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX, tries: int = 10):
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.cat_max_ratio, self.ignore_index, self.tries = cat_max_ratio, ignore_index, tries

    def _window(self, h: int, w: int) -> Tuple[int, int]:
        return random.randint(0, max(h - self.crop_size[0], 0)), random.randint(0, max(w - self.crop_size[1], 0))

    def _balanced(self, crop: torch.Tensor) -> bool:
        counts = torch.bincount(crop[crop != self.ignore_index].flatten())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, image, mask):
        h, w = image.shape[-2:]
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        top, left = self._window(h, w)
        if self.cat_max_ratio < 1:
            for _ in range(self.tries):
                if self._balanced(mask[top:top + ch, left:left + cw]):
                    break
                top, left = self._window(h, w)
        return F.crop(image, top, left, ch, cw), F.crop(mask, top, left, ch, cw)

    def __repr__(self):
        return f"{type(self).__name__}(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """float RGB (3,H,W) in 0..255 -> HSV in OpenCV's 8-bit ranges: H 0..180, S and V 0..255."""
    r, g, b = rgb.unbind(0)
    v, _ = rgb.max(0)
    c = v - rgb.min(0).values
    s = torch.where(v > 0, c / v.clamp(min=1e-6) * 255, torch.zeros_like(v))
    cd = c.clamp(min=1e-6)
    deg = torch.where(v == r, 60 * (g - b) / cd, torch.where(v == g, 120 + 60 * (b - r) / cd, 240 + 60 * (r - g) / cd))
    deg = torch.where(c > 0, deg % 360, torch.zeros_like(deg))
    return torch.stack([deg / 2, s, v])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of _rgb_to_hsv: channel n of RGB is V - V*S*clamp(min(k, 4 - k), 0, 1) with
    k = (n + H/60) mod 6 for n = 5, 3, 1."""
    h, s, v = hsv[0] * 2, hsv[1] / 255, hsv[2]
    out = []
    for n in (5, 3, 1):
        k = (n + h / 60) % 6
        out.append(v - v * s * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(out)


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion on a uint8 image: brightness (+uniform(-32, 32)), then
    contrast (x uniform(0.5, 1.5)) either here or last (coin flip), saturation (S x
    uniform(0.5, 1.5) in HSV), hue (H + an integer in [-18, 17], numpy's randint(-18, 18), on
    OpenCV's 0..180 hue scale), each applied with probability 0.5; values clipped to 0..255 and
    truncated to uint8 after each step as mmseg does. HSV stays in float between its two
    conversions (OpenCV rounds it to uint8). The mask passes through unchanged."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        self.brightness_delta, self.contrast_range = brightness_delta, tuple(contrast_range)
        self.saturation_range, self.hue_delta = tuple(saturation_range), hue_delta

    @staticmethod
    def _clip_uint8(x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 255).to(torch.uint8)

    def _contrast(self, img: torch.Tensor) -> torch.Tensor:
        if random.randint(0, 1):
            img = self._clip_uint8(img.float() * random.uniform(*self.contrast_range))
        return img

    def __call__(self, image, mask):
        img = image.as_subclass(torch.Tensor)
        if random.randint(0, 1):
            img = self._clip_uint8(img.float() + random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = random.randint(0, 1) == 1
        if contrast_first:
            img = self._contrast(img)
        if random.randint(0, 1):
            hsv = _rgb_to_hsv(img.float())
            hsv[1] = (hsv[1] * random.uniform(*self.saturation_range)).clamp(0, 255)
            img = self._clip_uint8(_hsv_to_rgb(hsv).round())
        if random.randint(0, 1):
            hsv = _rgb_to_hsv(img.float())
            hsv[0] = (hsv[0] + random.randint(-self.hue_delta, self.hue_delta - 1)) % 180
            img = self._clip_uint8(_hsv_to_rgb(hsv).round())
        if not contrast_first:
            img = self._contrast(img)
        return tv_tensors.wrap(img, like=image), mask

    def __repr__(self):
        return (f"{type(self).__name__}(brightness_delta={self.brightness_delta}, contrast_range="
                f"{self.contrast_range}, saturation_range={self.saturation_range}, hue_delta={self.hue_delta})")


class PadTo:
    """Pad bottom and right up to `size` (h, w): `fill` for the image, `mask_fill` for the mask
    (mmseg's SegDataPreProcessor: 0 on the normalised image, 255 on the mask)."""

    def __init__(self, size, fill: float = 0, mask_fill: int = IGNORE_INDEX):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill, self.mask_fill = fill, mask_fill

    def __call__(self, image, mask):
        h, w = image.shape[-2:]
        padding = [0, 0, max(self.size[1] - w, 0), max(self.size[0] - h, 0)]
        if any(padding):
            image, mask = F.pad(image, padding, fill=self.fill), F.pad(mask, padding, fill=self.mask_fill)
        return image, mask

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size}, fill={self.fill}, mask_fill={self.mask_fill})"


def _plain_tensors(image, mask):
    """tv_tensors -> plain tensors (the model and the loss need no metadata)."""
    return image.as_subclass(torch.Tensor), None if mask is None else mask.as_subclass(torch.Tensor)


def _normalize(mean, std):
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def seg_train_transform(crop_size=512, scale: Tuple[int, int] = (2048, 512),
                        ratio_range: Tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                        hflip: float = 0.5, photometric: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """mmseg's ADE20K training pipeline as a joint transform (image, mask) -> (image (3,c,c)
    float normalised, mask (c,c) int64 with 255 where padded): random rescale to fit within
    scale * r, random crop with cat_max_ratio, horizontal flip, photometric distortion,
    normalise, pad to the crop size. Smaller `scale` and `crop_size` suit small images."""
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    return v2.Compose([
        as_tv_tensors,
        RescaleToFit(scale, ratio_range),
        RandomCropCatMax(crop, cat_max_ratio),
        v2.RandomHorizontalFlip(hflip),
        *([PhotoMetricDistortion()] if photometric else []),
        _normalize(mean, std),
        PadTo(crop),
        _plain_tensors,
    ])


class SegEvalTransform:
    """mmseg's ADE20K test pipeline: the image resized to fit within `scale` (keeping its aspect
    ratio; None: left at its size) and normalised; the mask, if given, left at its original
    size, since predictions are resized back to it. Returns (image, mask or None)."""

    def __init__(self, scale: Optional[Tuple[int, int]] = (2048, 512), mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.resize = RescaleToFit(scale, resize_mask=False) if scale is not None else None
        self.normalize = _normalize(mean, std)

    def __call__(self, image, mask=None):
        image, mask = as_tv_tensors(image, mask)
        if self.resize is not None:
            image, _ = self.resize(image, None)
        return _plain_tensors(self.normalize(image), mask)

    def __repr__(self):
        return f"{type(self).__name__}(resize={self.resize}, normalize={self.normalize})"


def seg_eval_transform(scale: Optional[Tuple[int, int]] = (2048, 512), mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The evaluation transform (see SegEvalTransform)."""
    return SegEvalTransform(scale, mean, std)
