"""Normalisation with non-finite pixels (a NaN used to blank the whole segmentation)."""

import logging

import numpy as np
import pytest

from napari_unet import NapariUnetError, UNet, predict
from napari_unet.cli import main
from napari_unet.core.config import NormalizationConfig
from napari_unet.core.normalize import ImageValueError, normalize


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_left_out_of_the_percentiles_and_become_zero(rng, caplog, bad):
    config = NormalizationConfig()
    clean = rng.random((2, 40, 50)).astype(np.float32) * 1000
    dirty = clean.copy()
    dirty[0, 3, 4] = bad
    dirty[1, 10:12, 7] = bad
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        result = normalize(dirty, config)
    assert np.isfinite(result).all()
    assert result[0, 3, 4] == 0 and (result[1, 10:12, 7] == 0).all()
    for channel in range(2):  # the other pixels are normalised with the finite values' percentiles
        values = dirty[channel][np.isfinite(dirty[channel])]
        low, high = np.percentile(values, [config.low, config.high])
        keep = np.isfinite(dirty[channel])
        np.testing.assert_allclose(result[channel][keep], (values - low) / (high - low), rtol=1e-5, atol=1e-6)
    assert "3 pixel value(s) are NaN or infinite" in caplog.text


def test_one_nan_pixel_does_not_blank_the_prediction(rng):
    model = UNet(base_channels=2, depth=1)
    image = rng.random((48, 48)).astype(np.float32)
    clean = predict(model, image, device="cpu", precision="fp32")
    image[20, 20] = np.nan
    dirty = predict(model, image, device="cpu", precision="fp32")
    assert np.isfinite(dirty).all()
    far = np.ones(image.shape, bool)
    far[8:33, 8:33] = False  # outside the NaN pixel's receptive field
    np.testing.assert_allclose(dirty[:, far], clean[:, far], atol=0.05)


def test_a_plane_without_finite_values_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ImageValueError, match="no finite value"):
        normalize(np.full((1, 8, 8), np.nan, np.float32), NormalizationConfig())
    assert issubclass(ImageValueError, NapariUnetError)
    stack = np.ones((2, 30, 30), np.float32)
    stack[1] = np.inf
    np.save(tmp_path / "img.npy", stack)
    from napari_unet import save_model

    save_model(UNet(base_channels=2, depth=1), tmp_path / "m.safetensors")
    code = main(["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "img.npy"), "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("napari-unet: error:") and "no finite value" in err[-1]
