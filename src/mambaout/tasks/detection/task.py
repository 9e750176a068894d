"""Object detection and instance segmentation as a task of the training engine: COCO-format data
(or the embedded digit canvases), Mask R-CNN on a MambaOut backbone (torchvision's detector),
its own loss dict, COCO box / mask AP with pycocotools; plus the library functions behind
`mambaout detect eval` and `mambaout detect predict`."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ...engine import checkpoint as ckpt
from ...data import predict_to_folder
from .data import (CocoDetection, DigitsDetection, coco_layout, collate_det, det_eval_transform,
                         det_train_transform, detector_resize_kwargs)
from ...data.loader import checked_batches, eval_loader
from ...distributed import Dist, all_reduce_sum, cleanup, setup
from ...engine import RunOptions, TrainResult, fit
from ...utils import absolute, resolve_device
from ...utils import amp_dtype as to_amp_dtype
from ...errors import MambaOutError
from ...models import SEGMENTATION_VARIANTS, create_model, get_variant
from ...models.detection_variants import DETECTION_VARIANTS
from .recipe import DetRecipe
from ...utils import atomic_write
from .metrics import coco_evaluate, gather_image_ids, gather_results, predictions_to_coco, write_results

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DIGITS_CANVASES = (240, 60)   # embedded default: train / val canvases (a few CPU minutes)


def det_digits_recipe() -> DetRecipe:
    """The embedded default (no --data): 96x96 canvases of scikit-learn digits, one instance
    per digit (10 categories), Mask R-CNN on Femto trained from scratch for a few CPU minutes:
    images kept at 96 px, 64 RoIs and 300 proposals per image (the RoI heads dominate a CPU step
    at torchvision's 512 / 2000), a higher lr than COCO's 1e-4 because nothing is pretrained."""
    return replace(DetRecipe(), model="mask_rcnn_mambaout_femto", epochs=4, lr_steps=(3,), batch_size=4,
                   lr=1e-3, warmup_iters=50, min_size=96, max_size=96, rois_per_image=64, proposals=300,
                   drop_path=0.0)


class DetectionTask:
    name = "detection"
    command = "detect train"
    score_key = "bbox_AP"
    metric_keys = ("bbox_AP", "segm_AP")
    per_epoch = True

    def __init__(self, recipe: DetRecipe, data: Optional[str] = None, train_ann=None, train_images=None,
                 val_ann=None, val_images=None):
        self.recipe, self.data = recipe, data
        self.paths = dict(train_ann=train_ann, train_images=train_images, val_ann=val_ann, val_images=val_images)
        self.given = dict(self.paths)          # as given (build_data fills the others from --data)
        self._val_loader = None

    def check(self):
        r = self.recipe
        if r.model not in DETECTION_VARIANTS:
            if r.model not in SEGMENTATION_VARIANTS:
                get_variant(r.model)    # raises the one-line unknown-model error with close matches
            raise MambaOutError(f"{r.model} is not a detection model; detection models are "
                                f"{', '.join(DETECTION_VARIANTS)}")
        if r.epochs <= 0 or r.min_size <= 0 or r.max_size < r.min_size or r.rois_per_image <= 0 or r.proposals <= 0:
            raise MambaOutError("--epochs, --min-size, --rois-per-image and --proposals must be positive "
                                "and --max-size at least --min-size")
        if list(r.lr_steps) != sorted(r.lr_steps):
            raise MambaOutError(f"lr steps must be increasing epochs, got {r.lr_steps}")
        given = [k for k, v in self.paths.items() if v is not None]
        if given and len(given) != 4 and self.data is None:
            raise MambaOutError("give all of --train-ann, --train-images, --val-ann, --val-images (or --data DIR)")

    # ---- data -----------------------------------------------------------------------------------
    def build_data(self):
        # the images are resized by the detector itself (torchvision's GeneralizedRCNNTransform,
        # build_detector), which also maps its predictions back to the original image
        train_tf, eval_tf = det_train_transform(hflip=self.recipe.hflip), det_eval_transform()
        if self.data is None and self.paths["train_ann"] is None:
            self.train_set = DigitsDetection("train", transform=train_tf, length=DIGITS_CANVASES[0])
            self.val_set = DigitsDetection("val", transform=eval_tf, length=DIGITS_CANVASES[1])
        else:
            p = dict(self.paths)
            if self.data is not None:
                layout = coco_layout(self.data)._asdict()
                p = {k: p[k] if p[k] is not None else layout[k] for k in p}
            self.train_set = CocoDetection(p["train_images"], p["train_ann"], train_tf, train=True)
            self.val_set = CocoDetection(p["val_images"], p["val_ann"], eval_tf, train=False)
            self.paths = p
        self.classes = list(self.train_set.classes)
        self.label_to_cat_id = dict(self.train_set.label_to_cat_id)
        if list(self.val_set.classes) != self.classes:
            raise MambaOutError("the training and validation annotations have different categories")
        return self.train_set, self.val_set

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    collate = staticmethod(collate_det)

    # ---- model and loss -------------------------------------------------------------------------
    def build_model(self, pretrained: bool, initial_checkpoint: Optional[str]) -> nn.Module:
        return build_detector(self.recipe, self.num_classes, pretrained, initial_checkpoint)

    def train_inputs(self, batch, device):
        images, targets, _ = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        return images, targets

    def forward_loss(self, model, images, targets):
        if not images:   # every sample of the micro-batch was skipped: a zero loss every process can sum
            return sum(p.sum() * 0 for p in model.parameters())
        return sum(model(images, targets).values())

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model, d, amp_dtype, channels_last, workers, batch_size):
        if self._val_loader is None:
            self._val_loader = eval_loader(self.val_set, d, batch_size or self.recipe.batch_size, workers, collate_det)
        return evaluate_detection(model, self._val_loader, d, self.val_set.coco, self.label_to_cat_id, amp_dtype)

    @staticmethod
    def describe(m: dict) -> str:
        return f"box AP {m['bbox_AP']:.2f}, mask AP {m['segm_AP']:.2f} ({m['images']} images)"

    @staticmethod
    def row(m: dict) -> dict:
        return {f"{t}_{k}": m[f"{t}_{k}"] for t in ("bbox", "segm") for k in METRICS}

    def checkpoint_meta(self) -> dict:
        return {"class_names": self.classes, "cat_ids": [self.label_to_cat_id[i + 1] for i in range(self.num_classes)],
                "data": self.data,
                "paths": {k: (str(v) if v is not None else None) for k, v in self.paths.items()}}

    def data_source(self) -> dict:
        return {"data": absolute(self.data), **{k: absolute(v) for k, v in self.given.items()}}


def build_detector(recipe: DetRecipe, num_classes: int, pretrained=False, checkpoint_path=None):
    r = recipe
    return create_model(r.model, num_classes=num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path,
                        drop_path_rate=r.drop_path_rate(), rois_per_image=r.rois_per_image,
                        rpn_post_nms_top_n_train=r.proposals,
                        **detector_resize_kwargs(r.min_size, r.max_size, r.multiscale))


def train_detection(recipe: DetRecipe, opts: RunOptions = RunOptions(), **paths) -> TrainResult:
    """Train Mask R-CNN (`opts.data` None and no paths: the embedded digit canvases)."""
    return fit(DetectionTask(recipe, opts.data, **paths), opts)


@torch.no_grad()
def evaluate_detection(model, loader, d: Dist, coco_gt, label_to_cat_id, amp_dtype=None,
                       results_file=None) -> dict:
    """COCO box and mask AP (percent) of `model` over the loader's images; every process predicts
    its own share, the predictions are gathered, each image counted once."""
    model.eval()
    results, image_ids, skipped = [], [], 0
    with checked_batches(loader) as batches:
        for imgs, targets, skips in batches:
            skipped += skips.images_skipped()
            if not imgs:
                continue
            with torch.autocast(d.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model([im.to(d.device) for im in imgs])
            ids = [int(t["image_id"]) for t in targets]
            results += predictions_to_coco([{k: v.float().cpu() if v.is_floating_point() else v.cpu()
                                             for k, v in o.items()} for o in outputs], ids, label_to_cat_id)
            image_ids += ids
    results, image_ids = gather_results(results, d), gather_image_ids(image_ids, d)
    skipped = int(all_reduce_sum(torch.tensor(float(skipped), dtype=torch.float64, device=d.device), d).item())
    if not image_ids:
        raise MambaOutError("no readable images to evaluate")
    if results_file is not None and d.is_main:
        write_results(results, results_file)
    scores = coco_evaluate(coco_gt, results, image_ids=image_ids)  # images skipped as unreadable left out
    m = {f"{t}_{k}": scores[t][k] for t in ("bbox", "segm") for k in METRICS}
    m.update(images=len(image_ids), skipped=skipped, detections=len(results))
    return m


def load_detection_checkpoint(path):
    """(model in eval mode, recipe, checkpoint dict) from a `detect train` checkpoint."""
    return ckpt.load_task_checkpoint(path, "detection", DetRecipe, lambda r, n, name: build_detector(r, n))


def _label_to_cat_id(obj: dict) -> dict:
    return {i + 1: int(c) for i, c in enumerate(obj["cat_ids"])}


def evaluate_checkpoint(checkpoint, data: Optional[str] = None, ann=None, images=None, results_file=None,
                        device: str = "auto", workers: int = 2, batch_size: int = 2, amp: Optional[str] = None) -> dict:
    """`mambaout detect eval`: COCO AP of a checkpoint on the val split of `data` (COCO 2017 layout),
    on (ann, images), or on what it was trained on. Under torchrun each image is predicted once."""
    d = setup(device)
    try:
        model, recipe, obj = load_detection_checkpoint(checkpoint)
        tf = det_eval_transform()
        paths = obj.get("paths") or {}
        if data is not None:
            layout = coco_layout(data)
            ann, images = ann or layout.val_ann, images or layout.val_images
        elif ann is None and paths.get("val_ann"):
            ann, images = paths["val_ann"], paths["val_images"]
        dataset = (DigitsDetection("val", transform=tf, length=DIGITS_CANVASES[1]) if ann is None
                   else CocoDetection(images, ann, tf, train=False))
        if list(dataset.classes) != list(obj["class_names"]):
            raise MambaOutError(f"the annotations' categories differ from the {len(obj['class_names'])} the "
                                f"checkpoint was trained on")
        model.to(d.device)
        amp_dtype = to_amp_dtype(amp)
        m = evaluate_detection(model, eval_loader(dataset, d, batch_size, workers, collate_det), d, dataset.coco,
                               _label_to_cat_id(obj), amp_dtype, results_file)
        m.update(model=obj["model_name"], annotations=str(ann) if ann else "digits canvases (embedded)")
        return m
    finally:
        cleanup(d)


def predict_images(image_paths: Sequence[str], checkpoint, output, score_thr: float = 0.5,
                   device: str = "auto") -> dict:
    """`mambaout detect predict`: for each image, `<stem>.png` with boxes, class names, scores and
    masks drawn (torchvision.utils) and `detections.json` with every detection above score_thr
    (box xyxy in pixels, category name and id, score). Unreadable images are listed in "errors"."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    model, recipe, obj = load_detection_checkpoint(checkpoint)
    dev = resolve_device(device)
    model.to(dev)
    names, label_to_cat_id = obj["class_names"], _label_to_cat_id(obj)

    def predict_one(path, img, stem, out):
        x = F.to_dtype(F.pil_to_tensor(img), torch.float32, scale=True)
        with torch.no_grad():
            o = model([x.to(dev)])[0]
        keep = o["scores"] >= score_thr
        boxes, labels, scores = o["boxes"][keep].cpu(), o["labels"][keep].cpu(), o["scores"][keep].cpu()
        canvas = F.pil_to_tensor(img)
        if len(boxes):
            masks = (o["masks"][keep, 0] > 0.5).cpu()
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.4)
            canvas = draw_bounding_boxes(canvas, boxes, [f"{names[int(l) - 1]} {s:.2f}" for l, s in zip(labels, scores)],
                                         width=2)
        F.to_pil_image(canvas).save(out / f"{stem}.png")
        return {"image": str(path), "drawn": str(out / f"{stem}.png"), "detections": [
            {"box": [round(float(v), 2) for v in b], "label": names[int(l) - 1],
             "category_id": int(label_to_cat_id[int(l)]),
             "score": round(float(s), 4)} for b, l, s in zip(boxes, labels, scores)]}
    r = predict_to_folder(image_paths, output, predict_one)
    atomic_write(Path(output) / "detections.json", lambda tmp: Path(tmp).write_text(json.dumps(r["written"], indent=2)))
    return r
