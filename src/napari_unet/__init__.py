"""napari-unet: the U-Net of Ronneberger et al. (2015) for napari and the command line.

The public API below never imports Qt or napari.
"""

from .core.checkpoint import ModelFileError, load_model, save_model
from .core.config import InstanceConfig, ModelConfig, ModelSpec, NormalizationConfig, WeightMapConfig
from .core.geometry import InvalidTileSize, best_tile, input_size_for_output, is_valid_size, output_size
from .core.layout import ImageShapeError
from .core.model import UNet
from .core.predict import TileProgress, iter_predict, predict, segment

__version__ = "0.1.0"

__all__ = [
    "ImageShapeError",
    "InstanceConfig",
    "InvalidTileSize",
    "ModelConfig",
    "ModelFileError",
    "ModelSpec",
    "NormalizationConfig",
    "TileProgress",
    "UNet",
    "WeightMapConfig",
    "best_tile",
    "input_size_for_output",
    "is_valid_size",
    "iter_predict",
    "load_model",
    "output_size",
    "predict",
    "save_model",
    "segment",
]
