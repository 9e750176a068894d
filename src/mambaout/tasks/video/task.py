"""Video classification as a task of the training engine: Something-Something V2 / list files /
class folders / the embedded moving digits, VideoMamba or MambaOut video models, Mixup/CutMix
and label smoothing over clips, top-1/top-5 over one view or the 2 clips x 3 crops protocol;
plus the library functions behind `mambaout video eval` and `mambaout video predict`."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import collate_skip_bad
from ...data.loader import checked_batches, eval_loader
from ...data.moving_digits import MovingDigits
from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ...data.video import VideoClips, VideoReadError, read_clips, video_eval_transform
from ...distributed import Dist, cleanup, setup
from ...engine import RunOptions, TrainResult, fit
from ...engine.checkpoint import load_task_checkpoint
from ...engine.losses import batch_loss, mixup_and_criterion
from ...engine.metrics import TopKAccuracy
from ...errors import CheckpointError, MambaOutError
from ...models import create_model, get_variant
from ...models.registry import is_video
from ...utils import absolute, resolve_device
from ...utils import amp_dtype as to_amp_dtype
from .data import build_video_datasets, flatten_repeats, video_samples
from .recipe import VideoRecipe

LIST_KEYS = ("train_list", "val_list", "video_root")


class VideoTask:
    name = "video"
    command = "video train"
    score_key = "top1"
    metric_keys = ("top1", "top5")
    per_epoch = True

    def __init__(self, recipe: VideoRecipe, data: Optional[str] = None, lists: Optional[dict] = None):
        self.recipe, self.data = recipe, data
        self.lists = {k: v for k, v in (lists or {}).items() if v}
        self.classes = None
        self._val_loader = None

    def check(self):
        r = self.recipe
        r.model = get_variant(r.model).name
        if not is_video(r.model):
            raise MambaOutError(f"{r.model} is not a video model: see `mambaout models --task video`")
        for name in ("epochs", "num_frames", "img_size", "num_sample", "test_clips", "test_crops"):
            if getattr(r, name) <= 0:
                raise MambaOutError(f"--{name.replace('_', '-')} must be positive, got {getattr(r, name)}")
        if (r.mixup > 0 or r.cutmix > 0) and (r.batch_size * r.num_sample) % 2:
            raise MambaOutError(f"--batch-size x --num-sample must be even with mixup/cutmix (got "
                                f"{r.batch_size} x {r.num_sample})")
        if not 0 < r.scale[0] <= r.scale[1] <= 1:
            raise MambaOutError(f"--scale needs 0 < MIN <= MAX <= 1, got {r.scale}")

    def check_resume(self, obj: dict, path: str):
        for key in ("img_size", "num_frames"):
            if obj.get(key) not in (None, getattr(self.recipe, key)):
                raise CheckpointError(f"cannot resume: {path} was trained with {key} {obj[key]}, this run "
                                      f"uses {getattr(self.recipe, key)}")

    # ---- data -----------------------------------------------------------------------------------
    def build_data(self):
        self.train_set, self.val_set, self.classes = build_video_datasets(self.recipe, self.data, self.lists)
        return self.train_set, self.val_set

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    collate = staticmethod(collate_skip_bad)

    # ---- model and loss -------------------------------------------------------------------------
    def build_model(self, pretrained: bool, initial_checkpoint: Optional[str]) -> nn.Module:
        r = self.recipe
        model = build_video_model(r, self.num_classes, r.model, pretrained=pretrained,
                                  checkpoint_path=initial_checkpoint, drop_path_rate=r.drop_path)
        self.mixup, self.criterion = mixup_and_criterion(self.num_classes, r.mixup, r.cutmix, r.smoothing)
        return model

    def train_inputs(self, batch, device):
        clips, targets, _ = batch
        r = self.recipe
        if clips is None:          # a whole micro-batch of unreadable videos
            clips = torch.zeros(0, 3, r.num_frames, r.img_size, r.img_size)
            targets = torch.zeros(0, dtype=torch.long)
        clips, targets = flatten_repeats(clips, targets)
        if self.mixup is not None and len(clips) % 2:
            clips, targets = clips[:-1], targets[:-1]
        clips, targets = clips.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if self.mixup is not None and len(clips):
            # one lambda and one CutMix box for the batch, the box the same in every frame
            b, c, t, h, w = clips.shape
            flat, targets = self.mixup(clips.reshape(b, c * t, h, w), targets)
            clips = flat.reshape(b, c, t, h, w)
        return clips, targets

    def forward_loss(self, model, inputs, targets):
        return batch_loss(self.criterion, model(inputs), targets)

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model, d, amp_dtype, channels_last, workers, batch_size):
        if self._val_loader is None:
            self._val_loader = eval_loader(self.val_set, d, batch_size or self.recipe.batch_size, workers,
                                           collate_skip_bad)
        return evaluate_views(model, self._val_loader, d, amp_dtype)

    @staticmethod
    def describe(m: dict) -> str:
        return f"val loss {m['loss']:.4f}, top-1 {m['top1']:.2f}%, top-5 {m['top5']:.2f}%"

    @staticmethod
    def row(m: dict) -> dict:
        return {"val_loss": m["loss"], "top1": m["top1"], "top5": m["top5"]}

    def checkpoint_meta(self) -> dict:
        return {"class_names": list(self.classes), "img_size": self.recipe.img_size,
                "num_frames": self.recipe.num_frames}

    def data_source(self) -> dict:
        source = {"data": absolute(self.data)}
        source.update({k: absolute(v) for k, v in self.lists.items()})
        return source


def build_video_model(recipe: VideoRecipe, num_classes: int, name: Optional[str] = None, **kw) -> nn.Module:
    return create_model(name or recipe.model, num_classes=num_classes, num_frames=recipe.num_frames,
                        img_size=recipe.img_size, **kw)


def train_video(recipe: VideoRecipe, opts: RunOptions = RunOptions(), lists: Optional[dict] = None) -> TrainResult:
    """Train (fine-tune, resume) a video classifier; no data and no lists: the moving digits."""
    return fit(VideoTask(recipe, opts.data, lists), opts)


# ---- evaluation: one view, or the mean of several ------------------------------------------------

def view_logits(model, clips: torch.Tensor, amp_dtype=None) -> torch.Tensor:
    """Class probabilities [B, classes] of [B, 3, T, H, W] (one view) or [B, V, 3, T, H, W] clips:
    the softmax of each view, averaged over the views (VideoMAE / VideoMamba's merge)."""
    views = clips.shape[1] if clips.dim() == 6 else 1
    flat = clips.flatten(0, 1) if clips.dim() == 6 else clips
    with torch.autocast(flat.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(flat)
    probs = logits.float().softmax(-1)
    return probs.view(len(clips), views, -1).mean(1)


@torch.no_grad()
def evaluate_views(model, loader, d: Dist, amp_dtype=None) -> dict:
    """top-1 / top-5 / loss (the NLL of the view-averaged probabilities) over every video once."""
    model.eval()
    acc = TopKAccuracy()
    with checked_batches(loader) as batches:
        for clips, targets, skipped in batches:
            acc.skip(skipped)
            if clips is None:
                continue
            clips, targets = clips.to(d.device), targets.to(d.device)
            probs = view_logits(model, clips, amp_dtype)
            acc.add(probs, targets, F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="sum").item())
    return acc.result(d, "videos")


def load_video_checkpoint(path):
    """(model in eval mode, recipe, checkpoint dict) of a `video train` checkpoint."""
    return load_task_checkpoint(path, "video", VideoRecipe, lambda r, n, name: build_video_model(r, n, name))


def _views(views: str, recipe: VideoRecipe):
    """(clips, crops) of --views: "1" (the centre clip, the centre crop) or "full" (the recipe's
    test_clips x test_crops: SSV2's 2 x 3) or "CxK"."""
    if views == "1":
        return 1, 1
    if views == "full":
        return recipe.test_clips, recipe.test_crops
    try:
        clips, crops = (int(v) for v in views.lower().split("x"))
    except ValueError:
        raise MambaOutError(f"--views must be 1, full or CLIPSxCROPS (e.g. 2x3), got {views!r}") from None
    if clips <= 0 or crops not in (1, 3):
        raise MambaOutError(f"--views {views}: clips must be positive and crops 1 or 3")
    return clips, crops


def evaluate_checkpoint(checkpoint, data: Optional[str] = None, lists: Optional[dict] = None, views: str = "full",
                        device: str = "auto", workers: int = 2, batch_size: int = 8, amp: Optional[str] = None) -> dict:
    """`mambaout video eval`: top-1 / top-5 of a checkpoint over the validation videos (default:
    the data it was trained on; the moving digits for a run on them), one view or several."""
    d = setup(device)
    try:
        model, recipe, obj = load_video_checkpoint(checkpoint)
        source = obj.get("data_source") or {}
        lists = {k: v for k, v in (lists or {}).items() if v}
        if data is None and not lists:
            data = source.get("data")
            lists = {k: source[k] for k in LIST_KEYS if source.get(k)}
        clips, crops = _views(views, recipe)
        tf = video_eval_transform(recipe.img_size, num_crops=crops, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        classes = obj.get("class_names")
        if data is None and not lists.get("val_list"):
            dataset = MovingDigits("val", recipe.num_frames, recipe.img_size, transform=tf)
            if list(classes or []) != list(MovingDigits.classes):
                raise MambaOutError(f"{checkpoint} was not trained on the embedded moving digits: pass --data DIR")
        else:
            samples, found = video_samples(data, "val", dict(lists, classes=classes))
            if classes is not None and list(found) != list(classes):
                raise MambaOutError(f"{data or lists.get('val_list')}: its {len(found)} classes are not the model's "
                                    f"({len(classes)})")
            dataset = VideoClips(samples, found, recipe.num_frames, "test", tf, num_clips=clips)
        model.to(d.device)
        r = evaluate_views(model, eval_loader(dataset, d, batch_size, workers, collate_skip_bad), d, to_amp_dtype(amp))
        r.update(model=obj["model_name"], views=f"{clips}x{crops}", num_frames=recipe.num_frames,
                 img_size=recipe.img_size, data=data or lists.get("val_list") or "moving digits (embedded)")
        return r
    finally:
        cleanup(d)


@torch.no_grad()
def predict_videos(paths: Sequence[str], checkpoint, top_k: int = 5, views: str = "full",
                   device: str = "auto") -> dict:
    """`mambaout video predict`: the top-k classes of each video file (names from the checkpoint),
    its views averaged. An unreadable file is listed in "errors" and the others go on."""
    model, recipe, obj = load_video_checkpoint(checkpoint)
    dev = resolve_device(device)
    model.to(dev)
    clips, crops = _views(views, recipe)
    tf = video_eval_transform(recipe.img_size, num_crops=crops, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    names = obj.get("class_names") or [str(i) for i in range(model.num_classes)]
    k = max(1, min(top_k, len(names)))
    predictions, errors = [], []
    for path in paths:
        try:
            stack = []
            for frames in read_clips(path, recipe.num_frames, clips, min_frames=recipe.num_frames):
                views_ = tf(frames)
                stack += list(views_) if isinstance(views_, (list, tuple)) else [views_]
        except VideoReadError as e:
            errors.append({"video": str(path), "error": str(e)})
            continue
        probs = view_logits(model, torch.stack(stack)[None].to(dev))[0]
        top = probs.topk(k)
        predictions.append({"video": str(path), "views": len(stack), "topk": [
            {"index": int(i), "label": names[int(i)], "prob": float(p)} for p, i in zip(top.values, top.indices)]})
    return {"predictions": predictions, "errors": errors, "model": obj["model_name"]}


__all__ = ["VideoTask", "train_video", "evaluate_views", "evaluate_checkpoint", "predict_videos",
           "load_video_checkpoint", "view_logits"]
