from .blocks import GatedCNNBlock, MlpHead, Stem, Downsample
from .mambaout import MambaOut, MambaOutStage
from .registry import create_model, get_variant, list_models, pretrained_cfg
from .variants import VARIANTS, Variant
from .weights import load_checkpoint, official_to_timm, read_checkpoint
