from .datasets import (IMG_EXTENSIONS, CifarDataset, DataPipelineError, DigitsDataset, GuardedSamples, ImageFolder,
                       SampleFailure, SeededSamples, build_datasets, collate_skip_bad, load_image,
                       predict_to_folder)
from .loader import shutdown_workers, worker_ignore_signals
from .samplers import EvalShardSampler, ResumableSampler
from .transforms import eval_transform, recipe_transforms, train_transform
