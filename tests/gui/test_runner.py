import pytest
import torch

from napari_unet._widgets._runner import JobRunner
from napari_unet.core.errors import NapariUnetError, TrainingError


def failing(error: Exception):
    def job(stop):
        yield "started"
        raise error

    return job


@pytest.mark.parametrize(
    "error, said",
    [
        (TrainingError("the loss became nan at step 3: lower the learning rate"), "the loss became nan at step 3"),
        (NapariUnetError("a plain refusal"), "a plain refusal"),
        (RuntimeError("shape mismatch deep inside torch"), "job failed: shape mismatch deep inside torch"),
    ],
    ids=["TrainingError", "NapariUnetError", "RuntimeError"],
)
def test_a_job_that_fails_says_why_and_ends(qtbot, monkeypatch, error, said):
    """superqt drops any RuntimeError a job ends with (it takes them for a deleted Qt
    object's): a TrainingError left the Train widget busy for good, without a word."""
    monkeypatch.setattr("napari_unet._widgets._runner.show_error", lambda message: None)  # no toast in tests
    heard, ended = [], []
    runner = JobRunner("job", lambda _: None, lambda _: None, lambda: ended.append(True), heard.append)
    runner.start(failing(error))
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert ended == [True] and len(heard) == 1 and heard[0].startswith(said)


def test_a_job_that_returns_keeps_its_result(qtbot):
    returned = []
    runner = JobRunner("job", lambda _: None, returned.append, lambda: None, lambda _: None)
    runner.start(lambda stop: torch.zeros(2).sum().item())
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert returned == [0.0]
