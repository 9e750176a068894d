"""UperNet on a MambaOut backbone, shaped as mmsegmentation's Swin / ConvNeXt configs use it.

Decode head (UPerHead, 512 channels): a pyramid pooling module on the stride-32 map
(adaptive average pools to 1, 2, 3, 6 cells, each a 1x1 conv, upsampled back and
concatenated with the map, then a 3x3 conv), 1x1 lateral convs on the other three
maps, a top-down pathway adding each level upsampled onto the next finer one, a 3x3
conv on each of the three finer levels, all four levels upsampled to stride 4 and
concatenated, a 3x3 `fpn_bottleneck`, 2D dropout 0.1 and a 1x1 classifier `conv_seg`.
Auxiliary head (FCNHead, 256 channels) on the stride-16 map: one 3x3 conv, dropout
0.1, 1x1 classifier; its loss is weighted by 0.4 during training and it is not run
at inference. Every conv except the classifiers is conv (no bias) -> BatchNorm ->
ReLU; for multi-GPU training the engine converts the BatchNorms to synchronised ones
(engine/syncbn.py: SyncBatchNorm on GPUs, an all-reduce BatchNorm on CPU). Upsampling is bilinear with
align_corners=False throughout. Module names follow mmsegmentation's
(`decode_head.psp_modules`, `lateral_convs`, `fpn_convs`, `fpn_bottleneck`, ...).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MambaOutError
from .backbone import MambaOutBackbone, create_backbone
from .registry import unknown_model
from .segmentation_variants import SEGMENTATION_VARIANTS, SegVariant
from .weights import extract_state_dict, fit_state_dict, read_checkpoint

SEGMENTOR_PREFIXES = ("backbone.", "decode_head.", "auxiliary_head.")


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU, mmcv's ConvModule with the names conv / bn / activate."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class PyramidPooling(nn.ModuleList):
    """Pool to s x s cells for each scale, 1x1 conv, upsample back; returns [x] + the pooled maps."""

    def __init__(self, in_chans: int, channels: int, pool_scales: Sequence[int]):
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_chans, channels))
                         for s in pool_scales)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x] + [resize(stage(x), x.shape[2:]) for stage in self]


class SegHead(nn.Module):
    """What both heads end with: Dropout2d, then a 1x1 conv `conv_seg` to class logits."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(SegHead):
    """Pyramid pooling on the coarsest map + FPN over all maps, fused at the finest stride."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        *fine, coarsest = in_channels
        self.psp_modules = PyramidPooling(coarsest, channels, pool_scales)
        self.bottleneck = ConvBNReLU(coarsest + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels) for c in fine)
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in fine)
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Maps at strides 4 / 8 / 16 / 32 -> logits at stride 4."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.bottleneck(torch.cat(self.psp_modules(feats[-1]), dim=1)))
        for i in range(len(laterals) - 1, 0, -1):               # top-down: coarse onto fine
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(x, size) for x in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(SegHead):
    """Auxiliary head: one 3x3 conv-BN-ReLU and the classifier, at the input map's stride."""

    def __init__(self, in_chans: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.convs = nn.Sequential(ConvBNReLU(in_chans, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class UperNetSegmentor(nn.Module):
    """Backbone + UPerHead + auxiliary FCNHead.

    eval mode: model(images N x 3 x H x W) -> logits N x num_classes x H x W (upsampled
        bilinearly to the input size).
    train mode: model(images) -> {"out": decode-head logits at stride 4 (ceil(H/4) x ceil(W/4)),
        "aux": auxiliary logits at stride 16}, neither upsampled, so that the loss can
        resize them to the label size: loss = CE(up(out)) + aux_weight * CE(up(aux)).

    Args:
        backbone: a 4-output MambaOutBackbone (strides 4, 8, 16, 32).
        num_classes: segmentation classes (150 for ADE20K).
        channels / aux_channels: widths of the decode / auxiliary heads (512 / 256).
        aux_index: backbone output the auxiliary head reads (2: stride 16).
        aux_weight: weight of the auxiliary loss (0.4), stored for the training code.
    """

    def __init__(self, backbone: MambaOutBackbone, num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), aux_channels: int = 256, aux_index: int = 2,
                 aux_weight: float = 0.4, dropout: float = 0.1):
        super().__init__()
        if len(backbone.out_channels) != 4:
            raise ValueError(f"UperNet needs the backbone's 4 stages, got out_indices {backbone.out_indices}")
        self.num_classes = num_classes
        self.in_chans = backbone.in_chans
        self.aux_index = aux_index
        self.aux_weight = aux_weight
        self.backbone = backbone
        self.decode_head = UPerHead(backbone.out_channels, num_classes, channels, pool_scales, dropout)
        self.auxiliary_head = FCNHead(backbone.out_channels[aux_index], num_classes, aux_channels, dropout)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        feats = self.backbone(x)
        out = self.decode_head(feats)
        if not self.training:
            return resize(out, x.shape[2:])
        return {"out": out, "aux": self.auxiliary_head(feats[self.aux_index])}


def get_segmentation_variant(name: str) -> SegVariant:
    if name not in SEGMENTATION_VARIANTS:
        raise unknown_model(name)
    return SEGMENTATION_VARIANTS[name]


def create_upernet(name: str, num_classes: Optional[int] = None, pretrained: bool = False,
                   checkpoint_path=None, drop_path_rate: Optional[float] = None, channels: int = 512,
                   aux_channels: int = 256, dropout: float = 0.1, **backbone_kwargs) -> UperNetSegmentor:
    """Build `upernet_<backbone>` (see SEGMENTATION_VARIANTS).

    num_classes: default 150 (ADE20K).
    pretrained: load the backbone's released ImageNet weights (heads start fresh).
    checkpoint_path: either a classification checkpoint for the backbone (any layout
        `load_checkpoint` reads) or a whole segmentation state dict (keys `backbone.*`,
        `decode_head.*`, `auxiliary_head.*`, plain or wrapped, e.g. a training checkpoint),
        told apart by its keys; both load strictly.
    drop_path_rate: None means 0, as in create_model; the segmentation training value is
        SEGMENTATION_VARIANTS[name].drop_path.
    channels / aux_channels: decode / auxiliary head widths (the paper's 512 / 256; smaller
        heads suit small images, e.g. the embedded digits recipe).
    dropout: before each head's classifier (mmseg's dropout_ratio 0.1).
    backbone_kwargs: MambaOut constructor options for the backbone (in_chans, ...).
    """
    v = get_segmentation_variant(name)
    num_classes = v.num_classes if num_classes is None else num_classes
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise MambaOutError(f"num_classes must be a positive integer, got {num_classes!r}")
    sd = extract_state_dict(read_checkpoint(checkpoint_path)) if checkpoint_path is not None else None
    whole = sd is not None and any(k.startswith(SEGMENTOR_PREFIXES) for k in sd)
    backbone = create_backbone(v.backbone, pretrained=pretrained and sd is None,
                               drop_path_rate=drop_path_rate or 0.0, **backbone_kwargs)
    if sd is not None and not whole:
        backbone.load_classification_state_dict(sd, source=f"checkpoint {checkpoint_path}")
    model = UperNetSegmentor(backbone, num_classes, channels=channels, aux_channels=aux_channels, dropout=dropout)
    if whole:
        fit_state_dict(model, sd, source=f"checkpoint {checkpoint_path}")
    model.variant = v.name
    return model
