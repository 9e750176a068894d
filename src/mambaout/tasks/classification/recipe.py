"""The classification recipe as data. Defaults are Table 2 of the supplementary (ImageNet-1k).

Two values are not in Table 2 and come from the official train.py (timm 0.6.11
defaults): warmup starts at 1e-6 and cosine decay ends at 1e-5. Table 2's repeated
augmentation is off and has no field.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Optional, Tuple

from ...engine.recipe import RecipeData

# iLLaMA's soft mask schedule for its 75.0 tiny (techmonsterwang/iLLaMA, commit dfc93b9):
# main_soft.py's --soft_mask default 1.0 and scripts/train_illama_tiny_in1k.sh's
# --mask_mode soft --mask_schedule constant --cutoff_soft 50 (of 300 epochs); its log shows
# the rate 1.0 in epochs 0-49 and 0.0 from epoch 50.
ILLAMA_SOFT_MASK = (1.0, 50)


def soft_mask_schedule(epoch: int, ratio: float, cutoff: int) -> float:
    """iLLaMA's constant soft mask schedule (mask_scheduler.py, mode "soft", schedule
    "constant"): `ratio` in the epochs before `cutoff` (0-based), 0 (causal) from it on. A
    function of the epoch alone, so a resumed run finds its mask again without storing it."""
    return float(ratio) if epoch < cutoff else 0.0


@dataclass
class Recipe(RecipeData):
    # A field's metadata: "help" (with "none", what None means, and "metavar") for its flag of
    # `mambaout train`, whose help adds the default (cli/flags.py).

    # what a resumed run may change (engine/resume.py): more epochs (the schedule follows)
    resume_may_change: ClassVar[Tuple[str, ...]] = ("epochs",)
    base: str = field(default="table2", metadata={           # RECIPES: which base recipe this is
        "help": "the base recipe with --data: table2 (MambaOut's Table 2), vmamba (VMamba's own; "
                "model vmamba_tiny unless --model) or finegrained (fine-tuning on a small labelled set, "
                "Table 9); flags change it", "choices": ("table2", "vmamba", "finegrained", "digits")})
    model: str = field(default="mambaout_tiny", metadata={"help": "the variant to train"})
    img_size: int = field(default=224, metadata={"help": "input resolution"})
    epochs: int = field(default=300, metadata={"help": "epochs to train"})
    # Batch: the paper trains with a global batch of 4096. Ours is
    # processes x batch_size x grad_accum_steps; the lr is scaled linearly to it.
    batch_size: int = field(default=128, metadata={"help": "per process"})
    grad_accum_steps: int = field(default=1, metadata={"help": "batches accumulated into one optimizer update"})
    lr_base: float = field(default=4e-3, metadata={"help": "peak lr at a global batch of lr-base-size"})
    lr_base_size: int = field(default=4096, metadata={"help": "the global batch of lr-base"})
    lr: Optional[float] = field(default=None, metadata={     # overrides the scaling rule
        "help": "absolute peak lr", "none": "lr-base x global batch / lr-base-size"})
    opt: str = field(default="adamw", metadata={"help": "optimizer, a timm name"})
    opt_eps: float = field(default=1e-8, metadata={"help": "optimizer epsilon"})
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = field(default=0.05, metadata={     # not on norms, biases, layer scale
        "help": "weight decay, not on norms, biases, layer scale"})
    sched: str = "cosine"
    warmup_epochs: float = field(default=20, metadata={"help": "linear warmup epochs"})
    warmup_lr: float = field(default=1e-6, metadata={"help": "lr at the start of the warmup"})
    min_lr: float = field(default=1e-5, metadata={"help": "lr at the end of the cosine decay"})
    clip_grad: Optional[float] = field(default=None, metadata={   # Table 2: none
        "help": "gradient norm clipping"})
    auto_augment: Optional[str] = field(default="rand-m9-mstd0.5-inc1", metadata={   # RandAugment 9/0.5
        "help": "RandAugment policy, e.g. rand-m9-mstd0.5-inc1, or none"})
    mixup: float = field(default=0.8, metadata={"help": "Mixup alpha"})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha"})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "probability of CutMix instead of Mixup"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of Mixup or CutMix per batch"})
    reprob: float = field(default=0.25, metadata={"help": "random erasing probability"})
    smoothing: float = field(default=0.1, metadata={"help": "label smoothing"})
    drop_path: Optional[float] = field(default=None, metadata={   # femto .025, tiny .2, small .4, base .6
        "help": "stochastic depth", "none": "per model"})
    drop: float = field(default=0.0, metadata={"help": "head dropout"})
    model_ema: bool = field(default=False, metadata={    # Table 2: no EMA
        "help": "also keep an exponential moving average of the weights"})
    model_ema_decay: float = field(default=0.9999, metadata={"help": "decay of the weights' moving average"})
    interpolation: str = "bicubic"
    crop_pct: float = field(default=1.0, metadata={   # eval: resize to img_size / crop_pct, center crop
        "help": "eval crop fraction"})
    crop_mode: str = field(default="center", metadata={   # how the resize before the crop treats the aspect ratio
        "help": "the resize before a crop: center (the short side to img-size / crop-pct) or squash (both "
                "sides, the aspect ratio given up)", "choices": ("center", "squash")})
    train_crop: str = field(default="random-resized", metadata={
        "help": "training crop: random-resized (a random area and aspect ratio, see --scale / --ratio) or "
                "resize-random (resize as for evaluation, then a random img-size crop)",
        "choices": ("random-resized", "resize-random")})
    scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata={   # timm's default, not in Table 2
        "help": "random-resized-crop area range, fractions of the image", "metavar": ("MIN", "MAX")})
    ratio: Tuple[float, float] = field(default=(3 / 4, 4 / 3), metadata={   # timm's default
        "help": "random-resized-crop aspect-ratio range", "metavar": ("MIN", "MAX")})
    hflip: float = field(default=0.5, metadata={"help": "horizontal flip probability"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    # iLLaMA's soft mask (models with a causal attention mask only: illama_tiny_causal): the
    # mask r * ones + (1 - r) * causal for the first soft_mask_epochs epochs, then causal.
    # None: iLLaMA's schedule for such a model (task.check fills it in), off for the others.
    soft_mask_ratio: Optional[float] = field(default=None, metadata={
        "help": "iLLaMA's soft mask r, held for --soft-mask-epochs epochs, then causal (causal iLLaMA only; "
                "0 = causal throughout)", "none": f"{ILLAMA_SOFT_MASK[0]} for a causal iLLaMA",
        "metavar": "R"})
    soft_mask_epochs: Optional[int] = field(default=None, metadata={
        "help": "epochs the soft mask is held before the mask turns causal (causal iLLaMA only)",
        "none": f"{ILLAMA_SOFT_MASK[1]} for a causal iLLaMA", "metavar": "E"})

    def peak_lr(self, world_size: int = 1) -> float:
        """lr_base scaled linearly with the real global batch, unless `lr` is set."""
        if self.lr is not None:
            return self.lr
        return self.lr_base * self.global_batch(world_size) / self.lr_base_size

    def total_updates(self, updates_per_epoch: int) -> int:
        return self.epochs * updates_per_epoch

    def val_interval(self, updates_per_epoch: int) -> int:
        return updates_per_epoch                # validate after every epoch

    def soft_mask_at(self, epoch: int) -> Optional[float]:
        """The soft mask ratio of epoch `epoch` (0-based), None without a soft mask."""
        if self.soft_mask_ratio is None:
            return None
        return soft_mask_schedule(epoch, self.soft_mask_ratio, self.soft_mask_epochs or 0)

    def drop_path_rate(self) -> float:
        if self.drop_path is not None:
            return self.drop_path
        from ...models import get_variant
        return get_variant(self.model).drop_path



def digits_recipe() -> Recipe:
    """The recipe for the embedded digits set (1442 train images of 8x8 digits, shown at 32x32):
    the paper's optimiser and schedule shape, with augmentation suited to digits (no flips,
    no RandAugment/Mixup/CutMix, mild crops) and a budget of a few CPU minutes."""
    return replace(Recipe(), base="digits", model="mambaout_femto", img_size=32, epochs=20, batch_size=64,
                   lr=2e-3, warmup_epochs=2, min_lr=1e-5, auto_augment=None, mixup=0.0, cutmix=0.0,
                   reprob=0.0, hflip=0.0, scale=(0.6, 1.0), drop_path=0.0)


def vmamba_recipe() -> Recipe:
    """VMamba's own ImageNet recipe (its classification/utils/config.py, Swin's, and
    configs/vssm/vmambav0_*.yaml), as the paper's VMamba rows were trained: AdamW (eps 1e-8,
    betas 0.9 / 0.999), lr 5e-4 per 512 images scaled linearly (the same lr per image as
    Table 2's 4e-3 per 4096), 300 epochs, 20 of linear warmup, cosine, weight decay 0.05,
    gradient clipping 5.0, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, Mixup 0.8,
    CutMix 1.0, random erasing 0.25, EMA 0.9999, evaluation with a 224 / 256 center crop; drop
    path the model's (T 0.2, S 0.3, B 0.6). Swin scales its warmup start (5e-7) and final lr
    (5e-6) with the batch too; we take their values at VMamba's batch of 1024 (8 GPUs x 128),
    1e-6 and 1e-5, fixed."""
    return replace(Recipe(), base="vmamba", model="vmamba_tiny", lr_base=5e-4, lr_base_size=512,
                   clip_grad=5.0, model_ema=True, model_ema_decay=0.9999, crop_pct=0.875,
                   warmup_lr=1e-6, min_lr=1e-5)


def finegrained_recipe() -> Recipe:
    """Fine-tuning ImageNet weights on a fine-grained dataset (Table 9; `mambaout transfer`).
    Neither MambaOut nor VMamba published theirs; this is mmpretrain's CUB-200-2011 recipe
    (configs/_base_/schedules/cub_bs64.py and datasets/cub_bs8_448.py) at 224 px: SGD with
    Nesterov momentum 0.9 (timm's "sgd"), lr 0.01 at a batch of 64 scaled linearly, weight
    decay 5e-4, 100 epochs, 5 of linear warmup from 1e-4 (0.01 x lr at batch 64, fixed), cosine
    to 0; training: resize both sides to 256 (mmcv's Resize(scale=600) at 448 px, scaled by 224 / 448 -> 300; we use
    the usual 256 = 224 / 0.875), a random 224 crop, horizontal flip; test: the same resize, a
    centre crop; bilinear; plain cross entropy (no smoothing, Mixup, CutMix, RandAugment or
    erasing). Two differences from mmpretrain: no weight decay on norms, biases and layer
    scale (our optimiser's rule for every recipe), and drop path stays the model's (Tiny 0.2)."""
    return replace(Recipe(), base="finegrained", epochs=100, batch_size=64, opt="sgd", lr_base=0.01,
                   lr_base_size=64, weight_decay=5e-4, warmup_epochs=5, warmup_lr=1e-4, min_lr=0.0,
                   auto_augment=None, mixup=0.0, cutmix=0.0, reprob=0.0, smoothing=0.0, crop_pct=0.875,
                   crop_mode="squash", train_crop="resize-random", interpolation="bilinear")


# The base recipes by name (`mambaout train --recipe NAME`; Recipe.base records it).
RECIPES = {"table2": Recipe, "vmamba": vmamba_recipe, "finegrained": finegrained_recipe, "digits": digits_recipe}
