"""Optimizer and learning-rate schedule from a recipe's fields (any task's recipe)."""
from __future__ import annotations

import torch.nn as nn

from ..errors import MambaOutError


def build_optimizer(model: nn.Module, recipe, lr: float):
    """recipe.opt through timm (AdamW for every paper recipe), no weight decay on 1-d
    parameters (norms, biases, layer scale) nor on what the model's no_weight_decay() names;
    layer-wise lr decay where the recipe has a `layer_decay` (timm's, by the model's
    group_matcher: the video recipe, as VideoMamba fine-tunes)."""
    from timm.optim import create_optimizer_v2
    kw = dict(eps=recipe.opt_eps, betas=tuple(recipe.opt_betas)) if "adam" in recipe.opt.lower() else {}
    layer_decay = getattr(recipe, "layer_decay", None)
    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise MambaOutError(f"{type(model).__name__} has no layer groups for --layer-decay: pass --layer-decay none")
        kw["layer_decay"] = layer_decay
    return create_optimizer_v2(model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay, **kw)


def build_scheduler(optimizer, recipe, updates_per_epoch: int):
    """Stepped per optimizer update (`step_update(n)` sets the lr for update n+1), over
    recipe.total_updates(updates_per_epoch) updates:
      "cosine": linear warmup from warmup_lr for warmup_epochs, then cosine to min_lr (Table 2);
      "poly":   linear warmup from warmup_ratio x lr for warmup_iters, then (1 - t)^power decay
                to min_lr (mmseg's PolyLR, as the Swin UperNet configs use it);
      "step":   linear warmup from warmup_ratio x lr for warmup_iters, lr x lr_gamma at the
                start of each epoch in lr_steps (mmdet's 1x / 3x schedules)."""
    total = recipe.total_updates(updates_per_epoch)
    if recipe.sched == "cosine":
        from timm.scheduler import CosineLRScheduler
        return CosineLRScheduler(optimizer, t_initial=total, lr_min=recipe.min_lr,
                                 warmup_t=round(recipe.warmup_epochs * updates_per_epoch),
                                 warmup_lr_init=recipe.warmup_lr, t_in_epochs=False)
    if recipe.sched == "poly":
        from timm.scheduler import PolyLRScheduler
        peak = optimizer.param_groups[0]["lr"]
        return PolyLRScheduler(optimizer, t_initial=total, power=recipe.poly_power, lr_min=recipe.min_lr,
                               warmup_t=recipe.warmup_iters, warmup_lr_init=peak * recipe.warmup_ratio,
                               warmup_prefix=False, t_in_epochs=False)
    if recipe.sched == "step":
        from timm.scheduler import MultiStepLRScheduler
        peak = optimizer.param_groups[0]["lr"]
        # timm applies milestone m at index m - 1; index n sets the lr of update n + 1, so a
        # milestone of e x updates_per_epoch + 1 decays from the first update after epoch e.
        return MultiStepLRScheduler(optimizer, decay_t=[round(e * updates_per_epoch) + 1 for e in recipe.lr_steps],
                                    decay_rate=recipe.lr_gamma, warmup_t=recipe.warmup_iters,
                                    warmup_lr_init=peak * recipe.warmup_ratio, warmup_prefix=False,
                                    t_in_epochs=False)
    raise MambaOutError(f"unknown schedule {recipe.sched!r}: the recipes use 'cosine', 'poly' or 'step'")
