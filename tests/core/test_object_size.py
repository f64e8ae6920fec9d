"""The minimum object size that training reads off the annotation."""

import dataclasses
import math

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import UNet, load_model, save_model
from napari_unet.cli import main
from napari_unet.core.config import IGNORE_LABEL, InstanceConfig
from napari_unet.core.object_size import (
    SIZE_FRACTION,
    CompleteObjects,
    complete_objects,
    fitted_instances,
    in_voxels,
)
from napari_unet.core.records import from_dict
from napari_unet.core.synthetic_volume import SPACING as VOLUME_SPACING
from napari_unet.core.synthetic_volume import synthetic_volume
from napari_unet.core.train import Trainer
from napari_unet.core.train_config import TrainConfig

from .lazy import drawn_image, threshold_model
from .test_cli import TINY
from .test_data import discs


def test_complete_objects_touch_neither_the_border_nor_many_unannotated_pixels():
    labels = np.zeros((9, 9), np.int32)
    labels[2:4, 2:5] = 1  # complete: 6 px
    labels[0:2, 6:8] = 2  # touches the top border
    labels[5:8, 5:7] = 3  # 3 of its 10 neighbours unannotated
    labels[5:8, 4] = IGNORE_LABEL
    labels[6:8, 1:3] = 4  # 4 px, 2 of its 8 neighbours unannotated ...
    labels[5, 1:3] = IGNORE_LABEL
    labels[8, 0] = IGNORE_LABEL  # ... and diagonally next to another
    assert complete_objects(labels).sizes.tolist() == [6, 4]
    labels[6, 0] = IGNORE_LABEL  # now 3 of 8
    assert complete_objects(labels).sizes.tolist() == [6]
    assert complete_objects(np.full((4, 4), IGNORE_LABEL)).sizes.size == 0


def test_a_cell_painted_with_a_ring_of_background_counts_despite_gaps_at_its_rim():
    """A brush leaves a few unannotated pixels between a painted cell and the background
    painted around it: every cell used to count as partial, and training learned no
    sizes (a new user's walk). A cell cut by the edge of the annotated region still
    counts as partial."""
    yy, xx = np.mgrid[:80, :80]
    radius = np.hypot(yy - 40, xx - 40)
    labels = np.full((80, 80), IGNORE_LABEL, np.int32)
    labels[radius <= 22] = 0  # the background painted around it
    labels[radius <= 10] = 1
    labels[(radius > 10) & (radius <= 11) & (xx > 49)] = IGNORE_LABEL  # an unpainted arc at its rim (11 of 84)
    assert complete_objects(labels).sizes.tolist() == [int((radius <= 10).sum())]
    labels[:, 40:] = IGNORE_LABEL  # only the left half annotated: 19 of its 58 neighbours unannotated
    labels[(radius <= 10) & (xx < 40)] = 1
    assert complete_objects(labels).sizes.size == 0


def test_volumes_count_voxels_and_their_faces():
    volume = np.zeros((5, 6, 6), np.int32)
    volume[1:3, 1:3, 1:4] = 1  # 12 voxels, inside
    volume[3:5, 3:5, 3:5] = 2  # reaches the last plane: the volume's border
    assert complete_objects(volume).sizes.tolist() == [12]
    volume[0, 1:3, 1:4] = volume[3, 1:3, 1:4] = IGNORE_LABEL  # above and below object 1: 12 of its 32 faces
    planes = complete_objects(volume)  # none complete in 3D: the objects complete within planes
    assert planes.ndim == 2 and planes.sizes.tolist() == [6, 6, 4, 4]


def test_a_volume_annotated_on_planes_is_fitted_to_its_planes_objects():
    zz, yy, xx = np.indices((20, 40, 40))
    balls = [((zz - 9) / 8) ** 2 + ((yy - y) / 9) ** 2 + ((xx - x) / 9) ** 2 <= 1 for y, x in ((11, 11), (27, 28))]
    dense = (balls[0] * 1 + balls[1] * 2).astype(np.int32)
    sparse = np.full_like(dense, IGNORE_LABEL)
    sparse[5::4] = dense[5::4]  # planes 5, 9, 13, 17
    found = complete_objects(sparse)
    assert found.ndim == 2 and found.sizes.tolist() == [
        int((plane == i).sum()) for plane in dense[5::4] for i in (1, 2) if (plane == i).any()
    ]
    assert complete_objects(dense).ndim == 3 and complete_objects(dense).sizes.tolist() == [b.sum() for b in balls]
    fitted = fitted_instances(InstanceConfig(), [found])
    assert fitted.min_piece == int(0.3 * np.median(found.sizes)) and fitted.min_fill > 0
    assert fitted.object_size == int(np.median(found.sizes))  # what segmenting compares its objects with
    both = fitted_instances(InstanceConfig(), [found, complete_objects(dense)])  # 3D objects are not mixed with areas
    assert both == fitted_instances(InstanceConfig(), [complete_objects(dense)])
    for_3d = fitted_instances(InstanceConfig(), [found], ndim=3, spacing=(0.5, 1.0, 1.0))
    assert for_3d == in_voxels(fitted, (0.5, 1.0, 1.0)) and for_3d.min_piece > 5 * fitted.min_piece
    assert for_3d.object_size > 5 * fitted.object_size  # a volume, like the other sizes
    assert fitted_instances(InstanceConfig(), [complete_objects(dense)], ndim=3) == both  # 3D objects: volumes already


def test_areas_in_planes_become_the_volumes_of_balls_cut_at_any_height():
    discs = InstanceConfig(min_size=int(math.pi * 25), min_piece=int(math.pi * 100), min_fill=0.9, neck=1.5)
    cubes = in_voxels(discs)  # the median cross-sections of balls of radius 5 and 10 px / sqrt(0.75)
    assert cubes.min_size == pytest.approx(4 / 3 * math.pi * (25 / 0.75) ** 1.5, rel=0.02)
    assert cubes.min_piece == pytest.approx(4 / 3 * math.pi * (100 / 0.75) ** 1.5, rel=0.02)
    assert (cubes.min_fill, cubes.neck) == (0.9, 1.5)  # shape and pixel lengths stay
    close_planes = in_voxels(discs, (0.5, 1.0, 1.0))  # planes twice as close: twice the voxels
    assert close_planes.min_piece == pytest.approx(2 * cubes.min_piece, rel=0.01)
    fine_pixels = in_voxels(discs, (1.0, 0.5, 0.5))  # the same pixel areas are a quarter of the area in um^2
    assert fine_pixels.min_piece == pytest.approx(cubes.min_piece / 2, rel=0.01)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_few_annotated_planes_of_a_volume_give_about_its_median_nucleus(seed):
    """Planes cut nuclei at any height, so their median area is less than a nucleus's
    largest cross-section: taken for it, the sizes fitted from every 3rd or 5th plane
    of the built-in volume were 0.60-0.66 of the true median volume."""
    _, truth = synthetic_volume(seed=seed)
    volumes = np.bincount(truth.ravel())[1:]
    for step in (3, 5):
        planes = np.full(truth.shape, IGNORE_LABEL, np.int32)
        planes[::step] = truth[::step]
        fitted = fitted_instances(InstanceConfig(), [complete_objects(planes)], 3, VOLUME_SPACING)
        assert fitted.object_size == pytest.approx(np.median(volumes[volumes > 0]), rel=0.1)


def objects(sizes, fills=None, ndim=2):
    sizes = np.asarray(sizes, np.int64)
    return CompleteObjects(sizes, np.ones(sizes.size) if fills is None else np.asarray(fills, float), ndim)


def test_the_minimum_is_a_fraction_of_the_small_objects_a_larger_one_at_the_border_and_the_piece_of_the_typical():
    sizes = [objects([400] * 19 + [60]), objects([300])]
    fitted = fitted_instances(InstanceConfig(split=0.2), sizes)
    every = np.concatenate([o.sizes for o in sizes])
    assert fitted.min_size == int(0.4 * np.percentile(every, 5)) and 30 <= fitted.min_size < 200
    assert fitted.edge_size_factor * fitted.min_size == pytest.approx(0.5 * np.percentile(every, 5))
    assert fitted.min_piece == int(0.3 * 400) and fitted.split == 0.2  # the rest is kept
    assert fitted_instances(InstanceConfig(), [objects([20, 24])]).min_size == InstanceConfig().min_size
    mine = InstanceConfig(min_size=50, min_piece=7)
    assert fitted_instances(mine, [CompleteObjects.none()]) == mine == fitted_instances(mine, [])
    assert mine.edge_size_factor == 1.0  # nothing learned: the border is like the rest


def test_settings_written_before_the_border_minimum_treat_the_border_like_the_rest():
    written = dataclasses.asdict(InstanceConfig(min_size=85))
    del written["edge_size_factor"]  # what model files of earlier versions hold
    assert from_dict(InstanceConfig, written).edge_size_factor == 1.0


def test_the_shape_split_takes_the_least_round_annotated_objects_and_the_typical_radius():
    fills = np.linspace(0.9, 1.0, 21)  # 5% of them fill less than 0.905 of their ellipse
    fitted = fitted_instances(InstanceConfig(), [objects([314] * 21, fills)])
    assert fitted.min_fill == pytest.approx(0.905) and fitted.neck == pytest.approx(0.1 * 10, abs=0.01)
    in_3d = fitted_instances(InstanceConfig(), [objects([4189] * 21, fills, ndim=3)])  # balls of radius 10
    assert in_3d.neck == pytest.approx(0.1 * 10, abs=0.01)
    regular = fitted_instances(InstanceConfig(), [objects([314] * 21, np.full(21, 0.99))])
    assert regular.min_fill == 0.95  # never above what a rectangle fills


def test_annotated_discs_fill_their_ellipses():
    _, labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)), radius=8)
    found = complete_objects(labels)
    assert found.sizes.size == 3 and np.all(np.abs(found.fills - 1) < 0.03)


FAST = TrainConfig(steps=1, tile=60, batch_size=1, device="cpu", precision="fp32", warmup_steps=1)


def tiny_model():
    torch.manual_seed(0)
    return UNet(base_channels=2, depth=2)


def test_training_gives_the_model_the_minimum_its_annotation_suggests(tmp_path):
    image, labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)), radius=8)
    area = int((labels == 1).sum())
    trainer = Trainer(tiny_model(), [image], [labels], FAST)
    fitted = fitted_instances(InstanceConfig(), [complete_objects(labels)])
    assert fitted.min_size == int(SIZE_FRACTION * area) > InstanceConfig().min_size
    assert fitted.min_piece == int(0.3 * area)
    assert fitted.min_fill == 0.95 and fitted.neck == 1.0  # discs fill ~0.99: capped; 0.1 of a radius of 7.9: 1 px
    assert trainer.model.spec.instances == fitted
    trainer.save_model(tmp_path / "m")
    assert load_model(tmp_path / "m").spec.instances == fitted

    kept = Trainer(tiny_model(), [image], [labels], dataclasses.replace(FAST, fit_sizes=False))
    assert kept.model.spec.instances == InstanceConfig()

    assert not any("no cell is completely annotated" in warning for warning in trainer.data_warnings)
    partial = np.where(labels == 0, IGNORE_LABEL, labels)  # every object touches unannotated pixels
    partial[:, :3] = 0  # (background away from the cells: cells alone are refused)
    model = tiny_model()
    model.spec = dataclasses.replace(model.spec, instances=InstanceConfig(min_size=50))
    unfitted = Trainer(model, [image], [partial], FAST)
    assert unfitted.model.spec.instances.min_size == 50
    assert any("no cell is completely annotated" in warning for warning in unfitted.data_warnings)  # said, not silent


def test_new_annotations_of_a_running_training_refit_the_minimum():
    image, labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)), radius=8)
    trainer = Trainer(tiny_model(), [image], [labels], FAST)
    small, small_labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)), radius=5)
    trainer.replace_annotations([small], [small_labels])
    assert trainer.model.spec.instances.min_size == int(SIZE_FRACTION * (small_labels == 1).sum())


def test_segment_min_size_option_overrides_the_model(tmp_path, capsys):
    grid = np.indices((64, 96))
    mask = ((grid[0] - 32) ** 2 + (grid[1] - 30) ** 2 <= 225) | ((grid[0] - 32) ** 2 + (grid[1] - 70) ** 2 <= 16)
    np.save(tmp_path / "a.npy", drawn_image(mask))  # a disc of 709 px and one of 49 px
    save_model(threshold_model(), tmp_path / "m.safetensors")
    counts = []
    for extra in ([], ["--min-size", "100"]):
        out = tmp_path / f"out{len(extra)}"
        assert (
            main(["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "a.npy"), "--out-dir", str(out), *extra])
            == 0
        )
        counts.append(int(tifffile.imread(out / "a_labels.tif").max()))
    assert counts == [2, 1]
    capsys.readouterr()
    code = main(["segment", str(tmp_path / "m.safetensors"), str(tmp_path / "a.npy"), "--out-dir", str(tmp_path / "x"),
                 "--min-size", "-1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "min_size must be >= 0, got -1" in err[0]


@pytest.mark.slow
def test_train_command_says_what_it_drops_and_can_keep_the_models_sizes(tmp_path, capsys):
    image, labels = discs((80, 80), centres=((25, 25), (45, 52), (60, 20)), radius=8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    args = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"), *TINY, "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "fit.safetensors")]) == 0
    size, piece = int(SIZE_FRACTION * (labels == 1).sum()), int(0.3 * (labels == 1).sum())
    said = capsys.readouterr().out
    assert f"segmenting drops objects under {size} px (1.25x that at the image's border)" in said
    assert f"into pieces under {piece} px" in said
    assert load_model(tmp_path / "fit.safetensors").spec.instances.min_size == size
    assert main([*args, "--out", str(tmp_path / "kept.safetensors"), "--keep-sizes"]) == 0
    assert load_model(tmp_path / "kept.safetensors").spec.instances == InstanceConfig()
    kept = capsys.readouterr().out  # the default keeps no piece size and no shape split: said plainly
    assert "no split by shape" in kept and "under 0 px" not in kept and "under 0.000" not in kept
