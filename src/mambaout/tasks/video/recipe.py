"""The video recipe as data. Defaults are VideoMamba-Ti's Something-Something V2 fine-tuning
(OpenGVLab/VideoMamba, videomamba/video_sm/exp/ssv2/videomamba_tiny/run_f8x224.sh with the
defaults of run_class_finetuning.py): 8 frames at 224, AdamW (0.9, 0.999), lr 4e-4 per 256
clips (batch x processes x num_sample; warmup from and decay to 4e-6, their values at 1024 clips), 35 epochs with 5 of
warmup, weight decay 0.1, layer-wise lr decay 0.75, drop path 0.1, RandAugment
rand-m5-n2-mstd0.25-inc1 (one draw per video), Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
random erasing 0.25 (per frame), repeated augmentation 2 (each video decoded once, augmented
twice), random-resized crops of 8-100% of the area (bilinear), no flips (SSV2's labels say "left"
and "right"), test 2 clips x 3 crops (short side 224), bf16 (`--amp`). VideoMamba's model zoo
says 8x3x4 views for SSV2; its run script tests 2 x 3, the protocol Table 10 follows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Optional, Tuple

from ...engine.recipe import RecipeData


@dataclass
class VideoRecipe(RecipeData):
    resume_may_change: ClassVar[Tuple[str, ...]] = ("epochs",)
    model: str = field(default="videomamba_tiny", metadata={"help": "the video model to train"})
    num_frames: int = field(default=8, metadata={"help": "frames per clip (TSN segments)"})
    img_size: int = field(default=224, metadata={"help": "input resolution"})
    epochs: int = field(default=35, metadata={"help": "epochs to train"})
    batch_size: int = field(default=64, metadata={"help": "videos per process (each seen num-sample times)"})
    num_sample: int = field(default=2, metadata={"help": "repeated augmentation: clips drawn per video per batch"})
    grad_accum_steps: int = field(default=1, metadata={"help": "batches accumulated into one optimizer update"})
    lr_base: float = field(default=4e-4, metadata={"help": "peak lr per lr-base-size clips"})
    lr_base_size: int = field(default=256, metadata={"help": "clips (videos x num-sample) of lr-base"})
    lr: Optional[float] = field(default=None, metadata={
        "help": "absolute peak lr", "none": "lr-base x clips per update / lr-base-size"})
    opt: str = field(default="adamw", metadata={"help": "optimizer, a timm name"})
    opt_eps: float = 1e-8
    opt_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = field(default=0.1, metadata={"help": "weight decay, not on norms, biases, embeddings"})
    layer_decay: Optional[float] = field(default=0.75, metadata={
        "help": "layer-wise lr decay (timm's; models with per-layer groups)", "none": "off"})
    sched: str = "cosine"
    warmup_epochs: float = field(default=5, metadata={"help": "linear warmup epochs"})
    # VideoMamba scales its warmup start and final lr (1e-6 each) with the batch too; we take their
    # values at its batch (8 GPUs x 64 videos x 2 samples = 1024 clips: 4e-6), fixed, as for VMamba.
    warmup_lr: float = field(default=4e-6, metadata={"help": "lr at the start of the warmup"})
    min_lr: float = field(default=4e-6, metadata={"help": "lr at the end of the cosine decay"})
    clip_grad: Optional[float] = field(default=None, metadata={"help": "gradient norm clipping"})
    auto_augment: Optional[str] = field(default="rand-m5-n2-mstd0.25-inc1", metadata={
        "help": "RandAugment policy (one draw per video), or none"})
    scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata={
        "help": "random-resized-crop area range", "metavar": ("MIN", "MAX")})
    hflip: float = field(default=0.0, metadata={"help": "horizontal flip probability (0 for SSV2: direction is the label)"})
    mixup: float = field(default=0.8, metadata={"help": "Mixup alpha"})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha"})
    smoothing: float = field(default=0.1, metadata={"help": "label smoothing"})
    reprob: float = field(default=0.25, metadata={"help": "random erasing probability (per clip)"})
    drop_path: float = field(default=0.1, metadata={"help": "stochastic depth"})
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    test_clips: int = field(default=2, metadata={"help": "clips per video in the full test (eval --views full)"})
    test_crops: int = field(default=3, metadata={"help": "crops per clip in the full test"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def clips_per_update(self, world_size: int = 1) -> int:
        return self.global_batch(world_size) * self.num_sample

    def peak_lr(self, world_size: int = 1) -> float:
        """lr_base scaled linearly with the clips of one update (VideoMamba's rule), unless `lr` is set."""
        if self.lr is not None:
            return self.lr
        return self.lr_base * self.clips_per_update(world_size) / self.lr_base_size

    def total_updates(self, updates_per_epoch: int) -> int:
        return self.epochs * updates_per_epoch

    def val_interval(self, updates_per_epoch: int) -> int:
        return updates_per_epoch


def moving_digits_recipe() -> VideoRecipe:
    """The embedded default (no --data): 8-frame clips of moving digits at 32 px (7 motions),
    MambaOut-Femto-video from scratch for a few CPU minutes: AdamW at lr 2e-3, no RandAugment,
    Mixup, CutMix, erasing, flips or layer decay (each would blur what the clips are about: a
    flip turns "left" into "right")."""
    return replace(VideoRecipe(), model="mambaout_femto_video", img_size=32, epochs=6, batch_size=32, num_sample=1,
                   lr=2e-3, layer_decay=None, warmup_epochs=1, auto_augment=None, mixup=0.0, cutmix=0.0,
                   smoothing=0.0, reprob=0.0, drop_path=0.0, scale=(0.7, 1.0), test_clips=1, test_crops=1)


RECIPES = {"ssv2": VideoRecipe, "digits": moving_digits_recipe}
