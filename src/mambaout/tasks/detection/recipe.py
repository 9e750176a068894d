"""The Mask R-CNN (COCO) recipe as data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Tuple

from ...engine.recipe import RecipeData


@dataclass
class DetRecipe(RecipeData):
    """Mask R-CNN on COCO. Sources: mmdetection's Swin Mask R-CNN config
    (configs/swin/mask_rcnn_swin-t-p4-w7_fpn_1x_coco.py with _base_/models/mask_rcnn_r50_fpn.py,
    _base_/datasets/coco_instance.py, _base_/schedules/schedule_1x.py), the set-up the authors
    say they followed, with their learning rate 1e-4 (official issue #251, for all sizes)."""
    # A field's metadata: "help" (with "none", what None means, "metavar" and "choices") for
    # its flag of `mambaout detect train`, whose help adds the default (cli/flags.py).
    resume_may_change: ClassVar[Tuple[str, ...]] = ("epochs",)
    model: str = field(default="mask_rcnn_mambaout_tiny", metadata={"help": "the detector to train"})
    schedule: str = field(default="1x", metadata={   # "1x": 12 epochs, steps 8 / 11; "3x": 36 epochs, 27 / 33
        "help": "1x: 12 epochs; 3x: 36 epochs, multi-scale 480-800", "choices": ("1x", "3x")})
    epochs: int = field(default=12, metadata={"help": "epochs to train"})   # schedule_1x.py: max_epochs 12
    lr_steps: Tuple[int, ...] = field(default=(8, 11), metadata={   # schedule_1x.py: milestones [8, 11], gamma 0.1
        "help": "lr x0.1 after these epochs", "metavar": "EPOCH"})
    lr_gamma: float = 0.1
    batch_size: int = field(default=16, metadata={   # Swin config: 8 GPUs x 2 = global batch 16
        "help": "per process"})
    grad_accum_steps: int = field(default=1, metadata={"help": "batches accumulated into one optimizer update"})
    lr: float = field(default=1e-4, metadata={"help": "peak lr"})   # authors (issue #251); Swin's config also 1e-4
    opt: str = "adamw"                        # Swin config: AdamW, betas (0.9, 0.999), weight decay 0.05
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = field(default=0.05, metadata={   # Swin: norm decay_mult 0
        "help": "weight decay, not on norms, biases, layer scale"})
    sched: str = "step"
    min_lr: float = 0.0
    warmup_iters: int = field(default=500, metadata={   # schedule_1x.py: LinearLR start_factor 0.001, 500 iters
        "help": "linear warmup updates from 0.001 x lr"})
    warmup_ratio: float = 0.001
    min_size: int = field(default=800, metadata={"help": "shorter image side"})   # coco_instance.py: Resize (1333, 800)
    max_size: int = field(default=1333, metadata={"help": "longer image side at most"})
    multiscale: Optional[Tuple[int, int]] = None   # 3x: shorter side 480-800
    hflip: float = 0.5                        # coco_instance.py: RandomFlip 0.5
    rois_per_image: int = field(default=512, metadata={   # mask_rcnn_r50_fpn.py: rcnn sampler num 512
        "help": "RoIs sampled per image for the box/mask heads"})
    proposals: int = field(default=2000, metadata={   # torchvision: 2000
        "help": "RPN proposals kept per image in training"})
    drop_path: Optional[float] = field(default=None, metadata={   # not given by the paper
        "help": "backbone stochastic depth", "none": "per model"})
    clip_grad: Optional[float] = field(default=None, metadata={   # Swin Mask R-CNN config: none
        "help": "gradient norm clipping"})
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    seed: int = field(default=0, metadata={"help": "random seed"})

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
        from ...models.detection_variants import DETECTION_VARIANTS
        return DETECTION_VARIANTS[self.model].drop_path
