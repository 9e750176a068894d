"""Semantic segmentation as a task of the training engine: ADE20K-layout data (or the embedded
digit canvases), UperNet on a MambaOut backbone, cross-entropy on the decode and auxiliary
heads, mIoU evaluation (whole / sliding window, optional multi-scale + flip); plus the
library functions behind `mambaout segment eval` and `mambaout segment predict`."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...engine import checkpoint as ckpt
from ...data import predict_to_folder
from ...data.loader import checked_batches, eval_loader
from .data import (IGNORE_INDEX, DigitsSegmentation, SegFolder, SkipCounts, collate_seg_eval,
                                 collate_seg_train, seg_eval_transform, seg_train_transform)
from ...distributed import Dist, all_reduce_sum, cleanup, setup
from ...engine import RunOptions, TrainResult, fit
from ...utils import absolute, resolve_device
from ...utils import amp_dtype as to_amp_dtype
from ...errors import MambaOutError
from ...models import create_model, get_variant
from ...models.segmentation_variants import SEGMENTATION_VARIANTS
from .recipe import SegRecipe
from .metrics import IoUMeter, colorize, infer_multiscale, infer_slide, infer_whole, overlay


def digits_seg_recipe() -> SegRecipe:
    """The embedded default (no --data): 64x64 canvases of scikit-learn digits, 11 classes
    (background + 10 digits), UperNet-Femto with a narrow head (128 / 64 channels) trained from
    scratch for a few CPU minutes; the paper's optimiser and schedule shape otherwise. From
    scratch, the ADE20K settings (lr 1e-4, resize ratios 0.5-2, photometric distortion) leave
    the model predicting background only for thousands of iterations, so this recipe uses a
    higher lr (5e-3), milder resizing (0.75-1.5) and no photometric distortion."""
    return replace(SegRecipe(), model="upernet_mambaout_femto", num_classes=DigitsSegmentation.num_classes,
                   reduce_zero_label=False, crop_size=64, scale=(64, 64), ratio_range=(0.75, 1.5),
                   photometric=False, iters=2000, batch_size=8, lr=5e-3, warmup_iters=100, val_every=500,
                   drop_path=0.0, head_channels=128, aux_channels=64)


class SegmentationTask:
    name = "segmentation"
    command = "segment train"
    score_key = "mIoU"
    metric_keys = ("mIoU", "mAcc", "aAcc")
    per_epoch = False

    def __init__(self, recipe: SegRecipe, data: Optional[str] = None, class_names=None):
        self.recipe, self.data, self.class_names = recipe, data, class_names
        self._val_loader = None

    def check(self):
        r = self.recipe
        if r.model not in SEGMENTATION_VARIANTS:
            get_variant(r.model)    # raises the one-line unknown-model error with close matches
            raise MambaOutError(f"{r.model} is a classification model; segmentation models are "
                                f"{', '.join(SEGMENTATION_VARIANTS)}")
        if r.iters <= 0 or r.val_every <= 0 or r.crop_size <= 0 or min(r.scale) <= 0:
            raise MambaOutError("--iters, --val-every, --crop-size and --scale must be positive")
        if not 0 < r.ratio_range[0] <= r.ratio_range[1]:
            raise MambaOutError(f"--ratio-range needs 0 < MIN <= MAX, got {r.ratio_range}")
        if r.test_mode not in ("whole", "slide"):
            raise MambaOutError(f"test mode must be whole or slide, got {r.test_mode!r}")
        if r.batch_size < 2:   # BatchNorm in the pyramid pooling sees one value per channel
            raise MambaOutError("UperNet trains with at least 2 images per process (--batch-size)")
        if self.data is None and (r.num_classes != DigitsSegmentation.num_classes or r.reduce_zero_label):
            raise MambaOutError("the embedded digit canvases have 11 classes and no reduce-zero-label; "
                                "give --data for your own data")

    # ---- data -----------------------------------------------------------------------------------
    def build_data(self):
        r = self.recipe
        train_tf = seg_train_transform(r.crop_size, r.scale, r.ratio_range, r.cat_max_ratio, r.hflip,
                                       r.photometric)
        eval_tf = seg_eval_transform(r.scale)
        if self.data is None:
            self.train_set = DigitsSegmentation("train", 64, train_tf)
            self.val_set = DigitsSegmentation("val", 64, eval_tf)
        else:
            kw = dict(reduce_zero_label=r.reduce_zero_label, num_classes=r.num_classes, class_names=self.class_names)
            self.train_set = SegFolder(self.data, "training", train_tf, **kw)
            self.val_set = SegFolder(self.data, "validation", eval_tf, **kw)
        self.classes, self.palette = list(self.train_set.classes), [list(c) for c in self.train_set.palette]
        return self.train_set, self.val_set

    @property
    def num_classes(self) -> int:
        return self.recipe.num_classes

    collate = staticmethod(collate_seg_train)

    # ---- model and loss -------------------------------------------------------------------------
    def build_model(self, pretrained: bool, initial_checkpoint: Optional[str]) -> nn.Module:
        r = self.recipe
        return create_model(r.model, num_classes=r.num_classes, pretrained=pretrained,
                            checkpoint_path=initial_checkpoint, drop_path_rate=r.drop_path_rate(),
                            channels=r.head_channels, aux_channels=r.aux_channels, dropout=r.head_dropout)

    def train_inputs(self, batch, device):
        images, masks, _ = batch
        if images is None:     # every sample of the micro-batch was skipped
            c = self.recipe.crop_size
            images, masks = torch.zeros(0, 3, c, c), torch.zeros(0, c, c, dtype=torch.long)
        return images.to(device, non_blocking=True), masks.to(device, non_blocking=True)

    def forward_loss(self, model, inputs, targets):
        return self.loss(model(inputs), targets)

    def loss(self, out: dict, masks: torch.Tensor) -> torch.Tensor:
        """CE(decode) + aux_weight x CE(auxiliary), logits upsampled to the label size; the mean
        runs over all pixels, ignored ones included (mmseg 0.x's CrossEntropyLoss without
        avg_non_ignore), so a crop of only ignored pixels gives 0, not NaN."""
        if not len(masks):
            return out["out"].sum() * 0 + out["aux"].sum() * 0
        total = 0
        for logits, weight in ((out["out"], 1.0), (out["aux"], self.recipe.aux_weight)):
            up = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
            total = total + weight * F.cross_entropy(up, masks, ignore_index=IGNORE_INDEX, reduction="none").mean()
        return total

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model, d, amp_dtype, channels_last, workers, batch_size):
        if self._val_loader is None:
            self._val_loader = eval_loader(self.val_set, d, 1, workers, collate_seg_eval)
        return evaluate_segmentation(model, self._val_loader, d, self.num_classes, self.recipe, amp_dtype,
                                     channels_last)

    @staticmethod
    def describe(m: dict) -> str:
        return f"mIoU {m['mIoU']:.2f}%, mAcc {m['mAcc']:.2f}%, aAcc {m['aAcc']:.2f}%"

    @staticmethod
    def row(m: dict) -> dict:
        return {"mIoU": m["mIoU"], "mAcc": m["mAcc"], "aAcc": m["aAcc"]}

    def checkpoint_meta(self) -> dict:
        return {"class_names": self.classes, "palette": self.palette, "data": absolute(self.data)}

    def data_source(self) -> dict:
        names = self.class_names   # a file, or (from Python) the names themselves
        return {"data": absolute(self.data),
                "class_names": absolute(names) if isinstance(names, (str, Path)) else (list(names) if names else None)}


def train_segmentation(recipe: SegRecipe, opts: RunOptions = RunOptions(), class_names=None) -> TrainResult:
    """Train UperNet (`opts.data` None: the embedded digit canvases)."""
    return fit(SegmentationTask(recipe, opts.data, class_names), opts)


# ---- evaluation, shared by training and `segment eval` -----------------------------------------

@torch.no_grad()
def evaluate_segmentation(model, loader, d: Dist, num_classes: int, recipe: SegRecipe, amp_dtype=None,
                          channels_last: bool = False, mode: Optional[str] = None, ms: bool = False) -> dict:
    """mIoU, mAcc, aAcc and per-class IoU / Acc (percent) over the loader's images, predictions
    compared with each original-size mask; the confusion matrices of all processes are summed."""
    model.eval()
    meter = IoUMeter(num_classes, device=d.device)
    skips, images = SkipCounts(), 0
    predict = predictor(model, recipe, d.device, amp_dtype, channels_last, mode or recipe.test_mode, ms)
    with checked_batches(loader) as batches:
        for imgs, masks, skipped in batches:
            skips += skipped
            for img, mask in zip(imgs, masks):
                scores = predict(img[None].to(d.device), tuple(mask.shape[-2:]))
                meter.update(scores.argmax(1)[0], mask.to(d.device))
                images += 1
    meter.all_reduce(lambda t: all_reduce_sum(t, d))
    counts = all_reduce_sum(torch.tensor([images, skips.total()], dtype=torch.float64, device=d.device), d)
    if counts[0] == 0:
        raise MambaOutError("no readable images to evaluate")
    m = meter.compute()
    return {"mIoU": m["mIoU"], "mAcc": m["mAcc"], "aAcc": m["aAcc"], "per_class_iou": m["IoU"],
            "per_class_acc": m["Acc"], "images": int(counts[0]), "skipped": int(counts[1]),
            "skip_reasons": str(skips)}


def predictor(model, recipe: SegRecipe, device, amp_dtype=None, channels_last=False, mode="whole", ms=False):
    """fn(normalised image (1,3,h,w), original (H, W)) -> scores (1, C, H, W). Whole or sliding
    window (crop = the training crop, stride 2/3 of it: 512 / 341 as mmseg's ADE20K), and with
    `ms` the multi-scale (0.5-1.75) + flip test on the image at its original size."""
    def model_fn(x):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(x)
    crop, stride = recipe.crop_size, (2 * recipe.crop_size + 2) // 3
    n = recipe.num_classes

    def predict(image, size):
        if ms:
            return infer_multiscale(model_fn, image, n, mode=mode, base_size=tuple(recipe.scale), crop=crop,
                                    stride=stride, out_size=size)
        if mode == "slide":
            return infer_slide(model_fn, image, n, crop, stride, out_size=size)
        return infer_whole(model_fn, image, n, out_size=size)
    return predict


def load_segmentation_checkpoint(path):
    """(model in eval mode, recipe, checkpoint dict) from a `segment train` checkpoint."""
    return ckpt.load_task_checkpoint(path, "segmentation", SegRecipe, lambda r, n, name: create_model(
        name, num_classes=n, channels=r.head_channels, aux_channels=r.aux_channels))


def evaluate_checkpoint(checkpoint, data: Optional[str] = None, split: str = "validation",
                        mode: Optional[str] = None, ms: bool = False, device: str = "auto", workers: int = 2,
                        amp: Optional[str] = None) -> dict:
    """`mambaout segment eval`: metrics of a checkpoint on a dataset split (default: the data it
    was trained on, or the embedded digit canvases). Under torchrun each image is evaluated by
    one process and the confusion matrices are summed."""
    d = setup(device)
    try:
        return _evaluate_checkpoint(checkpoint, data, split, mode, ms, workers, amp, d)
    finally:
        cleanup(d)


def _evaluate_checkpoint(checkpoint, data, split, mode, ms, workers, amp, d: Dist) -> dict:
    model, recipe, obj = load_segmentation_checkpoint(checkpoint)
    data = data if data is not None else obj.get("data")
    eval_tf = seg_eval_transform(None if ms else recipe.scale)
    if data is None:
        if recipe.num_classes != DigitsSegmentation.num_classes:
            raise MambaOutError(f"{checkpoint} was not trained on the embedded digit canvases: pass --data DIR")
        dataset = DigitsSegmentation("val" if split in ("val", "validation") else "train", 64, eval_tf)
    else:
        dataset = SegFolder(data, split, eval_tf, reduce_zero_label=recipe.reduce_zero_label,
                            num_classes=recipe.num_classes, class_names=obj.get("class_names"))
    model.to(d.device)
    amp_dtype = to_amp_dtype(amp)
    r = evaluate_segmentation(model, eval_loader(dataset, d, 1, workers, collate_seg_eval), d, recipe.num_classes, recipe, amp_dtype,
                              mode=mode, ms=ms)
    r.update(model=obj["model_name"], data=data or "digits canvases (embedded)", split=split,
             mode=mode or recipe.test_mode, ms=ms, class_names=list(obj.get("class_names") or dataset.classes))
    return r


def predict_images(images: Sequence[str], checkpoint, output, mode: Optional[str] = None, ms: bool = False,
                   device: str = "auto") -> dict:
    """`mambaout segment predict`: for each image, `<stem>.png` (the label map in the training
    annotations' encoding: with reduce-zero-label class k is written k + 1, so it compares
    directly with an annotation file) and `<stem>_overlay.png` (the prediction's colours over
    the image). Unreadable images are listed in "errors"; the others are still written."""
    from PIL import Image
    model, recipe, obj = load_segmentation_checkpoint(checkpoint)
    dev = resolve_device(device)
    model.to(dev)
    tf = seg_eval_transform(None if ms else recipe.scale)
    predict = predictor(model, recipe, dev, mode=mode or recipe.test_mode, ms=ms)
    palette = obj.get("palette") or []

    def predict_one(path, img, stem, out):
        x, _ = tf(img)
        labels = predict(x[None].to(dev), (img.height, img.width)).argmax(1)[0].cpu()
        encoded = labels + 1 if recipe.reduce_zero_label else labels
        Image.fromarray(encoded.to(torch.uint8).numpy(), mode="L").save(out / f"{stem}.png")
        overlay(img, labels, palette).save(out / f"{stem}_overlay.png")
        return {"image": str(path), "labels": str(out / f"{stem}.png"), "overlay": str(out / f"{stem}_overlay.png")}
    return predict_to_folder(images, output, predict_one)


__all__ = ["SegmentationTask", "digits_seg_recipe", "train_segmentation", "evaluate_checkpoint",
           "predict_images", "evaluate_segmentation", "colorize"]
