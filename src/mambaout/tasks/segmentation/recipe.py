"""The UperNet (ADE20K) recipe as data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Tuple

from ...engine.recipe import RecipeData


@dataclass
class SegRecipe(RecipeData):
    """UperNet semantic segmentation on ADE20K. Sources: mmsegmentation's Swin UperNet config
    (configs/swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K.py with
    _base_/models/upernet_swin.py, _base_/datasets/ade20k.py, _base_/schedules/schedule_160k.py),
    which the authors say they followed, with their own settings from official issue #251:
    lr 1e-4 for every size (Swin's config: 6e-5), drop path 0.3 / 0.3 / 0.6 (T / S / B), no
    layer-wise lr decay, a LayerNorm on each backbone output (models/backbone.py)."""
    # A field's metadata: "help" (with "none", what None means, "metavar" and "choices") for
    # its flag of `mambaout segment train`, whose help adds the default (cli/flags.py).
    resume_may_change: ClassVar[Tuple[str, ...]] = ("iters", "val_every", "test_mode")
    model: str = field(default="upernet_mambaout_tiny", metadata={"help": "the segmentor to train"})
    num_classes: int = field(default=150, metadata={"help": "classes of your own data"})    # ADE20K
    reduce_zero_label: bool = field(default=True, metadata={   # ADE20K: label 0 = "other" -> ignored (255)
        "help": "reduction of label 0 ('other' in ADE20K) to ignored, the others one down"})
    crop_size: int = field(default=512, metadata={"help": "training crop"})   # ade20k.py: crop_size (512, 512)
    scale: Tuple[int, int] = field(default=(2048, 512), metadata={   # ade20k.py: img_scale
        "help": "random-resize base scale in training and the resize at test time", "metavar": ("W", "H")})
    ratio_range: Tuple[float, float] = field(default=(0.5, 2.0), metadata={   # ade20k.py: Resize ratio_range
        "help": "random resize ratios", "metavar": ("MIN", "MAX")})
    cat_max_ratio: float = 0.75               # ade20k.py: RandomCrop cat_max_ratio
    hflip: float = 0.5                        # ade20k.py: RandomFlip prob
    photometric: bool = field(default=True, metadata={"help": "photometric distortion"})   # ade20k.py
    iters: int = field(default=160_000, metadata={   # schedule_160k.py: max_iters
        "help": "optimizer updates in total"})
    batch_size: int = field(default=16, metadata={   # Swin: 8 GPUs x 2 = global batch 16
        "help": "per process"})
    grad_accum_steps: int = field(default=1, metadata={"help": "batches accumulated into one optimizer update"})
    lr: float = field(default=1e-4, metadata={   # authors (issue #251), absolute: not scaled with the batch
        "help": "peak lr"})
    opt: str = "adamw"                        # Swin config: AdamW, betas (0.9, 0.999), weight decay 0.01
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = field(default=0.01, metadata={   # Swin: custom_keys norm decay_mult 0
        "help": "weight decay, not on norms, biases, layer scale"})
    sched: str = "poly"                       # Swin config: lr_config policy poly, power 1.0, min_lr 0,
    poly_power: float = 1.0                   #   by_epoch False, linear warmup 1500 iters from ratio 1e-6
    min_lr: float = field(default=0.0, metadata={"help": "lr at the end of the poly decay"})
    warmup_iters: int = field(default=1500, metadata={"help": "linear warmup updates"})
    warmup_ratio: float = 1e-6
    drop_path: Optional[float] = field(default=None, metadata={   # authors: T 0.3, S 0.3, B 0.6
        "help": "backbone stochastic depth", "none": "per model"})
    aux_weight: float = field(default=0.4, metadata={   # upernet_swin.py: auxiliary FCNHead loss_weight
        "help": "auxiliary FCN head loss weight"})
    head_channels: int = field(default=512, metadata={   # upernet_swin.py: UPerHead channels
        "help": "UperNet decode head width"})
    aux_channels: int = field(default=256, metadata={   # upernet_swin.py: FCNHead channels
        "help": "auxiliary FCN head width"})
    head_dropout: float = field(default=0.1, metadata={   # upernet_swin.py: dropout_ratio of both heads
        "help": "dropout before the heads' classifiers"})
    val_every: int = field(default=16_000, metadata={   # schedule_160k.py: evaluation interval
        "help": "validate every N updates"})
    test_mode: str = field(default="whole", metadata={   # upernet_swin.py: test_cfg mode 'whole'
        "help": "validation inference", "choices": ("whole", "slide")})
    clip_grad: Optional[float] = field(default=None, metadata={   # Swin config: none
        "help": "gradient norm clipping"})
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    seed: int = field(default=0, metadata={"help": "random seed"})

    def peak_lr(self, world_size: int = 1) -> float:
        return self.lr

    def total_updates(self, updates_per_epoch: int) -> int:
        return self.iters                       # iteration-based, as mmseg counts

    def val_interval(self, updates_per_epoch: int) -> int:
        return self.val_every

    def drop_path_rate(self) -> float:
        if self.drop_path is not None:
            return self.drop_path
        from ...models.segmentation_variants import SEGMENTATION_VARIANTS
        return SEGMENTATION_VARIANTS[self.model].drop_path
