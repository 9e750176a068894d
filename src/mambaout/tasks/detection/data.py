"""Instance detection / segmentation data: COCO-format annotation files (COCO 2017 itself or a
user's own set), joint image/box/mask transforms from torchvision.transforms.v2, and an
embedded digits set for few-minute CPU runs whose ground truth is also a COCO object, so the
same COCO evaluation (tasks/detection/metrics.py) runs on it.

Items. `CocoDetection` (train=True) and `DigitsDetection` give `(image, target)`: image a
tv_tensors.Image uint8 (3,H,W); target a dict with boxes (tv_tensors.BoundingBoxes XYXY float
(N,4), pixel-edge coordinates: a box [x1, y1, x2, y2] covers pixel columns x1..x2-1), labels
int64 (N,) in 1..K (0 is the detector's background), masks (tv_tensors.Mask uint8 (N,H,W)),
image_id, iscrowd, area, orig_size (H, W). Category ids map to contiguous labels 1..K in sorted
id order (`cat_ids`, `label_to_cat_id`, `cat_id_to_label`; `classes[label - 1]` is the name;
`num_classes` = K = len(classes), background excluded, as models.create_mask_rcnn counts). With train=False, CocoDetection gives the image and
{"image_id", "orig_size"} only: the ground truth for evaluation is `dataset.coco`.

Who resizes. torchvision's MaskRCNN resizes every image itself (GeneralizedRCNNTransform:
shorter side to min_size, longer side at most max_size, a random min_size per image when it is
a tuple, the last one at eval) and maps its predictions back to the size of the image it was
given. So by default our transforms do NOT resize: `det_train_transform()` only flips and
converts to float, `det_eval_transform()` only converts, and the model's predictions come back
in original image coordinates, ready for COCO evaluation. `detector_resize_kwargs()` gives the
model's min_size/max_size for mmdet's single-scale (1333, 800) or 3x multi-scale (480-800 step
32) schedules. Resizing twice would cost time and sharpness for nothing, and resizing only in
the data would need the model's own resize switched off and the predictions mapped back by
hand. For callers that still want the data side to resize (to ship smaller tensors from the
workers, or a model without its own resize), `min_size=` does it with mmcv's rule (fit
within (max_size, min_size), sides rounded half up); the eval target then carries "size" and
`metrics.outputs_to_original` maps predictions back to "orig_size".

Bad data never stops a run and is never silently wrong.
- A malformed annotation file (not JSON, no "images"/"annotations"/"categories" list, an image
  or category entry of the wrong shape) -> one MambaOutError line naming the file and the fault.
- Single annotations that cannot be used are dropped when the dataset is built, counted by
  reason in `dataset.scan_skips` (a DetSkipCounts) and logged once per reason: "unknown image
  id" (its image is not in the images list), "unknown category", "malformed annotation" (no
  usable bbox, polygon or RLE), and, for training, "degenerate box" (w or h < 1 px after
  clipping to the image). An annotation without a segmentation (a box-only data set) gets its
  box as a polygon, so its mask is its box in training and in the evaluation ground truth (one
  warning). Crowd annotations are left out of training targets (COCO convention, as
  torchvision's detection references) but stay in the evaluation ground truth; images without
  annotations stay in training as negatives (empty boxes (0,4), masks (0,H,W)).
- A sample that cannot be used (image file missing or unreadable, image size differing from the
  JSON's, an RLE string that does not decode) comes back as a segmentation-style
  `SkippedSample` with the reason; a warning is logged. `collate_det` drops those and returns a DetSkipCounts with
  every batch; boxes the transforms made degenerate (only possible when the data side resizes)
  are dropped by v2.SanitizeBoundingBoxes and counted there as "box degenerate after resize".
  Sum the counts per epoch (`+`, `to_tensor` for a DDP all-reduce) and print them; note that
  `images_skipped()` counts images and `annotations_dropped()` counts annotations.

Randomness: the training transforms draw from python's `random` (multi-scale choice) and
torch's global RNG (flip) only, which `SeededSamples` seeds per (seed, epoch, index); a digits
canvas comes from a generator seeded by (seed, split, index). (With the model resizing, the 3x
schedule's multi-scale choice is the model's: torch's RNG in the training process, reproducible
from its RNG state but not per sample; `multiscale=` here makes it per sample.)
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ...errors import MambaOutError, first_line
from ...data.canvas import paste_digits
from ...data.datasets import READ_ERRORS, DigitsDataset, load_image
from ...data.skips import SkipCounts, skip, split_batch
from ...data.transforms import rescale_size

log = logging.getLogger("mambaout")

IMAGE_REASONS = ("missing image", "unreadable image", "size mismatch", "unreadable annotation")
ANNOTATION_REASONS = ("unknown image id", "unknown category", "malformed annotation", "degenerate box",
                      "box degenerate after resize")
DET_SKIP_REASONS = IMAGE_REASONS + ANNOTATION_REASONS


# ----------------------------------------------------------------------------- skip counts

class DetSkipCounts(SkipCounts):
    """Skipped detection samples (DET_SKIP_REASONS): images skipped (IMAGE_REASONS) and
    annotations dropped (ANNOTATION_REASONS) in one Counter."""

    REASONS = DET_SKIP_REASONS

    def images_skipped(self) -> int:
        return sum(self[r] for r in IMAGE_REASONS)

    def annotations_dropped(self) -> int:
        return sum(self[r] for r in ANNOTATION_REASONS)


def collate_det(batch):
    """(list of images, list of targets, DetSkipCounts), lists because detection images keep
    their own sizes; SkippedSample markers (and a bare None, counted as an unreadable image)
    are dropped and counted, as are the boxes the transforms dropped ("dropped_boxes" in a
    target, removed here). Returns the batch's first SampleFailure instead, if any (the caller
    raises DataPipelineError)."""
    skips = DetSkipCounts()
    failure, good = split_batch(batch, skips)
    if failure is not None:
        return failure
    images, targets = [], []
    for image, target in good:
        if isinstance(target, dict) and "dropped_boxes" in target:
            target = dict(target)
            dropped = int(target.pop("dropped_boxes"))
            if dropped:
                skips["box degenerate after resize"] += dropped
        images.append(image)
        targets.append(target)
    return images, targets, skips


# ----------------------------------------------------------------------------- annotation file

class CocoLayout(NamedTuple):
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path


def coco_layout(data_dir) -> CocoLayout:
    """The four paths of the COCO 2017 layout: DIR/annotations/instances_{train,val}2017.json
    and DIR/{train,val}2017/. Anything missing -> one MambaOutError line naming it. Other
    layouts: give CocoDetection the (annotation file, image folder) pairs directly."""
    root = Path(data_dir)
    if not root.is_dir():
        raise MambaOutError(f"dataset folder not found: {root}")
    paths = CocoLayout(root / "annotations" / "instances_train2017.json", root / "train2017",
                       root / "annotations" / "instances_val2017.json", root / "val2017")
    missing = [f"{p.relative_to(root)}{'/' if p.suffix == '' else ''}" for p in paths
               if not (p.is_file() if p.suffix else p.is_dir())]
    if missing:
        raise MambaOutError(f"{root} is not a COCO 2017 folder: missing {', '.join(missing)} (expected "
                            f"annotations/instances_{{train,val}}2017.json and {{train,val}}2017/; for "
                            "another layout give the annotation file and image folder)")
    return paths


def coco_from_dict(dataset: dict) -> COCO:
    """A pycocotools COCO object over an in-memory COCO dict (without its index prints)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise MambaOutError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MambaOutError(f"{ann_file}: not a JSON file ({first_line(e, 120)})") from None
    except OSError as e:
        raise MambaOutError(f"cannot read annotation file {ann_file}: {e.strerror or e}") from None
    return data


def _check_structure(data, ann_file: Path):
    """Raise one MambaOutError line for a file that is not a COCO instances file."""
    def bad(what):
        raise MambaOutError(f"{ann_file}: not a COCO annotation file ({what})")

    if not isinstance(data, dict):
        bad(f"the top level is a JSON {type(data).__name__}, expected an object with "
            "'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            bad(f"no '{key}' list")
        if not isinstance(data[key], list):
            bad(f"'{key}' is a JSON {type(data[key]).__name__}, expected a list")
    if not data["categories"]:
        bad("'categories' is empty")
    seen = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            bad(f"images[{i}] is a JSON {type(im).__name__}, expected an object")
        for key, ok, want in (("id", _is_int, "an integer"), ("file_name", lambda v: isinstance(v, str) and v,
                                                                 "a file name"),
                              ("height", lambda v: _is_int(v) and v > 0, "a positive integer"),
                              ("width", lambda v: _is_int(v) and v > 0, "a positive integer")):
            if key not in im:
                bad(f"images[{i}] has no '{key}'")
            if not ok(im[key]):
                bad(f"images[{i}] '{key}' is {im[key]!r}, expected {want}")
        if im["id"] in seen:
            bad(f"image id {im['id']} appears twice in 'images'")
        seen.add(im["id"])
    seen = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict):
            bad(f"categories[{i}] is a JSON {type(c).__name__}, expected an object")
        if not _is_int(c.get("id")):
            bad(f"categories[{i}] has no integer 'id'")
        if c["id"] in seen:
            bad(f"category id {c['id']} appears twice in 'categories'")
        seen.add(c["id"])


def _check_segmentation(ann: dict, h: int, w: int) -> bool:
    """Polygons: those with >= 3 points are kept (in place), and must hold numbers only; an RLE
    must have the image's size (and an uncompressed one run lengths adding up to it)."""
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if any(type(v) not in (int, float) for p in polys for v in p):
            return False
        if not polys:
            return False
        ann["segmentation"] = polys
        return True
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and list(size) == [h, w]):
            return False
        if isinstance(counts, str):
            return bool(counts)
        if isinstance(counts, list):  # uncompressed RLE: run lengths that add up to h * w
            return all(_is_int(c) and c >= 0 for c in counts) and sum(counts) == h * w
    return False


def _segm_area(segm, h: int, w: int) -> float:
    if isinstance(segm, list):
        return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segm, h, w))))
    if isinstance(segm["counts"], list):
        segm = mask_utils.frPyObjects(segm, h, w)
    return float(mask_utils.area(segm))


def _clip_box(bbox, h: int, w: int) -> Tuple[float, float, float, float]:
    x, y, bw, bh = (float(v) for v in bbox)
    return max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))


def ann_to_mask(segm, h: int, w: int) -> np.ndarray:
    """An (h, w) uint8 mask from a COCO segmentation: polygons, compressed RLE (counts a str
    or bytes) or uncompressed RLE (counts a list), via pycocotools.mask."""
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    mask = mask_utils.decode(rle)
    if mask.shape != (h, w) or mask.max(initial=0) > 1:
        raise ValueError(f"RLE does not describe a {w}x{h} binary mask")
    return mask


class _Categories:
    """Category ids <-> contiguous labels 1..K (sorted id order) and names."""

    def _set_categories(self, categories: Sequence[dict]):
        cats = sorted(categories, key=lambda c: c["id"])
        self.cat_ids: List[int] = [c["id"] for c in cats]
        self.label_to_cat_id: Dict[int, int] = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.cat_id_to_label: Dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.classes: List[str] = [str(c.get("name", c["id"])) for c in cats]   # classes[label - 1]
        self.num_classes = len(self.classes)                                      # background excluded


class CocoDetection(_Categories, Dataset):
    """A COCO instances file (read with pycocotools) and its image folder: item i is
    `transform(image, target)` (see the module docstring for both), or that pair without a
    transform; a SkippedSample when the sample cannot be used. `coco` is the pycocotools COCO
    object of the usable annotations (crowd included), for evaluation; `scan_skips` the
    annotations dropped while building; `ids` the image ids in item order (sorted).
    """

    def __init__(self, images_dir, ann_file, transform: Optional[Callable] = None, train: bool = True):
        images_dir, ann_file = Path(images_dir), Path(ann_file)
        data = _read_json(ann_file)
        _check_structure(data, ann_file)
        if not images_dir.is_dir():
            raise MambaOutError(f"image folder not found: {images_dir} (for {ann_file.name})")
        self.images_dir, self.ann_file, self.transform, self.train = images_dir, ann_file, transform, train
        self._set_categories(data["categories"])

        images = {im["id"]: im for im in data["images"]}
        skips, examples = DetSkipCounts(), {}
        kept, per_image = [], defaultdict(list)
        used_ids, renumber, no_mask = set(), [], 0

        def drop(reason, detail):
            skips[reason] += 1
            examples.setdefault(reason, detail)

        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                drop("malformed annotation", f"annotations[{i}] is not an object")
                continue
            where = f"annotation {ann.get('id', f'#{i}')}"
            im = images.get(ann.get("image_id")) if _is_int(ann.get("image_id")) else None
            if im is None:
                drop("unknown image id", f"{where} (image id {ann.get('image_id')!r})")
                continue
            if not _is_int(ann.get("category_id")) or ann["category_id"] not in self.cat_id_to_label:
                drop("unknown category", f"{where} (category id {ann.get('category_id')!r})")
                continue
            bbox, crowd = ann.get("bbox"), ann.get("iscrowd", 0)
            h, w = im["height"], im["width"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_num, bbox))
                    and bbox[2] >= 0 and bbox[3] >= 0) or not (_is_int(crowd) or isinstance(crowd, bool)):
                drop("malformed annotation", f"{where} (bbox {bbox!r})")
                continue
            if ann.get("segmentation") in (None, []):   # a box-only annotation: its box is its mask
                x, y, bw, bh = bbox
                ann["segmentation"] = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
                no_mask += 1
            if not _check_segmentation(ann, h, w):
                drop("malformed annotation", f"{where} (segmentation not polygons or an RLE of the image's size)")
                continue
            if not _is_num(ann.get("area")):
                try:
                    ann["area"] = _segm_area(ann["segmentation"], h, w)
                except ValueError as e:  # an RLE string pycocotools cannot read
                    drop("malformed annotation", f"{where} ({first_line(e, 120)})")
                    continue
            ann["iscrowd"] = int(bool(crowd))
            if not _is_int(ann.get("id")) or ann["id"] in used_ids:
                renumber.append(ann)
            else:
                used_ids.add(ann["id"])
            kept.append(ann)
            if train:
                if ann["iscrowd"]:
                    continue
                x1, y1, x2, y2 = _clip_box(bbox, h, w)
                if x2 - x1 < 1 or y2 - y1 < 1:
                    drop("degenerate box", f"{where} (bbox {bbox} in a {w}x{h} image)")
                    continue
            per_image[im["id"]].append(ann)
        next_id = max(used_ids, default=0) + 1
        for ann in renumber:  # COCO's index needs unique annotation ids
            ann["id"], next_id = next_id, next_id + 1
        if renumber:
            log.warning("%s: %d annotations without a unique id got new ids", ann_file, len(renumber))
        if no_mask:
            log.warning("%s: %d annotations have no segmentation: their box is their mask (also in evaluation)",
                        ann_file, no_mask)
        for reason, n in skips.items():
            log.warning("%s: dropped %d annotation(s): %s (e.g. %s)", ann_file, n, reason, examples[reason])
        data["annotations"] = kept
        self.scan_skips = skips
        self._images = images
        self._anns = dict(per_image)
        self.ids: List[int] = sorted(images)
        self.samples = [(str(images_dir / images[i]["file_name"]), i) for i in self.ids]
        self.coco = coco_from_dict(data)

    def __len__(self):
        return len(self.ids)


    def __getitem__(self, index):
        path, image_id = self.samples[index]
        info = self._images[image_id]
        h, w = info["height"], info["width"]
        try:
            img = load_image(path)
        except FileNotFoundError:
            return skip(index, path, "missing image", "no such file")
        except READ_ERRORS as e:
            return skip(index, path, "unreadable image", first_line(e, 120))
        if (img.height, img.width) != (h, w):
            return skip(index, path, "size mismatch", f"image {img.width}x{img.height}, "
                                                            f"annotation file says {w}x{h}")
        image = tv_tensors.Image(F.pil_to_tensor(img))
        if not self.train:
            target = {"image_id": image_id, "orig_size": (h, w)}
            return self.transform(image, target) if self.transform else (image, target)
        anns = self._anns.get(image_id, [])
        boxes = [_clip_box(a["bbox"], h, w) for a in anns]
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        for k, a in enumerate(anns):
            try:
                masks[k] = ann_to_mask(a["segmentation"], h, w)
            except Exception as e:  # a corrupt RLE string
                return skip(index, str(self.ann_file), "unreadable annotation",
                                  f"annotation {a['id']} of {Path(path).name}: {first_line(e, 120)}")
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                              format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": image_id,
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
            "orig_size": (h, w),
        }
        return self.transform(image, target) if self.transform else (image, target)


# ----------------------------------------------------------------------------- embedded digits

class DigitsDetection(_Categories, Dataset):
    """An embedded instance set for a few-minute CPU run, made from scikit-learn's 8x8 digits (no
    download): `size` x `size` RGB canvases with 1-4 digits at random, non-overlapping places
    and sizes (`digit_px`), on a random background colour with a gentle gradient, each digit in
    a contrasting colour, plus Gaussian noise. Each digit is one instance of category 1 + d
    (names "0".."9", label == category id): its mask is where its (bilinearly upscaled) ink is
    above half, its box the tight box of that mask.

    Digits come from data.DigitsDataset's split (every 5th of each class to val), so val
    canvases hold digits never seen in training. Canvas i is drawn from a generator seeded by
    (seed, split, i); its image id is i + 1. Item i is `transform(image, target)` with the
    full target of CocoDetection(train=True) (det_eval_transform keeps only what evaluation
    needs), or that pair without a transform. `to_coco()` is the ground truth as a COCO dict,
    `coco` the pycocotools object over it.
    """

    def __init__(self, split: str = "train", size: int = 96, transform: Optional[Callable] = None,
                 length: Optional[int] = None, digit_px: Tuple[int, int] = (20, 40), seed: int = 0):
        split = {"training": "train", "validation": "val"}.get(split, split)
        if split not in ("train", "val"):
            raise MambaOutError(f"split must be 'train' or 'val', got {split!r}")
        digits = DigitsDataset(split)
        self.digit_images, self.digit_labels = digits.images, np.asarray(digits.targets)
        self.split, self.size, self.transform, self.seed = split, size, transform, seed
        self.length = length if length is not None else (600 if split == "train" else 150)
        self.digit_px = (min(digit_px[0], size), min(digit_px[1], size))
        self._set_categories([{"id": d + 1, "name": str(d)} for d in range(10)])
        self.scan_skips = DetSkipCounts()
        self.ids = [i + 1 for i in range(self.length)]
        self._coco = None

    def __len__(self):
        return self.length

    def canvas(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (size,size,3) uint8, masks (N,size,size) uint8, labels (N,) int64 in 1..10)."""
        rng = np.random.default_rng([self.seed, ("train", "val").index(self.split), index])
        n = self.size
        image, instances = paste_digits(rng, n, self.digit_images, self.digit_labels, self.digit_px, 4)
        masks = np.stack([m for m, _ in instances]).astype(np.uint8) if instances else np.zeros((0, n, n), np.uint8)
        return image, masks, np.asarray([1 + d for _, d in instances], dtype=np.int64)

    @staticmethod
    def tight_boxes(masks: np.ndarray) -> np.ndarray:
        """(N, 4) float32 XYXY pixel-edge boxes around each mask's pixels."""
        boxes = np.zeros((len(masks), 4), dtype=np.float32)
        for k, m in enumerate(masks):
            ys, xs = np.nonzero(m)
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return boxes

    def __getitem__(self, index):
        image, masks, labels = self.canvas(index)
        n = self.size
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(self.tight_boxes(masks)), format="XYXY",
                                              canvas_size=(n, n)),
            "labels": torch.from_numpy(labels),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": index + 1,
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
            "area": torch.from_numpy(masks.reshape(len(masks), -1).sum(1).astype(np.float32)),
            "orig_size": (n, n),
        }
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        return self.transform(image, target) if self.transform else (image, target)

    def to_coco(self) -> dict:
        """The ground truth of every canvas as a COCO instances dict (masks as compressed RLE)."""
        n = self.size
        images, anns = [], []
        for index in range(self.length):
            _, masks, labels = self.canvas(index)
            images.append({"id": index + 1, "file_name": f"{self.split}/{index:06d}.png", "height": n, "width": n})
            if not len(masks):
                continue
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
            for rle, label in zip(rles, labels.tolist()):
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append({"id": len(anns) + 1, "image_id": index + 1, "category_id": label,
                             "segmentation": rle, "area": float(mask_utils.area(rle)),
                             "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
        cats = [{"id": c, "name": self.classes[label - 1]} for label, c in self.label_to_cat_id.items()]
        return {"images": images, "annotations": anns, "categories": cats}

    @property
    def coco(self) -> COCO:
        if self._coco is None:
            self._coco = coco_from_dict(self.to_coco())
        return self._coco


# ----------------------------------------------------------------------------- transforms
# mmdet's Mask R-CNN COCO pipelines: train Resize(scale=(1333, 800), keep_ratio=True),
# RandomFlip(0.5) (3x schedule: RandomChoiceResize of (1333, 480..800 step 32)); test
# Resize(scale=(1333, 800), keep_ratio=True). Normalisation is the model's (torchvision's
# GeneralizedRCNNTransform), so images leave here as float in [0, 1].

def multiscale_sizes(multiscale: Tuple[int, int], step: int = 32) -> Tuple[int, ...]:
    """(480, 800) -> (480, 512, ..., 800): mmdet's multi-scale shorter sides."""
    lo, hi = int(multiscale[0]), int(multiscale[1])
    if not 0 < lo <= hi:
        raise MambaOutError(f"multiscale must be (low, high) shorter sides with 0 < low <= high, got {multiscale}")
    sizes = list(range(lo, hi + 1, step))
    return tuple(sizes if sizes[-1] == hi else sizes + [hi])


def detector_resize_kwargs(min_size: int = 800, max_size: int = 1333,
                           multiscale: Optional[Tuple[int, int]] = None) -> dict:
    """min_size / max_size for torchvision's MaskRCNN (its GeneralizedRCNNTransform does the
    resizing, see the module docstring): mmdet's 1x schedule (800, 1333), or with
    multiscale=(480, 800) a random shorter side from 480, 512, ..., 800 per training image
    (the 3x schedule) and 800 at evaluation (torchvision takes the last min_size)."""
    sizes = multiscale_sizes(multiscale) if multiscale is not None else int(min_size)
    return {"min_size": sizes, "max_size": int(max_size)}


class ResizeShorterSide(v2.Transform):
    """Resize image, boxes and masks together so that the image fits within (max_size,
    min_size) keeping its aspect ratio (mmcv's rescale_size: shorter side -> min_size unless
    the longer would pass max_size), min_size drawn with python's random.choice from
    `min_sizes`. Bilinear without antialiasing for the image (as cv2 in mmdet and torchvision's
    detection transform), nearest-exact for masks."""

    def __init__(self, min_sizes: Sequence[int] = (800,), max_size: int = 1333):
        super().__init__()
        self.min_sizes, self.max_size = tuple(int(s) for s in min_sizes), int(max_size)

    def make_params(self, flat_inputs):
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        h, w = image.shape[-2:]
        short = random.choice(self.min_sizes) if len(self.min_sizes) > 1 else self.min_sizes[0]
        return {"size": list(rescale_size(h, w, (self.max_size, short)))}

    def transform(self, inpt, params):
        mode = (v2.InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask)
                else v2.InterpolationMode.BILINEAR)
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=mode, antialias=False)


def _sanitize_labels(inputs):
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "iscrowd", "area") if k in target)


class CountedSanitizeBoxes(v2.SanitizeBoundingBoxes):
    """v2.SanitizeBoundingBoxes (boxes under 1 px a side or 1 px^2, with their labels, masks,
    iscrowd and area) that also records how many it removed in target["dropped_boxes"], which
    collate_det counts as "box degenerate after resize"."""

    def __init__(self, min_size: float = 1.0):
        super().__init__(min_size=min_size, labels_getter=_sanitize_labels)

    def forward(self, image, target):
        before = len(target["boxes"])
        image, target = super().forward(image, target)
        target = dict(target)
        target["dropped_boxes"] = target.get("dropped_boxes", 0) + before - len(target["boxes"])
        return image, target


def _train_output(image, target):
    """tv_tensors -> plain tensors: (image float (3,h,w), {boxes, labels, masks uint8,
    image_id, orig_size, dropped_boxes})."""
    out = {"boxes": target["boxes"].as_subclass(torch.Tensor).float(),
           "labels": target["labels"].as_subclass(torch.Tensor).long(),
           "masks": target["masks"].as_subclass(torch.Tensor).to(torch.uint8),
           "image_id": target["image_id"], "orig_size": tuple(target["orig_size"]),
           "dropped_boxes": target.get("dropped_boxes", 0)}
    return image.as_subclass(torch.Tensor), out


def det_train_transform(min_size: Optional[int] = None, max_size: int = 1333, hflip: float = 0.5,
                        multiscale: Optional[Tuple[int, int]] = None):
    """The training joint transform (image, target) -> (image float (3,h,w) in [0,1], target
    with plain tensors: boxes (N,4) float XYXY, labels (N,) int64, masks (N,h,w) uint8,
    image_id, orig_size, dropped_boxes). Horizontal flip with probability `hflip`. By default
    no resize (the model resizes: build it with detector_resize_kwargs); with min_size (or
    multiscale=(480, 800): a random shorter side from 480, 512, ..., 800) the image is resized
    here as mmdet's Resize(scale=(max_size, min_size), keep_ratio=True), and boxes that became
    degenerate are dropped and counted."""
    steps: list = []
    if multiscale is not None or min_size is not None:
        sizes = multiscale_sizes(multiscale) if multiscale is not None else (int(min_size),)
        steps.append(ResizeShorterSide(sizes, max_size))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps += [v2.ToDtype(torch.float32, scale=True), CountedSanitizeBoxes(), _train_output]
    return v2.Compose(steps)


class DetEvalTransform:
    """The evaluation transform: (image, target) -> (image float (3,h,w) in [0,1],
    {"image_id", "orig_size", "size"}); extra target keys (a training target's boxes, masks)
    are left out, since evaluation reads the ground truth from the COCO object. By default no
    resize (the model resizes and answers at the original size); with min_size the image is
    resized as for training and "size" is its new size (map predictions back with
    metrics.outputs_to_original)."""

    def __init__(self, min_size: Optional[int] = None, max_size: int = 1333):
        self.resize = ResizeShorterSide((min_size,), max_size) if min_size is not None else None
        self.to_float = v2.ToDtype(torch.float32, scale=True)

    def __call__(self, image, target=None):
        if not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")) if isinstance(image, Image.Image)
                                     else image)
        target = target or {}
        orig = tuple(target.get("orig_size", image.shape[-2:]))
        if self.resize is not None:
            image = self.resize(image)
        image = self.to_float(image).as_subclass(torch.Tensor)
        return image, {"image_id": target.get("image_id"), "orig_size": (int(orig[0]), int(orig[1])),
                       "size": tuple(image.shape[-2:])}

    def __repr__(self):
        return f"{type(self).__name__}(resize={self.resize!r})"


def det_eval_transform(min_size: Optional[int] = None, max_size: int = 1333) -> DetEvalTransform:
    """The evaluation transform (see DetEvalTransform)."""
    return DetEvalTransform(min_size, max_size)
