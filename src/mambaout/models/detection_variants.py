"""Detection models: a Mask R-CNN on a row of the backbone table.

Each row names a backbone of `variants.VARIANTS` and adds what only the detection
model has: the drop path its backbone is trained with on COCO and the paper's numbers
(main paper, Mask R-CNN 1x schedule on COCO: params in M and FLOPs in G at 1280 x 800,
both as printed; box AP and mask AP on val2017). Femto and Kobe have no paper numbers.

The paper's "FLOPs" are what mmdetection's tools/get_flops.py prints, i.e. multiply-adds
counted with mmcv's module table on the detector's forward_dummy (backbone, FPN and RPN
head on the image, box head on 1000 RoIs, mask head on the first 100 of them); see
analysis/complexity.py for how we reproduce that count.

Drop path: the paper does not give it for detection, and the authors' answer on official
issue #251 (Tiny 0.3, Small 0.3-0.4, Base 0.6) was about their ADE20K runs (the 160k-
iteration UperNet schedule, see segmentation_variants.py). The authors say their dense-
prediction runs follow Swin's configs, so for the much shorter Mask R-CNN 1x schedule
(12 epochs) we take Swin's detection values: 0.2 for Tiny (Swin-T's Mask R-CNN 1x
config), 0.3 for Small and Base (the value Swin's detection configs give their
Small / Base backbones' largest settings). Femto and Kobe, which the paper does not train
for detection, get 0.1 (small backbones are given less stochastic depth, as for
segmentation). These are our choices, not the paper's; pass drop_path_rate to override.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

COCO_CLASSES = 80
FLOPS_SIZE = (800, 1280)    # (H, W); the paper says 1280 x 800 (mmdet's get_flops --shape 1280 800)
FLOPS_PROPOSALS = 1000      # RoIs mmdet's forward_dummy runs the box head on
FLOPS_MASK_ROIS = 100       # ... and the mask head on (rois[:100])


@dataclass(frozen=True)
class DetVariant:
    name: str
    backbone: str                          # a row of VARIANTS
    drop_path: float                       # peak stochastic depth of the backbone when training
    paper_params_m: Optional[float] = None
    paper_flops_g: Optional[float] = None  # at FLOPS_SIZE, mmdet's get_flops (multiply-adds)
    paper_ap: Optional[Tuple[float, float]] = None  # COCO val2017 (box AP, mask AP), 1x schedule
    source: str = ""
    num_classes: int = COCO_CLASSES
    convention: str = "mmcv"               # how the paper's FLOPs were counted (analysis/complexity.py)


def _mask_rcnn(backbone, drop_path, params=None, flops=None, ap=None, source=""):
    return DetVariant(f"mask_rcnn_{backbone}", backbone, drop_path, params, flops, ap, source)


DETECTION_VARIANTS = {v.name: v for v in [
    _mask_rcnn("mambaout_femto", 0.1),
    _mask_rcnn("mambaout_kobe", 0.1),
    _mask_rcnn("mambaout_tiny", 0.2, 43, 262, (45.1, 41.0), "main paper"),
    _mask_rcnn("mambaout_small", 0.3, 65, 354, (47.4, 42.7), "main paper"),
    _mask_rcnn("mambaout_base", 0.3, 100, 495, (47.4, 43.0), "main paper"),
    # VMamba v0 (its own table, 1x): detection/configs/vssm/mask_rcnn_swin_fpn_coco_tiny.py
    # inherits Swin-T's Mask R-CNN 1x settings (drop path 0.2); FLOPs counted by fvcore.
    DetVariant("mask_rcnn_vmamba_tiny", "vmamba_tiny", 0.2, 42, 262, (46.5, 42.1), "VMamba v0",
               convention="fvcore"),
]}
