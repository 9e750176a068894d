"""Which models each of the paper's tables cites, in the paper's order (`mambaout models --paper`).

Data only: the numbers themselves live on the rows of the variant tables (variants.py,
segmentation_variants.py, detection_variants.py), which carry the paper's params / MACs /
scores; a table's `numbers` hold its own where they differ (another task or input). A name no
variant table builds is printed as not built, so the table also shows what the paper compares
that mambaout cannot build yet.

Sources: the main paper's ImageNet table (MambaOut and the vision-Mamba rows), its ADE20K and
COCO tables, and the supplementary's Tables 3-11 (shared/seeds in the repository's design
notes).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

Numbers = Tuple[Optional[float], Optional[float], Optional[float]]    # params M, MACs G, score


class PaperTable(NamedTuple):
    key: str
    title: str
    models: Tuple[str, ...]
    metric: str = "top-1"        # what the paper's score column holds
    # The table's own numbers where they are not the model row's (another task or input):
    # name -> (params M, MACs G, score); None keeps the row's.
    numbers: Dict[str, Numbers] = {}


PAPER_TABLES: List[PaperTable] = [
    PaperTable("imagenet", "Main paper, ImageNet-1K at 224 (MambaOut and the vision Mambas)",
               ("mambaout_femto", "efficient_vmamba_small", "mambaout_kobe", "mambaout_tiny", "vmamba_tiny",
                "local_vmamba_tiny", "mambaout_small", "vmamba_small", "local_vmamba_small", "mambaout_base",
                "vmamba_base")),
    PaperTable("table3", "Table 3: depthwise kernel size of MambaOut-Tiny (ImageNet; UperNet below)",
               tuple(f"mambaout_tiny_k{k}" for k in (3, 5, 7, 9, 11))),
    PaperTable("table4", "Table 4: throughput, MambaOut vs VMamba (img/s: `mambaout benchmark --model "
                         "mambaout_tiny mambaout_small mambaout_base --compare vmamba --mode both`)",
               ("vmamba_tiny", "mambaout_tiny", "vmamba_small", "mambaout_small", "vmamba_base", "mambaout_base")),
    PaperTable("table5", "Table 5: isotropic models", ("vit_small_p16", "vim_small", "mambaout_s_iso")),
    PaperTable("table6", "Table 6: 15 residual blocks", ("vmamba_tiny", "local_vmamba_tiny", "mambaout_t15")),
    PaperTable("table7", "Table 7: conv + SSM vs conv + attention in stages 3-4",
               ("vmamba_mixed_stage_tiny", "mambaout_attn_tiny")),
    PaperTable("table8", "Table 8: pure conv / attention / SSM, 12 isotropic layers (CIFAR-10 / CIFAR-100 top-1)",
               ("study_conv_d64", "study_attn_d64", "study_ssm_d64", "study_conv_d192", "study_attn_d192",
                "study_ssm_d192"), metric="cifar"),
    PaperTable("table9", "Table 9: fine-grained transfer from ImageNet weights (mean top-1 of five datasets: `mambaout transfer`)",
               ("vmamba_tiny", "mambaout_tiny"), metric="mean",
               numbers={"vmamba_tiny": (None, None, 91.9), "mambaout_tiny": (None, None, 92.8)}),
    PaperTable("table10", "Table 10: video, Something-Something V2 (MACs of 2 clips x 3 crops of 8 frames at 224)",
               ("videomamba_tiny", "mambaout_femto_video"), metric="ssv2",
               numbers={"videomamba_tiny": (7, 54, 65.1), "mambaout_femto_video": (7, 58, 63.6)}),
    PaperTable("table11", "Table 11: causal vs fully visible (ImageNet)",
               ("vit_tiny_p16", "vit_tiny_p16_causal", "vit_small_p16", "vit_small_p16_causal", "illama_tiny",
                "illama_tiny_causal")),
    PaperTable("ade20k", "Semantic segmentation, UperNet on ADE20K at 512x2048 (main paper; Table 3)",
               ("upernet_vmamba_tiny", "upernet_local_vmamba_tiny", "upernet_mambaout_tiny", "upernet_mambaout_small",
                "upernet_mambaout_base") + tuple(f"upernet_mambaout_tiny_k{k}" for k in (3, 5, 9, 11)),
               metric="miou"),
    PaperTable("coco", "Object detection, Mask R-CNN 1x on COCO at 1280x800 (main paper)",
               ("mask_rcnn_vmamba_tiny", "mask_rcnn_mambaout_tiny", "mask_rcnn_mambaout_small",
                "mask_rcnn_mambaout_base"), metric="ap"),
]
