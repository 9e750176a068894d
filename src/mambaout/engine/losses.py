"""Mixup / CutMix and the loss that goes with them, for any task that classifies (images, clips)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn


def mixup_and_criterion(num_classes: int, mixup: float, cutmix: float, smoothing: float,
                        prob: float = 1.0, switch_prob: float = 0.5) -> Tuple[Optional[object], nn.Module]:
    """timm's Mixup (None when both alphas are 0) and the criterion for its targets: soft-target
    cross-entropy with mixing, else label smoothing, else plain cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    mix = None
    if mixup > 0 or cutmix > 0:
        from timm.data import Mixup
        mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob,
                    label_smoothing=smoothing, num_classes=num_classes)
    criterion = (SoftTargetCrossEntropy() if mix else
                 LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss())
    return mix, criterion


def batch_loss(criterion: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The criterion in fp32; an empty micro-batch still runs backward (every DDP process must),
    with a zero loss."""
    return criterion(logits.float(), targets) if len(logits) else logits.sum() * 0
