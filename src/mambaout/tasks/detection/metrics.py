"""COCO detection / instance segmentation evaluation, as pure functions: torchvision detector
outputs -> COCO results, COCOeval (pycocotools) box and mask AP, gathering results across DDP
processes, and writing them as a JSON file that `COCO.loadRes` reads back.

Results are in the dataset's own category ids (e.g. COCO's 1..90 with gaps), boxes in xywh
and masks as compressed RLE whose `counts` is a str, so the list is JSON-serialisable and what
COCO's evaluation server and other tools expect. Predictions must be in original image
coordinates: torchvision's detectors answer at the size of the image they were given, which is
the original size with the data transforms of data.py (see its docstring); otherwise map
them back with `outputs_to_original` first.

Metrics follow COCOeval.summarize: AP (IoU .50:.95), AP50, AP75, APs, APm, APl at 100
detections per image, in percent; a metric with no ground truth in its range (COCOeval's -1,
e.g. APl on small images) is NaN; no results at all give zeros.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from ...errors import MambaOutError
from ...utils import atomic_write

log = logging.getLogger("mambaout")

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ----------------------------------------------------------------------------- predictions

def outputs_to_original(output: dict, size: Sequence[int], orig_size: Sequence[int]) -> dict:
    """One detector output predicted on an image resized from orig_size (H, W) to size (h, w),
    mapped back: boxes scaled, masks (N,1,h,w) probabilities resized bilinearly (torchvision's
    paste is already at the given size, so this only undoes a data-side resize)."""
    (h, w), (oh, ow) = (int(s) for s in size), (int(s) for s in orig_size)
    if (h, w) == (oh, ow):
        return output
    out = dict(output)
    if "boxes" in output:
        scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float32,
                             device=output["boxes"].device)
        out["boxes"] = output["boxes"].float() * scale
    if "masks" in output and len(output["masks"]):
        m = output["masks"]
        m = m[:, None] if m.dim() == 3 else m
        out["masks"] = F.interpolate(m.float(), size=(oh, ow), mode="bilinear", align_corners=False)
    return out


def predictions_to_coco(outputs: Sequence[dict], image_ids: Sequence[int], label_to_cat_id: Mapping[int, int],
                        mask_threshold: float = 0.5) -> List[dict]:
    """COCO results from torchvision detector outputs (one dict per image: boxes (N,4) XYXY in
    original image coordinates, labels (N,) contiguous 1..K, scores (N,), optionally masks
    (N,1,H,W) or (N,H,W) probabilities): one dict per detection with image_id, category_id
    (label_to_cat_id[label], the dataset's own id), bbox [x, y, w, h], score, and, with masks,
    segmentation (compressed RLE of mask > mask_threshold, counts as str). A label the mapping
    does not know is the user's error (a model trained on other categories)."""
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    if not isinstance(label_to_cat_id, Mapping):
        raise TypeError("label_to_cat_id must map label -> category id (dataset.label_to_cat_id, a dict), "
                        f"got a {type(label_to_cat_id).__name__}")
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = _np(output["boxes"]).astype(np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        scores = _np(output["scores"]).astype(np.float64).tolist()
        labels = _np(output["labels"]).astype(np.int64).tolist()
        unknown = sorted(set(labels) - set(label_to_cat_id))
        if unknown:
            raise MambaOutError(f"the model predicts label(s) {unknown[:5]} but the dataset has labels "
                                f"{min(label_to_cat_id)}..{max(label_to_cat_id)}: was it trained on other categories?")
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        rles = None
        if output.get("masks") is not None:
            m = output["masks"]
            m = m[:, 0] if m.dim() == 4 else m
            binary = (m.float() > mask_threshold).to(torch.uint8).cpu().numpy()
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for k in range(len(boxes)):
            r = {"image_id": int(image_id), "category_id": int(label_to_cat_id[labels[k]]),
                 "bbox": [float(v) for v in xywh[k]], "score": float(scores[k])}
            if rles is not None:
                rle = rles[k]
                r["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            results.append(r)
    return results


# ----------------------------------------------------------------------------- evaluation

def _silently(fn, *args):
    """fn(*args) with its prints captured; the captured text goes to the debug log."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args)
    if buf.getvalue().strip():
        log.debug("%s", buf.getvalue().rstrip())
    return out


def _check_results(coco_gt, results: Sequence[dict]):
    images, cats = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    bad_images = sorted({r["image_id"] for r in results} - images)
    if bad_images:
        raise MambaOutError(f"{len(bad_images)} result image id(s) are not in the ground truth "
                            f"(e.g. {bad_images[:3]}): results of another dataset?")
    bad_cats = sorted({r["category_id"] for r in results} - cats)
    if bad_cats:
        raise MambaOutError(f"result category id(s) {bad_cats[:5]} are not in the ground truth's categories: "
                            "labels not mapped back to the dataset's category ids?")


def coco_evaluate(coco_gt, results: Sequence[dict], iou_types: Iterable[str] = IOU_TYPES,
                  image_ids: Optional[Iterable[int]] = None) -> Dict[str, Dict[str, float]]:
    """{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}} in percent, from
    pycocotools' COCOeval of `results` (predictions_to_coco's format) against `coco_gt` (a
    pycocotools COCO object, e.g. dataset.coco). `image_ids`: evaluate these images only (the
    ones actually run, e.g. when some were skipped; default every ground-truth image). An image
    without results still counts: its objects are misses. "segm" uses the results that carry a
    segmentation. Empty results -> zeros."""
    iou_types = tuple(iou_types)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"iou type must be one of {IOU_TYPES}, got {t!r}")
    results = list(results)
    _check_results(coco_gt, results)
    out = {}
    for iou_type in iou_types:
        # COCO.loadRes takes the box branch whenever "bbox" is present, which would set a mask
        # result's area to its box's: give each evaluation only its own kind of geometry.
        if iou_type == "segm":
            dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
        else:
            dets = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        if not dets:
            out[iou_type] = {m: 0.0 for m in METRICS}
            continue
        coco_dt = _silently(coco_gt.loadRes, dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted({int(i) for i in image_ids})
        _silently(ev.evaluate)
        _silently(ev.accumulate)
        _silently(ev.summarize)
        out[iou_type] = {m: (float("nan") if s < 0 else float(s) * 100) for m, s in zip(METRICS, ev.stats[:6])}
    return out


# ----------------------------------------------------------------------------- DDP, files

def _process_group_active(dist_obj) -> bool:
    return (dist_obj is not None and getattr(dist_obj, "world", 1) > 1 and torch.distributed.is_available()
            and torch.distributed.is_initialized())


def gather_results(results: Sequence[dict], dist_obj=None) -> List[dict]:
    """Every process's results on every process (torch.distributed.all_gather_object), each
    image counted once: an image's results are taken from the lowest rank that has any for it
    (an EvalShardSampler gives each image to one rank; this guards against a padding sampler).
    `dist_obj`: mambaout.distributed.Dist (or None); without a process group, the results
    themselves."""
    if not _process_group_active(dist_obj):
        return list(results)
    parts: List[Optional[list]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, list(results))
    owner, merged = {}, []
    for rank, part in enumerate(parts):
        for r in part or ():
            if owner.setdefault(r["image_id"], rank) == rank:
                merged.append(r)
    return merged


def gather_image_ids(image_ids: Iterable[int], dist_obj=None) -> List[int]:
    """The sorted union of the image ids each process evaluated (for coco_evaluate's
    image_ids, so that images without any detection still count)."""
    ids = sorted({int(i) for i in image_ids})
    if not _process_group_active(dist_obj):
        return ids
    parts: List[Optional[list]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, ids)
    return sorted({i for part in parts for i in part or ()})


def write_results(results: Sequence[dict], path):
    """Write the results as a JSON list, atomically (a crash never leaves half a file); the
    file loads with `coco_gt.loadRes(str(path))`. Returns the path."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(list(results), f)
    return atomic_write(path, write)
