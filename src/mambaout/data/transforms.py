"""Train and eval transforms, built with timm's data pipeline."""
from __future__ import annotations

import math
from typing import Tuple

from PIL import Image
from timm.data import create_transform
from timm.data import auto_augment as timm_aa

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_transform(img_size: int, auto_augment, re_prob: float, interpolation="bicubic",
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip: float = 0.5,
                    color_jitter: float = 0.4, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop + flip + RandAugment + normalise + random erasing (DeiT/timm recipe)."""
    tf = create_transform(img_size, is_training=True, auto_augment=auto_augment or None,
                          re_prob=re_prob, re_mode="pixel", re_count=1, interpolation=interpolation,
                          mean=mean, std=std, hflip=hflip, color_jitter=color_jitter,
                          scale=tuple(scale), ratio=tuple(ratio))
    _fix_zero_bit_posterize(tf)
    return tf


def eval_transform(img_size: int, crop_pct: float = 1.0, interpolation="bicubic",
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_mode="center"):
    """Resize the short side (crop_mode "center") or both sides ("squash") to img_size / crop_pct,
    center-crop img_size, normalise."""
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, crop_mode=crop_mode,
                            interpolation=interpolation, mean=mean, std=std)


def resize_crop_transform(img_size: int, crop_pct: float, crop_mode: str = "center", interpolation="bilinear",
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip: float = 0.5, auto_augment=None,
                          re_prob: float = 0.0):
    """Resize to img_size / crop_pct (crop_mode "squash": both sides, the aspect ratio given up, as
    mmcv's Resize(scale=N) does; "center": the short side), a random img_size crop, flip,
    [RandAugment], normalise, [random erasing]: the fine-grained training pipeline whose
    evaluation counterpart is eval_transform(img_size, crop_pct, crop_mode=crop_mode)."""
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import str_to_interp_mode, str_to_pil_interp
    from torchvision import transforms as T
    scale = math.floor(img_size / crop_pct)
    ops = [T.Resize((scale, scale) if crop_mode == "squash" else scale, interpolation=str_to_interp_mode(interpolation)),
           T.RandomCrop(img_size)]
    if hflip > 0:
        ops.append(T.RandomHorizontalFlip(hflip))
    if auto_augment:
        ops.append(rand_augment_transform(auto_augment, dict(
            translate_const=int(img_size * 0.45), img_mean=tuple(round(255 * m) for m in mean),
            interpolation=str_to_pil_interp(interpolation))))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if re_prob > 0:
        ops.append(RandomErasing(re_prob, mode="pixel", device="cpu"))
    tf = T.Compose(ops)
    _fix_zero_bit_posterize(tf)
    return tf


def recipe_transforms(recipe, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(train, eval) transforms of a training recipe (mambaout.recipe.Recipe): training crops are
    random-resized (ImageNet) or resize-random (a resize, then a random crop: fine-grained)."""
    crop_mode = getattr(recipe, "crop_mode", "center")
    if getattr(recipe, "train_crop", "random-resized") == "resize-random":
        train = resize_crop_transform(recipe.img_size, recipe.crop_pct, crop_mode, recipe.interpolation, mean, std,
                                      hflip=recipe.hflip, auto_augment=recipe.auto_augment, re_prob=recipe.reprob)
    else:
        train = train_transform(recipe.img_size, recipe.auto_augment, recipe.reprob, recipe.interpolation,
                                mean, std, hflip=recipe.hflip, scale=recipe.scale, ratio=recipe.ratio)
    return train, eval_transform(recipe.img_size, recipe.crop_pct, recipe.interpolation, mean, std, crop_mode)


def posterize_keep_zero_bits(img: Image.Image, bits_to_keep: int, **kw) -> Image.Image:
    """timm's posterize, except that keeping 0 bits gives a black image.

    Why: timm's increasing posterize (RandAugment "inc1", Table 2) keeps 4 - 4 = 0 bits when
    the noisy magnitude reaches the top of its range (about 1 draw in 850). Pillow < 13 turned
    0 bits into an all-zero image, the behaviour the paper's runs had; Pillow 13 raises
    ValueError instead, which killed every run with the paper's recipe. Every other draw goes
    to timm's own function unchanged, and no random number is drawn here, so the samples
    before and after see the same random stream as with timm alone."""
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))  # what Pillow < 13 did: a zero LUT
    return timm_aa.posterize(img, bits_to_keep, **kw)


def _fix_zero_bit_posterize(transform) -> None:
    """Point the posterize ops of timm's RandAugment / AutoAugment / AugMix inside `transform`
    at posterize_keep_zero_bits. Only these op instances change, not timm's module tables."""
    for op in _augment_ops(transform):
        if op.aug_fn is timm_aa.posterize:
            op.aug_fn = posterize_keep_zero_bits


def _augment_ops(transform):
    if isinstance(transform, timm_aa.AugmentOp):
        yield transform
        return
    children = []
    for attr in ("transforms", "ops", "policy"):   # Compose / RandAugment, AugMix / AutoAugment
        value = getattr(transform, attr, None)
        if isinstance(value, (list, tuple)):
            children.extend(value)
    if isinstance(transform, (list, tuple)):        # an AutoAugment sub-policy
        children.extend(transform)
    for child in children:
        yield from _augment_ops(child)


def rescale_size(h: int, w: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """(new_h, new_w) of an image fitted within `scale` keeping its aspect ratio (mmcv's
    rescale_size): long side <= max(scale), short side <= min(scale), so the factor is
    min(max(scale) / long, min(scale) / short); sides rounded half up."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)
