"""Bad input ends in one clear NapariUnetError, never in a traceback."""

import math

import numpy as np
import pytest

from napari_unet import ConfigError, TrainConfig, WeightMapConfig
from napari_unet.core.config import InstanceConfig, ModelConfig, NormalizationConfig
from napari_unet.core.weights import weight_map


@pytest.mark.parametrize("w0", [math.nan, math.inf, -1.0])
def test_weight_map_settings_refuse_nan_and_infinity(w0):
    with pytest.raises(ConfigError, match="w0"):
        WeightMapConfig(w0=w0)
    with pytest.raises(ConfigError):
        weight_map(np.zeros((8, 8), np.int32), w0=w0)
    with pytest.raises(ConfigError, match="sigma"):
        WeightMapConfig(sigma=math.nan)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ModelConfig(base_channels="64"), "base_channels"),
        (lambda: ModelConfig(depth=2.0), "depth"),
        (lambda: ModelConfig(in_channels=True), "in_channels"),
        (lambda: ModelConfig(dropout=math.nan), "dropout"),
        (lambda: NormalizationConfig(low=math.nan), "low"),
        (lambda: InstanceConfig(fill_holes="yes"), "fill_holes"),
        (lambda: TrainConfig(tile=100.5), "tile"),
        (lambda: TrainConfig(steps=[3]), "steps"),
        (lambda: TrainConfig(lr=math.inf), "lr"),
        (lambda: TrainConfig(weights={"w0": 1}), "weights"),
    ],
)
def test_config_records_refuse_values_of_the_wrong_type(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_numpy_numbers_are_accepted():
    config = ModelConfig(base_channels=np.int64(4), depth=np.int32(2), dropout=np.float32(0.25))
    assert config.base_channels == 4
    assert type(config.base_channels) is int and type(config.dropout) is float  # JSON-able
