"""Segmentation models: a UperNet head on a row of the backbone table.

Each row names a backbone of `variants.VARIANTS` and adds what only the segmentation
model has: the drop path its backbone is trained with on ADE20K and the paper's
numbers (UperNet, ADE20K; params in M and MACs in G at 512 x 2048, both as printed,
MACs counted as mmcv's get_flops does, see analysis/complexity.py; mIoU single- and
multi-scale). Sources: the main paper's ADE20K table (Tiny, Small, Base) and
supplementary Table 3 (Tiny with depthwise kernel 3 / 5 / 7 / 9 / 11; kernel 7 is
MambaOut-Tiny). Femto and Kobe have no paper numbers.

VMamba-T's and LocalVMamba-T's rows carry their own papers' numbers, with MACs counted by fvcore
as VMamba does.

Drop path is the authors' answer on official issue #251 (Tiny 0.3, Small 0.3-0.4,
Base 0.6); for Femto and Kobe, which the paper does not train for segmentation, we
choose 0.1 (as small backbones are usually given less stochastic depth).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

ADE20K_CLASSES = 150
MACS_SIZE = (512, 2048)   # (H, W) at which the paper reports UperNet MACs


@dataclass(frozen=True)
class SegVariant:
    name: str
    backbone: str                        # a row of VARIANTS
    drop_path: float                     # peak stochastic depth of the backbone when training
    paper_params_m: Optional[float] = None
    paper_macs_g: Optional[float] = None  # at MACS_SIZE
    paper_miou: Optional[Tuple[float, float]] = None  # ADE20K val mIoU (single-scale, multi-scale)
    source: str = ""
    num_classes: int = ADE20K_CLASSES
    convention: str = "mmcv"             # how the paper's MACs were counted (analysis/complexity.py)


def _upernet(backbone, drop_path, params=None, macs=None, miou=None, source=""):
    return SegVariant(f"upernet_{backbone}", backbone, drop_path, params, macs, miou, source)


_TINY_K = {3: (936, (45.3, 46.7)), 5: (937, (47.1, 48.2)), 7: (938, (47.4, 48.6)),
           9: (940, (46.9, 48.1)), 11: (941, (46.9, 47.9))}

SEGMENTATION_VARIANTS = {v.name: v for v in [
    _upernet("mambaout_femto", 0.1),
    _upernet("mambaout_kobe", 0.1),
    _upernet("mambaout_tiny", 0.3, 54, 938, (47.4, 48.6), "main paper, Table 3"),
    _upernet("mambaout_small", 0.3, 76, 1032, (49.5, 50.6), "main paper"),
    _upernet("mambaout_base", 0.6, 112, 1178, (49.6, 51.0), "main paper"),
] + [_upernet(f"mambaout_tiny_k{k}", 0.3, 54, macs, miou, "Table 3") for k, (macs, miou) in _TINY_K.items()] + [
    # VMamba v0 (main paper, Table 3): VMamba's config (segmentation/configs/vssm/
    # upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py) inherits Swin-T's UperNet settings, drop
    # path 0.3 among them; its 964G are fvcore's count (VMamba's analyze tools) at 512 x 2048.
    SegVariant("upernet_vmamba_tiny", "vmamba_tiny", 0.3, 55, 964, (47.3, 48.3), "VMamba v0, Table 3",
               convention="fvcore"),
    # LocalVMamba-T (Table 3): LocalMamba's config (segmentation/configs/local_mamba/
    # upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py) takes Swin-T's UperNet settings with
    # drop path 0.1; its numbers are counted as VMamba's are (fvcore + the scan).
    SegVariant("upernet_local_vmamba_tiny", "local_vmamba_tiny", 0.1, 57, 970, (47.9, 49.1), "LocalVMamba, Table 3",
               convention="fvcore"),
]}
