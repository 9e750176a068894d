"""MambaOut (CVPR 2025): Gated CNN vision backbones, without the SSM."""
from .errors import CheckpointError, MambaOutError, UnknownModelError
from .models import (DETECTION_VARIANTS, SEGMENTATION_VARIANTS, VARIANTS, GatedCNNBlock, MambaOut,
                     MambaOutBackbone, MambaOutMaskRCNN, UperNetSegmentor, create_backbone, create_mask_rcnn,
                     create_model, get_variant, list_detection_models, list_models,
                     list_segmentation_models, list_video_models, load_checkpoint, pretrained_cfg, register_timm)
from .analysis.complexity import count_macs, count_params
from .analysis.cam import grad_cam   # pytorch-grad-cam is imported only when a map is asked for
from .deploy.hub import push_to_hub, save_pretrained

__version__ = "0.1.0"
__all__ = ["create_model", "create_backbone", "create_mask_rcnn", "list_models", "list_segmentation_models",
           "list_video_models",
           "list_detection_models", "grad_cam", "save_pretrained", "push_to_hub", "register_timm",
           "load_checkpoint", "pretrained_cfg", "get_variant", "count_params", "count_macs",
           "MambaOut", "MambaOutBackbone", "UperNetSegmentor", "MambaOutMaskRCNN", "GatedCNNBlock",
           "VARIANTS", "SEGMENTATION_VARIANTS", "DETECTION_VARIANTS",
           "MambaOutError", "CheckpointError", "UnknownModelError"]
