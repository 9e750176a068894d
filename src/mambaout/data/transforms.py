"""Train and eval transforms, built with timm's data pipeline."""
from __future__ import annotations

from timm.data import create_transform


def train_transform(img_size: int, auto_augment, re_prob: float, interpolation="bicubic",
                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), hflip: float = 0.5,
                    color_jitter: float = 0.4, scale=(0.08, 1.0)):
    """RandomResizedCrop + flip + RandAugment + normalise + random erasing (DeiT/timm recipe)."""
    return create_transform(img_size, is_training=True, auto_augment=auto_augment or None,
                            re_prob=re_prob, re_mode="pixel", re_count=1, interpolation=interpolation,
                            mean=mean, std=std, hflip=hflip, color_jitter=color_jitter, scale=scale)


def eval_transform(img_size: int, crop_pct: float = 1.0, interpolation="bicubic",
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_mode="center"):
    """Resize the short side to img_size / crop_pct (bicubic), center-crop img_size, normalise."""
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, crop_mode=crop_mode,
                            interpolation=interpolation, mean=mean, std=std)
