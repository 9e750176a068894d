from .datasets import (IMG_EXTENSIONS, CifarDataset, DataPipelineError, DigitsDataset, GuardedSamples, ImageFolder,
                       LabelledFiles, SampleFailure, SeededSamples, collate_skip_bad, load_image, predict_to_folder)
from .sources import build_datasets, eval_dataset
from .loader import shutdown_workers, worker_ignore_signals
from .samplers import EvalShardSampler, ResumableSampler
from .transforms import eval_transform, recipe_transforms, train_transform
