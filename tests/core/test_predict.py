import dataclasses

import numpy as np
import pytest
import torch

from napari_unet import ConfigError, ImageShapeError, InvalidTileSize, UNet, iter_predict, predict, segment
from napari_unet.core import geometry
from napari_unet.core.config import InstanceConfig
from napari_unet.core.devices import cpu_has_bf16
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.normalize import normalize
from napari_unet.core.progress import drive
from napari_unet.core.tiling import extract_tile, reflect_index


def small_model(in_channels=1, n_classes=2, depth=2):
    torch.manual_seed(1)
    return UNet(in_channels=in_channels, n_classes=n_classes, base_channels=4, depth=depth).eval()


def whole_image_pass(model, image):
    """One forward pass over the whole mirror-padded image (the reference)."""
    plane = normalize(image[None] if image.ndim == 2 else image, model.spec.normalization)
    depth = model.config.depth
    height, width = plane.shape[-2:]
    one_tile = geometry.plan_tiles(
        (height, width), [geometry.input_size_for_output(n, depth) for n in (height, width)], depth
    )
    padded = torch.from_numpy(extract_tile(plane, (0, 0), one_tile)[None])
    with torch.no_grad():
        logits = model(padded)
    return torch.softmax(logits, 1)[0, :, :height, :width].numpy()


@pytest.mark.parametrize("shape", [(97, 131), (200, 61), (150, 150)])
@pytest.mark.parametrize("tile", [44, 60, 76, (92, 60)])
def test_tiles_are_seamless_and_equal_a_whole_image_pass(rng, shape, tile):
    model = small_model()
    image = rng.normal(size=shape).astype(np.float32)
    tiled = predict(model, image, tile=tile, precision="fp32", device="cpu")
    reference = whole_image_pass(model, image)
    plan = geometry.plan_tiles(shape, tile, 2)
    assert plan.n_tiles > 1
    assert np.abs(tiled - reference).max() <= 1e-5


def test_depth4_seamless_with_paper_tile(rng):
    model = small_model(depth=4)
    image = rng.normal(size=(500, 420)).astype(np.float32)
    tiled = predict(model, image, tile=572, precision="fp32")
    assert np.abs(tiled - whole_image_pass(model, image)).max() <= 1e-5


def test_mirroring_matches_numpy_reflect_far_beyond_the_border():
    for size in [1, 2, 3, 7]:
        data = np.arange(size)
        padded = np.pad(data, 40, mode="reflect") if size > 1 else np.zeros(81, int)
        assert np.array_equal(data[reflect_index(np.arange(-40, size + 40), size)], padded)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 2)])
def test_images_smaller_than_a_tile(rng, shape):
    model = small_model()
    image = rng.normal(size=shape).astype(np.float32)
    probs = predict(model, image, precision="fp32")
    assert probs.shape == (2, *shape)
    assert np.abs(probs - whole_image_pass(model, image)).max() <= 1e-5
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)


def test_stacks_are_processed_plane_by_plane(rng):
    model = small_model()
    stack = rng.normal(size=(2, 3, 40, 50)).astype(np.float32)
    probs = predict(model, stack, precision="fp32")
    assert probs.shape == (2, 3, 2, 40, 50) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[1, 2], predict(model, stack[1, 2], precision="fp32"), atol=1e-6)


def test_rgb_and_channels_first_agree(rng):
    model = small_model(in_channels=3, n_classes=3)
    rgb = rng.integers(0, 255, size=(40, 50, 3)).astype(np.uint8)
    channels_last = predict(model, rgb, precision="fp32")
    channels_first = predict(model, np.moveaxis(rgb, -1, 0), precision="fp32")
    assert channels_last.shape == (3, 40, 50)
    np.testing.assert_allclose(channels_last, channels_first, atol=1e-6)


def test_shape_errors_say_what_to_change(rng):
    with pytest.raises(ImageShapeError, match="is RGB: use a model trained on RGB images"):
        predict(small_model(), rng.random((40, 50, 3)))
    rgba = rng.random((40, 50, 4))  # the advice was --in-channels 3, which then found no axis of 3
    with pytest.raises(ImageShapeError, match=r"is RGBA \(4 channels\): .*train --in-channels 4\)"):
        predict(small_model(), rgba)
    assert predict(small_model(in_channels=4), rgba).shape == (2, 40, 50)
    with pytest.raises(ImageShapeError, match=r"is RGBA: drop its alpha channel \(Python: image\[\.\.\., :3\]"):
        predict(small_model(in_channels=3), rgba)  # it said "no axis of length 3"
    czyx = rng.random((2, 4, 40, 50))  # channels before z: said to be missing ("no axis of length 2")
    with pytest.raises(ImageShapeError, match=r"if axis 0 holds them, say so \(command line: --channel-axis 0;"):
        predict(small_model(in_channels=2), czyx)
    assert predict(small_model(in_channels=2), czyx, channel_axis=0).shape == (4, 2, 40, 50)
    rgb_only = r"trained on images of 3 channels \(RGB\) .*\(napari: a layer of that shape"
    with pytest.raises(ImageShapeError, match=rgb_only):
        predict(small_model(in_channels=3), rng.random((40, 50)))
    with pytest.raises(ImageShapeError, match=r"a layer of that shape\), or use") as raised:  # no RGB for 2
        predict(small_model(in_channels=2), rng.random((40, 50, 3)))
    assert "RGB" not in str(raised.value)
    with pytest.raises(ImageShapeError, match="at least 2 dimensions"):
        predict(small_model(), rng.random(10))
    with pytest.raises(InvalidTileSize, match="nearest valid sizes"):
        predict(small_model(), rng.random((40, 50)), tile=50)
    with pytest.raises(ValueError, match="unknown precision"):
        predict(small_model(), rng.random((40, 50)), precision="fp8")


def test_progress_counts_every_tile_and_can_be_cancelled(rng):
    model = small_model()
    stack = rng.normal(size=(3, 100, 100)).astype(np.float32)
    generator = iter_predict(model, stack, tile=44, batch_size=2)
    first = next(generator)
    plan = geometry.plan_tiles((100, 100), 44, 2)
    assert first.total == 3 * plan.n_tiles and first.done == 2
    generator.close()  # cancelling leaves the model as it was
    assert not model.training
    events = []
    generator = iter_predict(model, stack, tile=44, batch_size=2)
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            result = stop.value
            break
    assert events[-1].done == events[-1].total == 3 * plan.n_tiles
    assert result.shape == (3, 2, 100, 100)


def test_memory_is_bounded_by_the_tile_batch(rng):
    """A tiny memory budget forces many small tiles; the answer stays the same."""
    model = small_model()
    image = rng.normal(size=(300, 300)).astype(np.float32)
    lean = predict(model, image, memory_bytes=4 * 128 * 100 * 100, precision="fp32")
    assert np.abs(lean - whole_image_pass(model, image)).max() <= 1e-5


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions: bf16 falls back to fp32")
def test_bf16_stays_close_to_fp32(rng):
    model = small_model()
    image = rng.normal(size=(64, 64)).astype(np.float32)
    fp32 = predict(model, image, precision="fp32")
    bf16 = predict(model, image, precision="bf16")
    difference = np.abs(fp32 - bf16).max()
    assert 0 < difference < 0.05  # it did compute in bf16, and stayed close


def test_segment_gives_deterministic_int32_instances(rng):
    """segment = the model's instance settings applied to predict's probabilities."""
    model = small_model()
    image = rng.normal(size=(60, 60)).astype(np.float32)
    probabilities = predict(model, image)
    threshold = float(np.median(1 - probabilities[0]))  # half the pixels are foreground
    model.spec = dataclasses.replace(model.spec, instances=InstanceConfig(threshold=threshold, min_size=4))
    labels = segment(model, image)
    assert labels.dtype == np.int32 and labels.shape == (60, 60) and labels.max() >= 2
    np.testing.assert_array_equal(labels, probabilities_to_labels(probabilities, model.spec.instances))
    again, again_probabilities = segment(model, image, return_probabilities=True)
    np.testing.assert_array_equal(labels, again)
    np.testing.assert_array_equal(probabilities, again_probabilities)


def test_predict_leaves_the_callers_model_alone(rng):
    model = small_model().train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    predict(model, rng.normal(size=(50, 50)).astype(np.float32), precision="fp32")
    assert model.training  # not switched to eval
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_device_errors_are_clear():
    with pytest.raises(ValueError, match="device"):
        predict(small_model(), np.zeros((20, 20)), device="cuda:7" if not torch.cuda.is_available() else "nope")


def test_test_time_augmentation_is_symmetric_and_turns_back_exactly(rng):
    """The tta mean is the same whichever of the 8 symmetries the image arrives in,
    once turned back: it fails if any inverse is wrong. Channels last and a stack too."""
    model = small_model(in_channels=3, n_classes=3)
    image = rng.integers(0, 255, size=(2, 37, 53, 3)).astype(np.uint8)  # stack, H != W, channels last
    seen = []
    reference = drive(iter_predict(model, image, precision="fp32", tta=True), seen.append)
    assert reference.shape == (2, 3, 37, 53)
    assert seen[-1].done == seen[-1].total and seen[-1].total == 8 * 2 * seen[0].plan.n_tiles
    plain = predict(model, image, precision="fp32")
    assert np.abs(reference - plain).max() > 1e-4  # an untrained network is not symmetric itself
    turned = np.rot90(image, 1, axes=(1, 2))[:, :, ::-1]  # a quarter turn, then a flip of x
    again = predict(model, np.ascontiguousarray(turned), precision="fp32", tta=True)
    back = np.rot90(again[..., ::-1], -1, axes=(-2, -1))
    np.testing.assert_allclose(back, reference, atol=1e-5)


def test_test_time_augmentation_refuses_unequal_in_plane_spacing():
    model = UNet(ndim=3, spacing=(1.0, 0.5, 0.25), base_channels=2, depth=1)
    with pytest.raises(ConfigError, match="equal y and x spacing"):
        predict(model, np.zeros((8, 20, 20), np.float32), tta=True)


@pytest.mark.parametrize("as_volume", [False, True])
def test_an_empty_segmentation_says_why_and_what_to_change(caplog, as_volume):
    """A model that calls every pixel background, and one whose every region is
    smaller than the smallest object kept, each leave a note naming its cause."""
    import logging

    from napari_unet.core.layer_plan import CONV

    model = small_model()
    output = model.get_submodule([layer for layer in model.plan if layer.kind == CONV][-1].module)
    image = np.random.default_rng(0).random((4, 40, 40) if as_volume else (40, 40)).astype(np.float32)
    options = {"device": "cpu", "as_volume": as_volume}
    with torch.no_grad():
        output.bias.copy_(torch.tensor([30.0, -30.0]))  # background everywhere
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        assert segment(model, image, **options).max() == 0
    (note,) = [record.getMessage() for record in caplog.records if "no objects" in record.getMessage()]
    assert "no pixel's foreground probability passed the threshold 0.5 (the highest is 0.00)" in note

    caplog.clear()
    with torch.no_grad():
        output.bias.copy_(torch.tensor([-30.0, 30.0]))  # cells everywhere, but too small to keep
    huge = InstanceConfig(min_size=10**6)
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        assert segment(model, image, instances=huge, **options).max() == 0
    (note,) = [record.getMessage() for record in caplog.records if "no objects" in record.getMessage()]
    assert "smaller than the smallest object kept" in note

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        assert segment(model, image, **options).max() > 0
    assert not [record for record in caplog.records if "no objects" in record.getMessage()]
