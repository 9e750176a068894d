from .datasets import (IMG_EXTENSIONS, CifarDataset, DigitsDataset, ImageFolder, SeededSamples, build_datasets,
                       collate_skip_bad, load_image, worker_ignore_signals)
from .samplers import EvalShardSampler, ResumableSampler
from .transforms import eval_transform, train_transform
