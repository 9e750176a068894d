"""Batch statistics shared by all processes under DDP (the UperNet / Mask R-CNN heads' BN).

On GPUs this is PyTorch's SyncBatchNorm. PyTorch's SyncBatchNorm refuses CPU tensors, so on
CPU (gloo) BatchNorm layers become `AllReduceBatchNorm2d`: per-channel sums and sums of
squares are all-reduced (with autograd), so N processes x batch B normalise exactly like one
process x batch N*B. Same parameters and buffers: checkpoints load either way.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        c = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                           x.new_full((1,), x.numel() // c)])
        total = all_reduce(local)                    # autograd-aware sum over processes
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of `model` synchronised across processes (no-op for a model without BN)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats).to(child.weight.device if child.affine else device)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


__all__ = ["AllReduceBatchNorm2d", "convert_sync_batchnorm"]
