"""napari-unet: the U-Net of Ronneberger et al. (2015) for napari and the command line.

The public API below never imports Qt or napari::

    import napari_unet as nu

    image, labels = nu.synthetic_nuclei((512, 512), seed=0)
    model = nu.UNet(base_channels=16, depth=3, batch_norm=True)
    summary = nu.train(model, [image], [labels], steps=500)
    instances = nu.segment(model, image)
"""

from .core.checkpoint import ModelFileError, load_model, save_model
from .core.config import InstanceConfig, ModelConfig, ModelSpec, NormalizationConfig, default_model_config
from .core.data import TrainingDataError
from .core.errors import ConfigError, NapariUnetError, OutputFileError, TrainingError
from .core.geometry import InvalidTileSize, best_tile, input_size_for_output, is_valid_size, output_size
from .core.io import ImageFileError, read_image, write_image
from .core.layout import ImageShapeError
from .core.model import UNet
from .core.predict import TileProgress, iter_predict, iter_segment, predict, segment
from .core.sources import SourceError, open_source
from .core.store import OutputExistsError
from .core.stream import ChunkProgress, StreamResult, iter_segment_to, segment_to
from .core.synthetic import synthetic_nuclei
from .core.train import Trainer, iter_train, train
from .core.train_config import AugmentConfig, TrainConfig, WeightMapConfig
from .core.train_events import CheckpointFailed, CheckpointSaved, StepProgress, TrainSummary, ValidationResult
from .core.weights import LabelError, separation_target, weight_map

__version__ = "0.1.0"

__all__ = [
    "AugmentConfig",
    "CheckpointFailed",
    "CheckpointSaved",
    "ChunkProgress",
    "ConfigError",
    "ImageFileError",
    "ImageShapeError",
    "InstanceConfig",
    "InvalidTileSize",
    "LabelError",
    "ModelConfig",
    "ModelFileError",
    "ModelSpec",
    "NapariUnetError",
    "NormalizationConfig",
    "OutputExistsError",
    "OutputFileError",
    "SourceError",
    "StepProgress",
    "StreamResult",
    "TileProgress",
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "TrainingDataError",
    "TrainingError",
    "UNet",
    "ValidationResult",
    "WeightMapConfig",
    "best_tile",
    "default_model_config",
    "input_size_for_output",
    "is_valid_size",
    "iter_predict",
    "iter_segment",
    "iter_segment_to",
    "iter_train",
    "load_model",
    "open_source",
    "output_size",
    "predict",
    "read_image",
    "save_model",
    "segment",
    "segment_to",
    "separation_target",
    "synthetic_nuclei",
    "train",
    "weight_map",
    "write_image",
]
