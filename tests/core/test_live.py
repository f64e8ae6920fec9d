import dataclasses
import itertools

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.core.config import IGNORE_LABEL
from napari_unet.core.live import (
    AVERAGE_RATE,
    LIVE_SPLIT,
    AnnotationProblem,
    LivePreview,
    LiveTraining,
    accept_all,
    accept_object,
)
from napari_unet.core.object_size import SIZE_FRACTION
from napari_unet.core.train_config import TrainConfig
from napari_unet.core.train_events import StepProgress

CONFIG = TrainConfig(tile=60, batch_size=2, device="cpu", precision="fp32", warmup_steps=1, seed=1)


def partial_annotation(labels, cells):
    """Cells ``cells`` of ``labels`` and a 3-px background ring around them; the rest -1."""
    from scipy import ndimage

    annotation = np.full_like(labels, IGNORE_LABEL)
    chosen = np.isin(labels, cells)
    ring = ndimage.binary_dilation(chosen, iterations=3) & (labels == 0)
    annotation[ring] = 0
    annotation[chosen] = labels[chosen]
    return annotation


def test_edits_reach_the_running_trainer_between_steps():
    image, labels = nu.synthetic_nuclei((96, 96), seed=2)
    cells = [i for i in np.unique(labels) if i > 0]
    live = LiveTraining(nu.UNet(base_channels=4, depth=2), image, partial_annotation(labels, cells[:1]), CONFIG)
    live.preview_seconds = 0.0
    events = live.run()
    assert isinstance(next(events), StepProgress)
    assert isinstance(next(events), LivePreview)
    new_cell = labels == cells[1]
    assert not live.trainer.stream.planes[0].weights[new_cell].any()  # unannotated so far
    live.update(partial_annotation(labels, cells[:2]))
    next(events)
    assert live.edits_applied == 1
    assert live.trainer.stream.planes[0].weights[new_cell].all()  # the new cell is in the samples now
    live.update(np.full_like(labels, IGNORE_LABEL))  # erased everything: keep training on the last one
    problems = [e for e in (next(events) for _ in range(4)) if isinstance(e, AnnotationProblem)]
    assert problems and "empty" in problems[0].message
    live.stop()
    for _ in events:
        pass
    assert live.trainer.step >= 3


def test_an_edit_that_trains_but_leaves_cells_unpainted_on_0_is_reported():
    """Live training on napari's own 0-filled labels layer: the edit trains, and the
    widget hears why it most likely should not."""
    image, labels = nu.synthetic_nuclei((256, 256), seed=3)
    first_cell = np.unique(labels[labels > 0])[:1]
    annotation = partial_annotation(labels, first_cell)
    live = LiveTraining(nu.UNet(base_channels=4, depth=2), image, annotation, CONFIG, name="annotation 'cells'")
    live.preview_seconds = 1e9
    events = live.run()
    next(event for event in events if isinstance(event, StepProgress))
    painted = np.isin(labels, np.unique(labels[labels > 0])[:3])
    live.update(np.where(painted, labels, 0))
    problems = [event for event in itertools.islice(events, 6) if isinstance(event, AnnotationProblem)]
    assert problems and problems[0].trained and "as the 3 painted cells" in problems[0].message
    assert problems[0].message.startswith("annotation 'cells': ")  # named as the widget names it
    assert live.edits_applied == 1  # trained on, unlike a problem that keeps the previous annotation
    live.stop()
    for _ in events:
        pass


def test_previews_come_from_the_average_of_the_last_steps_and_the_model_keeps_it():
    """The averaged weights are the mean of the weights after each step so far
    (while there are fewer steps than 1 / AVERAGE_RATE); a preview is the
    segmentation by that average, and a stopped run leaves it in the model."""
    image, labels = nu.synthetic_nuclei((96, 96), seed=2)
    cells = [i for i in np.unique(labels) if i > 0]
    live = LiveTraining(nu.UNet(base_channels=4, depth=2), image, partial_annotation(labels, cells[:3]), CONFIG)
    live.preview_seconds = 1e9  # one preview, after the first step
    events, after_each_step = live.run(), []
    for _ in range(3):
        next(event for event in events if isinstance(event, StepProgress))
        after_each_step.append({k: v.clone() for k, v in live.model.state_dict().items() if v.is_floating_point()})
    assert 1 / AVERAGE_RATE > 3
    averaged = live.averaged.state_dict()
    for name in after_each_step[0]:
        mean = sum(step[name] for step in after_each_step) / 3
        torch.testing.assert_close(averaged[name], mean, rtol=1e-5, atol=1e-6)
    current = live.model.state_dict()
    assert any(not torch.equal(averaged[name], current[name]) for name in after_each_step[0])
    preview = live.preview(live.trainer.step, 0.0)
    np.testing.assert_array_equal(preview.labels, nu.segment(live.averaged, image, device="cpu"))
    live.stop()
    for _ in events:
        pass
    final = live.model.state_dict()
    for name, value in live.averaged.state_dict().items():
        assert torch.equal(final[name], value)


def test_previews_and_the_kept_model_split_at_the_live_depth():
    """A briefly trained network's previews split touching objects only at dips of
    LIVE_SPLIT, not by shape, and the model keeps those settings; a model that keeps
    touching objects together (split 0) stays so."""
    image, labels = nu.synthetic_nuclei((96, 96), seed=2)
    cells = [i for i in np.unique(labels) if i > 0]
    model = nu.UNet(base_channels=4, depth=2)
    assert 0 < model.spec.instances.split < LIVE_SPLIT
    live = LiveTraining(model, image, partial_annotation(labels, cells[:2]), CONFIG)
    assert model.spec.instances.split == live.averaged.spec.instances.split == LIVE_SPLIT
    assert model.spec.instances.min_fill == 0.0 and model.spec.instances.min_piece > 0  # sizes fitted, no shape split
    paper = nu.UNet(base_channels=4, depth=2)
    paper.spec = dataclasses.replace(paper.spec, instances=nu.InstanceConfig(split=0.0))
    LiveTraining(paper, image, partial_annotation(labels, cells[:2]), CONFIG)
    assert paper.spec.instances.split == 0.0


def test_accepting_copies_exactly_the_object_onto_unannotated_pixels():
    annotation = np.full((20, 20), IGNORE_LABEL, np.int32)
    annotation[0:5, 0:5] = 1
    preview = np.zeros((20, 20), np.int32)
    preview[3:8, 3:8] = 4  # overlaps the user's cell 1 at 3:5
    preview[10:15, 10:15] = 7
    expected = annotation.copy()
    assert accept_object(annotation, preview, 7) == 2
    expected[10:15, 10:15] = 2
    np.testing.assert_array_equal(annotation, expected)
    assert accept_object(annotation, preview, 0) == 0
    preview[16:19, 0:3] = 9
    assert accept_all(annotation, preview) == 1  # 9 only: 4 touches the user's cell, 7 is accepted already
    assert (annotation[16:19, 0:3] == 3).all() and (annotation[5:8, 5:8] == IGNORE_LABEL).all()


def test_live_training_needs_a_cell_to_start():
    image, labels = nu.synthetic_nuclei((96, 96), seed=2)
    with pytest.raises(nu.TrainingDataError):
        LiveTraining(nu.UNet(base_channels=4, depth=2), image, np.full_like(labels, IGNORE_LABEL), CONFIG)


def test_previews_drop_objects_under_the_minimum_that_the_latest_annotation_suggests(monkeypatch):
    """... and never split by shape, before or after an edit refits the sizes."""
    from napari_unet.core import live as live_module

    image, labels = nu.synthetic_nuclei((96, 96), seed=2)
    cell = labels[33, 49]  # a cell away from the border and from the others
    live = LiveTraining(nu.UNet(base_channels=4, depth=2), image, partial_annotation(labels, [cell]), CONFIG)
    live.preview_seconds = 0.0
    asked = []
    real_segment = live_module.segment
    monkeypatch.setattr(
        live_module, "segment", lambda *a, **kw: asked.append(kw["instances"]) or real_segment(*a, **kw)
    )
    events = live.run()
    next(events), next(events)  # a step, a preview
    small = np.full_like(labels, IGNORE_LABEL)
    small[30:40, 45:55] = 0
    small[33:37, 48:52] = 1  # now the one cell is 16 px, ringed by background
    live.update(small)
    next(events), next(events)
    live.stop()
    for _ in events:
        pass
    first = int(SIZE_FRACTION * (labels == cell).sum())
    assert asked[0].min_size == first > 16 and asked[-1].min_size == 16 == live.model.spec.instances.min_size
    assert {instances.min_fill for instances in asked} == {0.0} == {live.model.spec.instances.min_fill}
