"""The training recipe as data. Defaults are Table 2 of the supplementary (ImageNet-1k).

Two values are not in Table 2 and come from the official train.py (timm 0.6.11
defaults): warmup starts at 1e-6 and cosine decay ends at 1e-5.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Optional, Tuple


@dataclass
class Recipe:
    model: str = "mambaout_tiny"
    img_size: int = 224                       # input resolution 224^2
    epochs: int = 300
    # Batch: the paper trains with a global batch of 4096. Ours is
    # processes x batch_size x grad_accum_steps; the lr is scaled linearly to it.
    batch_size: int = 128                     # per process
    grad_accum_steps: int = 1
    lr_base: float = 4e-3                     # peak lr at global batch lr_base_size
    lr_base_size: int = 4096
    lr: Optional[float] = None                # absolute peak lr; overrides the scaling rule
    opt: str = "adamw"
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05                # not on norms, biases, layer scale
    sched: str = "cosine"
    warmup_epochs: float = 20
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: Optional[float] = None         # Table 2: none
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"   # RandAugment 9/0.5
    repeated_aug: bool = False                # Table 2: off (not implemented, kept for the record)
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_prob: float = 1.0
    reprob: float = 0.25                      # random erasing
    smoothing: float = 0.1                    # label smoothing
    drop_path: Optional[float] = None         # None: the model's own (femto .025, tiny .2, small .4, base .6)
    drop: float = 0.0                         # head dropout
    model_ema: bool = False                   # Table 2: no EMA
    model_ema_decay: float = 0.9999
    interpolation: str = "bicubic"
    crop_pct: float = 1.0                     # eval: resize to img_size / crop_pct, center crop
    scale: Tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (timm default, not in Table 2)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range (timm default)
    hflip: float = 0.5
    seed: int = 0

    def peak_lr(self, world_size: int = 1) -> float:
        """lr_base scaled linearly with the real global batch, unless `lr` is set."""
        if self.lr is not None:
            return self.lr
        return self.lr_base * self.global_batch(world_size) / self.lr_base_size

    def global_batch(self, world_size: int = 1) -> int:
        return world_size * self.batch_size * self.grad_accum_steps

    def drop_path_rate(self) -> float:
        if self.drop_path is not None:
            return self.drop_path
        from .models import get_variant
        return get_variant(self.model).drop_path

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


def digits_recipe() -> Recipe:
    """The recipe for the embedded digits set (1442 train images of 8x8 digits, shown at 32x32):
    the paper's optimiser and schedule shape, with augmentation suited to digits (no flips,
    no RandAugment/Mixup/CutMix, mild crops) and a budget of a few CPU minutes."""
    return replace(Recipe(), model="mambaout_femto", img_size=32, epochs=20, batch_size=64,
                   lr=2e-3, warmup_epochs=2, min_lr=1e-5, auto_augment=None, mixup=0.0, cutmix=0.0,
                   reprob=0.0, hflip=0.0, scale=(0.6, 1.0), drop_path=0.0)
