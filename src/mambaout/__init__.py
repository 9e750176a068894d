"""MambaOut (CVPR 2025): Gated CNN vision backbones, without the SSM."""
from .errors import CheckpointError, MambaOutError, UnknownModelError
from .models import (SEGMENTATION_VARIANTS, VARIANTS, GatedCNNBlock, MambaOut, MambaOutBackbone,
                     UperNetSegmentor, create_backbone, create_model, get_variant, list_models,
                     list_segmentation_models, load_checkpoint, pretrained_cfg)
from .complexity import count_macs, count_params

__version__ = "0.1.0"
__all__ = ["create_model", "create_backbone", "list_models", "list_segmentation_models",
           "load_checkpoint", "pretrained_cfg", "get_variant", "count_params", "count_macs",
           "MambaOut", "MambaOutBackbone", "UperNetSegmentor", "GatedCNNBlock", "VARIANTS",
           "SEGMENTATION_VARIANTS",
           "MambaOutError", "CheckpointError", "UnknownModelError"]
