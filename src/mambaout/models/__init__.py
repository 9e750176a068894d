from .blocks import GatedCNNBlock, MlpHead, Stem, Downsample
from .mambaout import MambaOut, MambaOutStage
from .factory import create_model
from .registry import (get_variant, is_video, list_detection_models, list_models, list_segmentation_models,
                       list_video_models, pretrained_cfg)
from .backbone import MambaOutBackbone, VMambaBackbone, create_backbone
from .segmentation_variants import SEGMENTATION_VARIANTS, SegVariant
from .detection_variants import DETECTION_VARIANTS, DetVariant
from .mask_rcnn import MambaOutFPN, MambaOutMaskRCNN, create_mask_rcnn
from .upernet import UperNetSegmentor
from .variants import VARIANTS, Variant
from .vmamba import VMamba
from .weights import load_checkpoint, official_to_timm, read_checkpoint
from .timm_compat import register_timm
