"""Cells left unpainted in an annotation that calls them background (core/unpainted.py)."""

import logging

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.config import IGNORE_LABEL, NormalizationConfig
from napari_unet.core.data import prepare
from napari_unet.core.synthetic import synthetic_nuclei, synthetic_stack
from napari_unet.core.train_config import WeightMapConfig
from napari_unet.core.unpainted import unpainted_cells


@pytest.fixture(scope="module")
def nuclei():
    return synthetic_nuclei((256, 256), seed=3)


def few_cells(labels: np.ndarray, count: int, rest: int = 0) -> np.ndarray:
    """``labels`` with only its first ``count`` cells kept; the other pixels ``rest``."""
    keep = np.unique(labels[labels > 0])[:count]
    return np.where(np.isin(labels, keep), labels, rest).astype(np.int32)


def prepared_warnings(image, labels, caplog, **options) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="napari_unet"):
        planes = prepare(
            [image], [labels], in_channels=1, normalization=NormalizationConfig(), weights=WeightMapConfig(),
            names=["cells.tif"], **options,
        )  # fmt: skip
    logged = [record.getMessage() for record in caplog.records if "painted 0" in record.getMessage()]
    shown = [warning for plane in planes for warning in plane.warnings if "painted 0" in warning]
    assert logged == shown  # what the trainer shows is what the command line logs
    return shown


def test_complete_ground_truth_is_not_suspected(nuclei):
    image, labels = nuclei
    found = unpainted_cells(image, labels)
    assert found.regions == 0 and found.painted_share > 0.9
    assert not found.suspicious


def test_a_few_cells_painted_on_zeros_are_suspected(nuclei):
    image, labels = nuclei
    found = unpainted_cells(image, few_cells(labels, 3))
    assert found.painted_cells == 3
    assert found.suspicious
    assert found.regions > 10 and found.painted_share < 0.2


def test_dark_cells_on_a_bright_background_are_found_too(nuclei):
    image, labels = nuclei
    assert unpainted_cells(image.max() - image, few_cells(labels, 3)).suspicious
    assert not unpainted_cells(image.max() - image, labels).suspicious


def test_training_on_a_few_painted_cells_warns_once_naming_the_fix(nuclei, caplog):
    image, labels = nuclei
    (warning,) = prepared_warnings(image, few_cells(labels, 3), caplog)
    assert warning.startswith("cells.tif: ")
    assert "as bright (or as dark) as the 3 painted cells" in warning
    assert "the network learns that they are not cells" in warning
    assert "unannotated (-1)" in warning


def test_complete_and_sparse_annotations_train_without_the_warning(nuclei, caplog):
    image, labels = nuclei
    assert prepared_warnings(image, labels, caplog) == []
    # a few cells painted with background around them and the rest left unannotated is
    # the sparse workflow, on purpose
    sparse = few_cells(labels, 3, rest=IGNORE_LABEL)
    sparse[ndimage.binary_dilation(sparse > 0, iterations=3) & (labels == 0)] = 0
    assert prepared_warnings(image, sparse, caplog) == []


def test_a_stack_gets_one_warning_counting_its_planes(caplog):
    image, labels = synthetic_stack(3, (128, 128), seed=11)
    labels = labels.astype(np.int32)
    labels[1] = few_cells(labels[1], 2)
    labels[2] = few_cells(labels[2], 2)
    (warning,) = prepared_warnings(image, labels, caplog)
    assert "in 2 of its 3 annotated planes" in warning


def test_out_of_focus_light_at_a_volumes_ends_is_not_suspected_but_cells_painted_on_zeros_are(caplog):
    """The volume sample, complete, trained plane by plane (as a 2D network or a 3D
    network's 2D twin does): one of its 28 planes, near the ends of its few cells,
    shows out-of-focus light of the cells beyond; the same planes with two cells each
    kept and the rest 0 are suspected nearly everywhere."""
    from napari_unet._sample_data import nuclei_volume

    (image, _, _), (labels, _, _) = nuclei_volume()
    labels = labels.astype(np.int32)
    found = [unpainted_cells(plane_image, plane) for plane_image, plane in zip(image, labels)]
    assert sum(result is not None and result.suspicious for result in found) == 1  # what the rule is for
    assert prepared_warnings(image, labels, caplog) == []

    caplog.clear()
    painted = np.stack([few_cells(plane, 2) for plane in labels])
    (warning,) = prepared_warnings(image, painted, caplog)
    assert "in 25 of its 28 annotated planes" in warning


def test_a_volume_for_a_3d_network_is_checked_on_its_annotated_planes(caplog):
    """Annotated on a few planes (the rest -1), a volume is never annotated nearly
    everywhere as a whole: cells left 0 on its planes went unwarned for a 3D network
    (only its 2D twin's log said so, not the Train widget)."""
    from napari_unet._sample_data import nuclei_volume

    (image, _, _), (labels, _, _) = nuclei_volume()
    sparse = np.full(labels.shape, IGNORE_LABEL, np.int32)
    sparse[[10, 14]] = labels[[10, 14]]
    as_volume = {"ndim": 3, "spacing": (2.0, 1.0, 1.0)}
    assert prepared_warnings(image, sparse, caplog, **as_volume) == []  # complete planes
    caplog.clear()
    sparse[[10, 14]] = [few_cells(labels[z], 2) for z in (10, 14)]
    (warning,) = prepared_warnings(image, sparse, caplog, **as_volume)
    assert "painted 0, background in 2 of its 2 annotated planes" in warning


def test_a_volume_s_planes_left_at_0_instead_of_minus_1_are_warned_about(caplog):
    """A volume annotated on every 4th plane with the other planes saved as 0, not -1,
    trained a 3D network without a word (a new user's walk): the planes without any
    cell are compared with the cells painted on the others."""
    from napari_unet._sample_data import nuclei_volume

    (image, _, _), (labels, _, _) = nuclei_volume()
    as_volume = {"ndim": 3, "spacing": (2.0, 1.0, 1.0)}
    assert prepared_warnings(image, labels.astype(np.int32), caplog, **as_volume) == []  # complete: its ends are 0
    caplog.clear()
    zeros = np.zeros(labels.shape, np.int32)
    zeros[::4] = labels[::4]
    (warning,) = prepared_warnings(image, zeros, caplog, **as_volume)
    assert "of these planes hold no cell at all: a plane left unannotated is -1, not 0" in warning
    caplog.clear()
    zeros[zeros == 0] = IGNORE_LABEL  # (and background painted around the cells would do too)
    zeros[::4] = labels[::4]
    assert prepared_warnings(image, zeros, caplog, **as_volume) == []
    # a plane painted 0 beyond the planes with cells (plane 0: a volume's end, here with the cells'
    # out-of-focus light) is right, and is not compared with their cells (a reviewer's case)
    blurred = ndimage.gaussian_filter(image.astype(np.float32), (2.0, 0, 0))
    every_8th = np.full(labels.shape, IGNORE_LABEL, np.int32)
    every_8th[::8] = labels[::8]
    assert not (every_8th[0] > 0).any() and (every_8th[8] > 0).any()
    assert prepared_warnings(blurred, every_8th, caplog, **as_volume) == []
