"""The training recipe as data. Defaults are Table 2 of the supplementary (ImageNet-1k).

Two values are not in Table 2 and come from the official train.py (timm 0.6.11
defaults): warmup starts at 1e-6 and cosine decay ends at 1e-5.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar, Optional, Tuple


class RecipeData:
    """What every task recipe shares: its global batch, and a plain-dict form for checkpoints."""

    def global_batch(self, world_size: int = 1) -> int:
        return world_size * self.batch_size * self.grad_accum_steps

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        """From to_dict's form; unknown keys (a newer or older checkpoint) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


@dataclass
class Recipe(RecipeData):
    # what a resumed run may change (engine/resume.py): more epochs (the schedule follows)
    resume_may_change: ClassVar[Tuple[str, ...]] = ("epochs",)
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


    def total_updates(self, updates_per_epoch: int) -> int:
        return self.epochs * updates_per_epoch

    def val_interval(self, updates_per_epoch: int) -> int:
        return updates_per_epoch                # validate after every epoch

    def drop_path_rate(self) -> float:
        if self.drop_path is not None:
            return self.drop_path
        from .models import get_variant
        return get_variant(self.model).drop_path



def digits_recipe() -> Recipe:
    """The recipe for the embedded digits set (1442 train images of 8x8 digits, shown at 32x32):
    the paper's optimiser and schedule shape, with augmentation suited to digits (no flips,
    no RandAugment/Mixup/CutMix, mild crops) and a budget of a few CPU minutes."""
    return replace(Recipe(), model="mambaout_femto", img_size=32, epochs=20, batch_size=64,
                   lr=2e-3, warmup_epochs=2, min_lr=1e-5, auto_augment=None, mixup=0.0, cutmix=0.0,
                   reprob=0.0, hflip=0.0, scale=(0.6, 1.0), drop_path=0.0)


@dataclass
class SegRecipe(RecipeData):
    """UperNet semantic segmentation on ADE20K. Sources: mmsegmentation's Swin UperNet config
    (configs/swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K.py with
    _base_/models/upernet_swin.py, _base_/datasets/ade20k.py, _base_/schedules/schedule_160k.py),
    which the authors say they followed, with their own settings from official issue #251:
    lr 1e-4 for every size (Swin's config: 6e-5), drop path 0.3 / 0.3 / 0.6 (T / S / B), no
    layer-wise lr decay, a LayerNorm on each backbone output (models/backbone.py)."""
    resume_may_change: ClassVar[Tuple[str, ...]] = ("iters", "val_every", "test_mode")
    model: str = "upernet_mambaout_tiny"
    num_classes: int = 150                    # ADE20K
    reduce_zero_label: bool = True            # ADE20K: label 0 = "other" -> ignored (255)
    crop_size: int = 512                      # ade20k.py: crop_size (512, 512)
    scale: Tuple[int, int] = (2048, 512)      # ade20k.py: img_scale, training resize base and test resize
    ratio_range: Tuple[float, float] = (0.5, 2.0)   # ade20k.py: Resize ratio_range
    cat_max_ratio: float = 0.75               # ade20k.py: RandomCrop cat_max_ratio
    hflip: float = 0.5                        # ade20k.py: RandomFlip prob
    photometric: bool = True                  # ade20k.py: PhotoMetricDistortion
    iters: int = 160_000                      # schedule_160k.py: max_iters
    batch_size: int = 16                      # per process; Swin: 8 GPUs x 2 = global batch 16
    grad_accum_steps: int = 1
    lr: float = 1e-4                          # authors (issue #251), absolute: not scaled with the batch
    opt: str = "adamw"                        # Swin config: AdamW, betas (0.9, 0.999), weight decay 0.01
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01                # none on norms (Swin: custom_keys norm decay_mult 0), biases, layer scale
    sched: str = "poly"                       # Swin config: lr_config policy poly, power 1.0, min_lr 0,
    poly_power: float = 1.0                   #   by_epoch False, linear warmup 1500 iters from ratio 1e-6
    min_lr: float = 0.0
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    drop_path: Optional[float] = None         # None: the model's own (authors: T 0.3, S 0.3, B 0.6)
    aux_weight: float = 0.4                   # upernet_swin.py: auxiliary FCNHead loss_weight
    head_channels: int = 512                  # upernet_swin.py: UPerHead channels
    aux_channels: int = 256                   # upernet_swin.py: FCNHead channels
    head_dropout: float = 0.1                 # upernet_swin.py: dropout_ratio of both heads
    val_every: int = 16_000                   # schedule_160k.py: evaluation interval
    test_mode: str = "whole"                  # upernet_swin.py: test_cfg mode 'whole' (also: "slide")
    clip_grad: Optional[float] = None         # Swin config: none
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    seed: int = 0

    def peak_lr(self, world_size: int = 1) -> float:
        return self.lr


    def total_updates(self, updates_per_epoch: int) -> int:
        return self.iters                       # iteration-based, as mmseg counts

    def val_interval(self, updates_per_epoch: int) -> int:
        return self.val_every

    def drop_path_rate(self) -> float:
        if self.drop_path is not None:
            return self.drop_path
        from .models.segmentation_variants import SEGMENTATION_VARIANTS
        return SEGMENTATION_VARIANTS[self.model].drop_path



@dataclass
class DetRecipe(RecipeData):
    """Mask R-CNN on COCO. Sources: mmdetection's Swin Mask R-CNN config
    (configs/swin/mask_rcnn_swin-t-p4-w7_fpn_1x_coco.py with _base_/models/mask_rcnn_r50_fpn.py,
    _base_/datasets/coco_instance.py, _base_/schedules/schedule_1x.py), the set-up the authors
    say they followed, with their learning rate 1e-4 (official issue #251, for all sizes)."""
    resume_may_change: ClassVar[Tuple[str, ...]] = ("epochs",)
    model: str = "mask_rcnn_mambaout_tiny"
    schedule: str = "1x"                      # "1x": 12 epochs, steps 8 / 11; "3x": 36 epochs, 27 / 33
    epochs: int = 12                          # schedule_1x.py: max_epochs 12
    lr_steps: Tuple[int, ...] = (8, 11)       # schedule_1x.py: MultiStepLR milestones [8, 11], gamma 0.1
    lr_gamma: float = 0.1
    batch_size: int = 16                      # per process; Swin config: 8 GPUs x 2 = global batch 16
    grad_accum_steps: int = 1
    lr: float = 1e-4                          # authors (issue #251); Swin's config also 1e-4
    opt: str = "adamw"                        # Swin config: AdamW, betas (0.9, 0.999), weight decay 0.05
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05                # none on norms, biases, layer scale (Swin: norm decay_mult 0)
    sched: str = "step"
    min_lr: float = 0.0
    warmup_iters: int = 500                   # schedule_1x.py: LinearLR start_factor 0.001, 500 iters
    warmup_ratio: float = 0.001
    min_size: int = 800                       # coco_instance.py: Resize (1333, 800) keep_ratio
    max_size: int = 1333
    multiscale: Optional[Tuple[int, int]] = None   # 3x: shorter side 480-800
    hflip: float = 0.5                        # coco_instance.py: RandomFlip 0.5
    rois_per_image: int = 512                 # mask_rcnn_r50_fpn.py: rcnn sampler num 512
    proposals: int = 2000                     # RPN proposals kept per image in training (torchvision: 2000)
    drop_path: Optional[float] = None         # None: the model's own (not given by the paper)
    clip_grad: Optional[float] = None         # Swin Mask R-CNN config: none
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in ("1x", "3x"):
            raise ValueError(f"schedule must be 1x or 3x, got {self.schedule!r}")

    @classmethod
    def three_x(cls, **kw) -> "DetRecipe":
        """mmdet's 3x multi-scale schedule (Swin's mask_rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py
        without the crop): 36 epochs, lr x0.1 at 27 and 33, shorter side 480-800."""
        return cls(schedule="3x", epochs=36, lr_steps=(27, 33), multiscale=(480, 800), **kw)

    def peak_lr(self, world_size: int = 1) -> float:
        return self.lr


    def total_updates(self, updates_per_epoch: int) -> int:
        return self.epochs * updates_per_epoch

    def val_interval(self, updates_per_epoch: int) -> int:
        return updates_per_epoch                # mmdet: evaluate after every epoch

    def drop_path_rate(self) -> float:
        if self.drop_path is not None:
            return self.drop_path
        from .models.detection_variants import DETECTION_VARIANTS
        return DETECTION_VARIANTS[self.model].drop_path

