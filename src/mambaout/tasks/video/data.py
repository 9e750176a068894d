"""The video task's datasets: Something-Something V2 as released, list files, a folder per
class, or the embedded moving digits (data/video.py, data/moving_digits.py); repeated
augmentation (VideoMamba's num_sample: a video decoded once, augmented num_sample times).
Batches are collated by data.collate_skip_bad: a training item is one clip [3, T, H, W] or a
[num_sample, 3, T, H, W] stack; an evaluation item one view or a [V, 3, T, H, W] stack."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from ...data.moving_digits import MovingDigits
from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ...data.video import VideoClips, read_list_file, read_video_split, video_eval_transform, video_train_transform
from ...errors import MambaOutError


class AugmentedClips(Dataset):
    """A dataset of raw training clips (uint8 frames [T, H, W, 3], None when unreadable) with
    `transform` applied `num_sample` times to each (one decode, num_sample augmentations, as
    VideoMamba's repeated augmentation): [3, T, H, W] for one, [num_sample, 3, T, H, W] for more."""

    def __init__(self, dataset: Dataset, transform, num_sample: int = 1):
        self.dataset, self.transform, self.num_sample = dataset, transform, num_sample
        self.samples = getattr(dataset, "samples", None)   # file names for data-error messages

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if item is None:
            return None
        frames, target = item
        if self.num_sample == 1:
            return self.transform(frames), target
        return torch.stack([self.transform(frames) for _ in range(self.num_sample)]), target


def video_samples(data: Optional[str], split: str, lists: dict) -> Tuple[list, List[str]]:
    """(samples, classes) of split "train" or "val": from list files (lists: train_list,
    val_list, video_root, classes), else SSV2 or class folders under `data`."""
    if lists.get(f"{split}_list"):
        return read_list_file(lists[f"{split}_list"], lists.get("video_root"), lists.get("classes"))
    if not Path(data).is_dir():
        raise MambaOutError(f"dataset folder not found: {data}")
    return read_video_split(data, split)


def build_video_datasets(recipe, data: Optional[str] = None, lists: Optional[dict] = None, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD):
    """(train, val, class names) of a training run: the embedded moving digits without data or
    lists; else SSV2 / class folders under `data`, or list files. Training clips are
    TSN-sampled and augmented num_sample times; validation during training is one view (the
    centre clip, the centre crop)."""
    lists = {k: v for k, v in (lists or {}).items() if v}
    if bool(lists.get("train_list")) != bool(lists.get("val_list")):
        raise MambaOutError("give both --train-list and --val-list (or neither, with --data DIR)")
    train_tf = video_train_transform(recipe.img_size, scale=tuple(recipe.scale), auto_augment=recipe.auto_augment,
                                     hflip=recipe.hflip, mean=mean, std=std, interpolation="bilinear",
                                     re_prob=recipe.reprob)
    eval_tf = video_eval_transform(recipe.img_size, num_crops=1, mean=mean, std=std)
    if data is None and not lists:
        raw = MovingDigits("train", recipe.num_frames, recipe.img_size)
        val = MovingDigits("val", recipe.num_frames, recipe.img_size, transform=eval_tf)
        classes = list(MovingDigits.classes)
    else:
        train_samples, classes = video_samples(data, "train", lists)
        val_samples, val_classes = video_samples(data, "val", dict(lists, classes=classes))
        if list(val_classes) != list(classes):
            raise MambaOutError(f"the validation classes ({len(val_classes)}) are not the training classes "
                                f"({len(classes)})")
        raw = VideoClips(train_samples, classes, recipe.num_frames, "train")
        val = VideoClips(val_samples, classes, recipe.num_frames, "test", eval_tf)
    return AugmentedClips(raw, train_tf, recipe.num_sample), val, classes


def flatten_repeats(clips: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A training batch of [B, num_sample, 3, T, H, W] as [B * num_sample, 3, T, H, W]."""
    if clips.dim() == 6:
        n = clips.shape[1]
        return clips.flatten(0, 1), targets.repeat_interleave(n)
    return clips, targets
