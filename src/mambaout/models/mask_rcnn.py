"""Mask R-CNN on a MambaOut backbone, built from torchvision's detection components.

Shape of the model (the usual Mask R-CNN with FPN, as mmdetection's Swin / ConvNeXt
configs use it; torchvision's defaults have the same parts):

- backbone: `MambaOutFPN`: the MambaOut stem and 4 stages with a LayerNorm on each
  output (backbone.py, as the authors did, official issue #251), then torchvision's
  FeaturePyramidNetwork (256 channels: 1x1 lateral and 3x3 output convs, both with bias,
  nearest top-down upsampling) with LastLevelMaxPool, giving maps "0".."3" at strides
  4..32 and "pool" at stride 64.
- RPN: torchvision's RPNHead (a 3x3 conv + ReLU, 3 anchors per position: sizes 32..512
  over the 5 levels, ratios 0.5 / 1 / 2).
- RoI heads: MultiScaleRoIAlign on maps "0".."3" (7x7 for boxes, 14x14 for masks,
  sampling ratio 2), TwoMLPHead (two 1024-wide fc layers) + FastRCNNPredictor, and the
  4-conv MaskRCNNHeads (256 channels) + MaskRCNNPredictor (2x deconv, 1x1 conv to
  per-class mask logits).

torchvision's interface: in train mode `model(images, targets)` takes a list of 3 x H x W
float images in [0, 1] (any sizes) and a list of dicts {"boxes": N x 4 float x1y1x2y2
in pixels, "labels": N int64 in 1..num_classes, "masks": N x H x W uint8} and returns
the loss dict (loss_classifier, loss_box_reg, loss_mask, loss_objectness,
loss_rpn_box_reg); in eval mode `model(images)` returns per image {"boxes", "labels",
"scores", "masks": N x 1 x H x W probabilities at the input size}. The model resizes
each image so that its short side is min_size (long side at most max_size),
normalises it with the ImageNet mean / std and pads the batch to a multiple of 32.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import MambaOutError
from .backbone import MambaOutBackbone, create_backbone
from .detection_variants import DETECTION_VARIANTS, FLOPS_MASK_ROIS, FLOPS_PROPOSALS, DetVariant
from .registry import unknown_model
from .weights import extract_state_dict, fit_state_dict, read_checkpoint

# Keys of a whole detector's state dict (a classification or backbone checkpoint has none).
DETECTOR_PREFIXES = ("backbone.body.", "backbone.fpn.", "rpn.", "roi_heads.")
FPN_CHANNELS = 256


class MambaOutFPN(nn.Module):
    """MambaOut backbone + torchvision's FPN: N x 3 x H x W -> OrderedDict of 256-channel maps
    "0", "1", "2", "3" (strides 4, 8, 16, 32: ceil(H / s) x ceil(W / s)) and "pool" (stride 64).
    Module names follow torchvision's BackboneWithFPN (`body`, `fpn`)."""

    def __init__(self, body: MambaOutBackbone, out_channels: int = FPN_CHANNELS):
        super().__init__()
        if len(body.out_channels) != 4:
            raise ValueError(f"Mask R-CNN needs the backbone's 4 stages, got out_indices {body.out_indices}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class MambaOutMaskRCNN(MaskRCNN):
    """torchvision's MaskRCNN (unchanged behaviour) plus `forward_dummy`, the pass whose
    multiply-adds the paper reports (see analysis/complexity.py)."""

    @torch.no_grad()
    def forward_dummy(self, images: torch.Tensor, num_proposals: int = FLOPS_PROPOSALS,
                      num_mask_rois: int = FLOPS_MASK_ROIS) -> Tuple[torch.Tensor, ...]:
        """mmdetection's forward_dummy (two_stage.py / standard_roi_head.py): backbone, FPN
        and RPN head on an already normalised batch `images` (no resizing), then the box
        head on `num_proposals` RoIs and the mask head on the first `num_mask_rois` of them.
        RoIAlign counts nothing in mmcv's table and its output shape does not depend on the
        boxes, so the pooled features are made directly at their shape (zeros), which also
        runs on the meta device. Returns (objectness..., box deltas..., class logits, box
        regression, mask logits)."""
        feats = self.backbone(images)
        objectness, deltas = self.rpn.head(list(feats.values()))
        channels = self.backbone.out_channels
        box_size = tuple(self.roi_heads.box_roi_pool.output_size)
        mask_size = tuple(self.roi_heads.mask_roi_pool.output_size)
        box_feats = images.new_zeros(num_proposals, channels, *box_size)
        logits, boxes = self.roi_heads.box_predictor(self.roi_heads.box_head(box_feats))
        mask_feats = images.new_zeros(min(num_mask_rois, num_proposals), channels, *mask_size)
        masks = self.roi_heads.mask_predictor(self.roi_heads.mask_head(mask_feats))
        return (*objectness, *deltas, logits, boxes, masks)


def get_detection_variant(name: str) -> DetVariant:
    if name not in DETECTION_VARIANTS:
        raise unknown_model(name)
    return DETECTION_VARIANTS[name]


# MaskRCNN / FasterRCNN constructor options a caller may pass through **kw (thresholds,
# detections per image, RPN sizes, ...); the parts themselves are fixed here.
_FIXED = {"self", "backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std",
          "box_batch_size_per_image", "rpn_post_nms_top_n_train", "kwargs"}
_DETECTOR_OPTIONS = (set(inspect.signature(MaskRCNN.__init__).parameters)
                     | set(inspect.signature(MaskRCNN.__mro__[1].__init__).parameters)) - _FIXED


def create_mask_rcnn(name: str, num_classes: int = 80, pretrained: bool = False, checkpoint_path=None,
                     drop_path_rate: Optional[float] = None, min_size: int = 800, max_size: int = 1333,
                     rois_per_image: int = 512, rpn_post_nms_top_n_train: int = 2000,
                     **kw) -> MambaOutMaskRCNN:
    """Build `mask_rcnn_<backbone>` (see DETECTION_VARIANTS) as a torchvision MaskRCNN.

    num_classes: object categories (80 for COCO), background not included; the box and mask
        predictors get num_classes + 1 outputs (index 0 is background), so target labels
        are 1..num_classes.
    pretrained: load the backbone's released ImageNet weights (same hub path as
        create_backbone); FPN and heads start fresh.
    checkpoint_path: either a classification checkpoint for the backbone (any layout
        `load_checkpoint` reads, or a MambaOutBackbone state dict) or a whole detector state
        dict (keys `backbone.body.*`, `backbone.fpn.*`, `rpn.*`, `roi_heads.*`, plain or
        wrapped, e.g. a training checkpoint), told apart by its keys; both load strictly.
    drop_path_rate: None means 0, as in create_model; the detection training value is
        DETECTION_VARIANTS[name].drop_path.
    min_size / max_size: the resize of torchvision's GeneralizedRCNNTransform (short side /
        long-side cap; COCO: 800 / 1333).
    rois_per_image: RoIs sampled per image for the box head in training (box_batch_size_per_image).
    rpn_post_nms_top_n_train: proposals kept per image after the RPN's NMS in training
        (the CLI's --proposals); rpn_pre_nms_top_n_train is raised to at least this.
    kw: MaskRCNN constructor options (box_score_thresh, box_detections_per_img,
        rpn_post_nms_top_n_test, ...) go to MaskRCNN, the rest are MambaOut backbone options
        (kernel_size, ...). Images are RGB: in_chans must be 3.
    The model carries `variant`, `num_classes` (categories, background excluded) and `in_chans`.
    """
    v = get_detection_variant(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
        raise MambaOutError(f"num_classes must be a positive integer, got {num_classes!r}")
    sizes = min_size if isinstance(min_size, (tuple, list)) and min_size else (min_size,)  # tuple: multi-scale
    for option, value in (*(("min_size", s) for s in sizes), ("max_size", max_size),
                          ("rois_per_image", rois_per_image), ("rpn_post_nms_top_n_train", rpn_post_nms_top_n_train)):
        if not isinstance(value, int) or value <= 0:
            raise MambaOutError(f"{option} must be a positive integer, got {value!r}")
    if kw.get("in_chans", 3) != 3:
        raise MambaOutError(f"Mask R-CNN takes RGB images (in_chans 3), got in_chans {kw['in_chans']}")
    detector_kw = {k: kw.pop(k) for k in list(kw) if k in _DETECTOR_OPTIONS}
    detector_kw["rpn_pre_nms_top_n_train"] = max(detector_kw.get("rpn_pre_nms_top_n_train", 2000),
                                                 rpn_post_nms_top_n_train)

    sd = extract_state_dict(read_checkpoint(checkpoint_path)) if checkpoint_path is not None else None
    whole = sd is not None and any(k.startswith(DETECTOR_PREFIXES) for k in sd)
    body = create_backbone(v.backbone, pretrained=pretrained and sd is None,
                           drop_path_rate=drop_path_rate or 0.0, **kw)
    if sd is not None and not whole:
        body.load_classification_state_dict(sd, source=f"checkpoint {checkpoint_path}")
    model = MambaOutMaskRCNN(MambaOutFPN(body), num_classes=num_classes + 1, min_size=min_size,
                             max_size=max_size, image_mean=list(IMAGENET_DEFAULT_MEAN),
                             image_std=list(IMAGENET_DEFAULT_STD), box_batch_size_per_image=rois_per_image,
                             rpn_post_nms_top_n_train=rpn_post_nms_top_n_train, **detector_kw)
    if whole:
        fit_state_dict(model, sd, source=f"checkpoint {checkpoint_path}")
    model.variant = v.name
    model.num_classes = num_classes
    model.in_chans = body.in_chans
    return model
