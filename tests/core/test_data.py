import numpy as np
import pytest

from napari_unet.core import geometry
from napari_unet.core.config import IGNORE_LABEL, NormalizationConfig
from napari_unet.core.data import TrainingDataError, prepare
from napari_unet.core.samples import SampleStream
from napari_unet.core.train_config import AugmentConfig, WeightMapConfig

NO_AUGMENT = AugmentConfig(elastic=False, flips=False, rotations=False, contrast=0, brightness=0, gamma=0)


def discs(shape=(64, 64), centres=((20, 20), (40, 44)), radius=8):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    image = (labels > 0) * 100.0 + np.random.default_rng(0).normal(0, 5, shape)
    return image.astype(np.float32), labels


def prep(images, labels, in_channels=1):
    return prepare(
        images,
        labels,
        in_channels=in_channels,
        normalization=NormalizationConfig(),
        weights=WeightMapConfig(),
    )


def test_stacks_and_channels_count_plane_by_plane():
    image, labels = discs()
    stack = np.stack([image, image, image])
    stack_labels = np.stack([labels, np.full_like(labels, IGNORE_LABEL), labels])
    planes = prep([stack, image], [stack_labels, labels])
    assert len(planes) == 3  # the all-ignore plane is skipped
    rgb = np.stack([image] * 3, axis=-1)
    (plane,) = prep([rgb], [labels], in_channels=3)
    assert plane.image.shape == (3, 64, 64)


def cells_alone() -> np.ndarray:
    """Two painted cells and nothing else annotated: no background (0) at all."""
    labels = np.full((64, 64), IGNORE_LABEL)
    labels[10:20, 10:20] = 1
    labels[30:40, 30:40] = 2
    return labels


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        ([np.zeros((64, 64))], [np.zeros((60, 64), int)], "do not match"),
        ([np.zeros((64, 64))], [], "one per image"),
        ([np.zeros((64, 64))], [np.full((64, 64), IGNORE_LABEL)], "annotations are empty"),
        ([np.zeros((64, 64))], [np.zeros((64, 64), int)], "hold no cells"),
        ([np.arange(4096.0).reshape(64, 64)], [cells_alone()], r"no background \(0\): paint background"),
        ([np.zeros((64, 64))], [np.full((64, 64), 0.5)], "must be integers"),
        ([np.full((64, 64), np.nan)], [discs()[1]], "not finite.*replace them"),
        ([np.zeros((2, 64, 64))], [discs()[1]], r"axis 0 of the image holds 2 channels.*--in-channels 2"),
    ],
)
def test_bad_training_data_says_what_to_change(images, labels, message):
    with pytest.raises(TrainingDataError, match=message):
        prep(images, labels)


def test_a_few_strokes_of_background_beside_many_cells_are_warned_about():
    """Cells and a 4x4 corner of background passed the refusal of cells alone, and
    trained the same useless model."""
    image = np.arange(4096.0).reshape(64, 64)
    labels = np.full((64, 64), IGNORE_LABEL)
    labels[6:36, 6:36], labels[36:61, 36:61] = 1, 2  # 1525 cell pixels
    labels[:4, :4] = 0
    (plane,) = prep([image], [labels])
    assert plane.warnings == (
        "only 16 background (0) pixels are painted, 1.0% of the annotated ones: the network sees almost no "
        "background and learns that nearly everything is a cell; paint background around and between some cells",
    )
    labels[:8, :8] = 0  # 64 px of background, 4.0%: enough not to be warned about
    assert prep([image], [labels])[0].warnings == ()


def test_one_image_may_be_given_without_a_list():
    image, labels = discs()
    (alone,) = prep(image, labels)
    (listed,) = prep([image], [labels])
    np.testing.assert_array_equal(alone.annotation, listed.annotation)
    stack = prep(np.stack([image, image]), np.stack([labels, labels]))  # a stack is one image of two planes
    assert len(stack) == 2


def test_without_augmentation_a_sample_is_a_plain_crop():
    _, labels = discs((100, 100), centres=((30, 30), (50, 62), (75, 40)))
    position_coded = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    (plane,) = prep([position_coded], [labels])
    tile, out, ctx = 60, 20, geometry.context(2)  # depth 2
    stream = SampleStream([plane], tile, 2, NO_AUGMENT, seed=3)
    inside = 0
    for index in range(20):
        sample_image, target, weights, _ = stream.sample(index)
        assert sample_image.shape == (1, tile, tile) and target.shape == weights.shape == (out, out)
        (y, x), *rest = np.argwhere(np.isclose(plane.image[0], sample_image[0, ctx, ctx], atol=1e-6, rtol=0))
        if rest or not (ctx <= y <= 100 + ctx - tile and ctx <= x <= 100 + ctx - tile):
            continue  # a mirrored crop: covered by the augmentation tests
        inside += 1
        np.testing.assert_allclose(
            sample_image[0], plane.image[0, y - ctx : y - ctx + tile, x - ctx : x - ctx + tile], atol=1e-4
        )
        assert np.array_equal(target, plane.target[y : y + out, x : x + out])
        np.testing.assert_allclose(weights, plane.weights[y : y + out, x : x + out], atol=1e-5)
    assert inside >= 3


def test_batches_have_training_shapes_and_dtypes():
    image, labels = discs()
    stream = SampleStream(prep([image], [labels]), 60, 2, AugmentConfig(), seed=0)
    batch = stream.batch([0, 1, 2])
    assert batch.image.shape == (3, 1, 60, 60) and batch.image.dtype == np.float32
    assert batch.target.shape == (3, 20, 20) and batch.target.dtype == np.int64
    assert batch.weights.shape == (3, 20, 20) and (batch.weights >= 0).all()
    assert set(np.unique(batch.target)) <= {0, 1}
    assert len(set(batch.dropout_seeds)) == 3


def test_a_sample_depends_only_on_the_seed_and_its_index():
    """What makes training independent of how many processes split a batch."""
    image, labels = discs()
    stream = SampleStream(prep([image], [labels]), 60, 2, AugmentConfig(), seed=5)
    together = stream.batch([4, 5, 6, 7])
    apart = [stream.batch([index]) for index in (6, 4, 7, 5)]  # another order, other batches
    for position, index in enumerate((6, 4, 7, 5)):
        np.testing.assert_array_equal(together.image[index - 4], apart[position].image[0])
        np.testing.assert_array_equal(together.weights[index - 4], apart[position].weights[0])
        assert together.dropout_seeds[index - 4] == apart[position].dropout_seeds[0]
    other_seed = SampleStream(prep([image], [labels]), 60, 2, AugmentConfig(), seed=6).batch([4])
    assert not np.array_equal(other_seed.image[0], together.image[0])


def test_sample_centres_lie_on_annotated_pixels():
    image, labels = discs((128, 128), centres=((100, 100),))
    sparse = np.full_like(labels, IGNORE_LABEL)
    sparse[80:120, 80:120] = labels[80:120, 80:120]
    stream = SampleStream(prep([image], [sparse]), 60, 2, NO_AUGMENT, seed=1)
    for index in range(10):
        _, _, weights, _ = stream.sample(index)
        assert weights.max() > 0  # every sample sees annotated pixels


def test_a_constant_image_with_cells_painted_on_it_is_refused():
    """A blank layer chosen as the image by mistake trained quietly to nothing."""
    labels = np.zeros((64, 64), np.int32)
    labels[20:30, 20:30] = 1
    with pytest.raises(TrainingDataError, match=r"the image of cells.tif is constant \(every pixel 7\)"):
        prepare(
            [np.full((64, 64), 7.0)], [labels], in_channels=1, normalization=NormalizationConfig(),
            weights=WeightMapConfig(), names=["cells.tif"],
        )  # fmt: skip


def test_labels_with_ids_far_beyond_their_pixel_count_train_as_their_renumbering():
    """Ids such as 2**40 (some software writes them) made per-id tables terabytes large
    (an 8 TiB allocation deep inside the unpainted-cells check)."""
    image, labels = discs()
    huge = np.where(labels > 0, labels.astype(np.uint64) + (1 << 40), 0).astype(np.uint64)
    renumbered, plain = prep([image], [huge])[0], prep([image], [labels])[0]
    np.testing.assert_array_equal(renumbered.annotation, plain.annotation)
    np.testing.assert_array_equal(renumbered.objects.sizes, plain.objects.sizes)
    np.testing.assert_array_equal(renumbered.objects.fills, plain.objects.fills)
    assert plain.objects.sizes.size == 2
