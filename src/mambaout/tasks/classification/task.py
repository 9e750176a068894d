"""Image classification as a task of the training engine: ImageFolder / CIFAR / the fine-grained
datasets as they ship / embedded digits data, a MambaOut classifier, Mixup/CutMix and label
smoothing, top-1/top-5 evaluation."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ...data import build_datasets, collate_skip_bad, recipe_transforms
from ...errors import CheckpointError, MambaOutError
from ...data.loader import eval_loader
from ...engine.losses import batch_loss, mixup_and_criterion
from .evaluate import evaluate
from ...models import create_model, get_variant
from ...models.hub import is_hub_name, read_config
from .recipe import ILLAMA_SOFT_MASK, Recipe
from ...utils import absolute


class ClassificationTask:
    name = "classification"
    command = "train"
    score_key = "top1"
    metric_keys = ("top1", "top5")
    per_epoch = True

    def __init__(self, recipe: Recipe, data: Optional[str] = None, dataset: Optional[str] = None):
        # dataset: which fine-grained set `data` holds (cub, cars, ...); None: recognised from its files
        self.recipe, self.data, self.dataset = recipe, data, dataset
        self.classes = None
        self._val_loader = None
        self.weights_from = None       # a model folder / hub repo whose weights --pretrained starts from

    def check(self):
        r = self.recipe
        if is_hub_name(r.model):
            # 'local-dir:' / 'hf-hub:': its architecture trains (and is recorded); --pretrained
            # starts from its weights (models/hub.py)
            self.weights_from = r.model
            extra = read_config(r.model).constructor_args()
            if extra:
                raise MambaOutError(f"{r.model} was built with options a training recipe cannot record "
                                    f"({', '.join(sorted(extra))}): fine-tune it with the library")
        r.model = get_variant(r.model).name
        if r.epochs <= 0 or r.img_size <= 0:
            raise MambaOutError("--epochs and --img-size must be positive")
        if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
            raise MambaOutError(f"--batch-size must be even with mixup/cutmix (got {r.batch_size})")
        if not 0 < r.scale[0] <= r.scale[1] <= 1:
            raise MambaOutError(f"--scale needs 0 < MIN <= MAX <= 1 (fractions of the image area), got {r.scale}")
        if not 0 < r.ratio[0] <= r.ratio[1]:
            raise MambaOutError(f"--ratio needs 0 < MIN <= MAX (crop aspect ratios), got {r.ratio}")
        self._check_soft_mask()

    def _check_soft_mask(self):
        """iLLaMA's soft mask (recipe.soft_mask_*): a model with a causal mask gets iLLaMA's
        schedule where the recipe leaves it open (filled in, so checkpoints record it); for any
        other model setting it is an error."""
        r = self.recipe
        v = get_variant(r.model)
        if not (v.arch == "illama" and v.extra.get("causal")):
            if r.soft_mask_ratio is not None or r.soft_mask_epochs is not None:
                raise MambaOutError(f"--soft-mask-ratio / --soft-mask-epochs apply to a model with a causal "
                                    f"attention mask (illama_tiny_causal); {r.model} has none")
            return
        if r.soft_mask_ratio is None:
            r.soft_mask_ratio = ILLAMA_SOFT_MASK[0]
        if r.soft_mask_epochs is None:
            r.soft_mask_epochs = ILLAMA_SOFT_MASK[1]
        if not 0 <= r.soft_mask_ratio <= 1:
            raise MambaOutError(f"--soft-mask-ratio must be in [0, 1] (0: causal, 1: fully visible), "
                                f"got {r.soft_mask_ratio}")
        if r.soft_mask_epochs < 0:
            raise MambaOutError(f"--soft-mask-epochs must be >= 0, got {r.soft_mask_epochs}")
        if r.soft_mask_ratio > 0 and r.soft_mask_epochs >= r.epochs:
            raise MambaOutError(
                f"{r.model}: the soft mask is held for {r.soft_mask_epochs} epochs, which leaves none of the "
                f"run's {r.epochs} causal (the saved model is evaluated causal): give --soft-mask-epochs "
                f"below {r.epochs} (iLLaMA: {ILLAMA_SOFT_MASK[1]} of 300), or --soft-mask-ratio 0")

    def start_epoch(self, epoch: int, models):
        """The engine's per-epoch hook: the soft mask ratio of `epoch` on the trained model and
        its EMA (validation after the epoch then sees the mask the epoch trained with, as in
        iLLaMA's main_soft.py). Derived from the epoch, so a resumed run sets it again."""
        ratio = self.recipe.soft_mask_at(epoch)
        if ratio is not None:
            for model in models:
                model.set_soft_mask(ratio)

    def check_resume(self, obj: dict, path: str):
        if obj.get("img_size") not in (None, self.recipe.img_size):
            raise CheckpointError(f"cannot resume: {path} was trained at {obj['img_size']}px, "
                                  f"this run uses {self.recipe.img_size}px")

    # ---- data -----------------------------------------------------------------------------------
    def build_data(self):
        train_tf, eval_tf = recipe_transforms(self.recipe)
        self.train_set, self.val_set, self.classes = build_datasets(self.data, self.recipe.img_size,
                                                                    train_tf, eval_tf, dataset=self.dataset)
        return self.train_set, self.val_set

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    collate = staticmethod(collate_skip_bad)

    # ---- model and loss -------------------------------------------------------------------------
    def build_model(self, pretrained: bool, initial_checkpoint: Optional[str]) -> nn.Module:
        r = self.recipe
        name = self.weights_from if pretrained and self.weights_from else r.model
        model = create_model(name, num_classes=self.num_classes, img_size=r.img_size,
                             drop_path_rate=r.drop_path_rate(), drop_rate=r.drop, pretrained=pretrained,
                             checkpoint_path=initial_checkpoint)
        self.mixup, self.criterion = mixup_and_criterion(self.num_classes, r.mixup, r.cutmix, r.smoothing,
                                                         r.mixup_prob, r.mixup_switch_prob)
        return model

    def train_inputs(self, batch, device):
        images, targets, _ = batch
        if images is None:     # a whole micro-batch of unreadable files
            images = torch.zeros(0, 3, self.recipe.img_size, self.recipe.img_size)
            targets = torch.zeros(0, dtype=torch.long)
        if self.mixup is not None and len(images) % 2:
            images, targets = images[:-1], targets[:-1]   # timm's Mixup needs even batches
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if self.mixup is not None and len(images):
            images, targets = self.mixup(images, targets)
        return images, targets

    def forward_loss(self, model, inputs, targets):
        return self.loss(model(inputs), targets)

    def loss(self, logits, targets):
        return batch_loss(self.criterion, logits, targets)

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model, d, amp_dtype, channels_last, workers, batch_size):
        if self._val_loader is None:
            self._val_loader = eval_loader(self.val_set, d, batch_size or 2 * self.recipe.batch_size, workers, collate_skip_bad)
        return evaluate(model, self._val_loader, d, amp_dtype, channels_last)

    @staticmethod
    def describe(m: dict) -> str:
        return f"val loss {m['loss']:.4f}, top-1 {m['top1']:.2f}%, top-5 {m['top5']:.2f}%"

    @staticmethod
    def row(m: dict) -> dict:
        return {"val_loss": m["loss"], "top1": m["top1"], "top5": m["top5"]}

    def checkpoint_meta(self) -> dict:
        return {"class_names": list(self.classes), "img_size": self.recipe.img_size}

    def data_source(self) -> dict:
        source = {"data": absolute(self.data)}
        if self.dataset:        # only when named, so runs from before --dataset existed still resume
            source["dataset"] = self.dataset
        return source
