import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_unet import save_model
from napari_unet.core.stream import segment_to

from .lazy import drawn_image, threshold_model
from .test_blocks import border_and_corner_objects

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    image = drawn_image(border_and_corner_objects(chunk=32, n=4)[:124, :118])
    source = zarr.create_array(folder / "image.zarr", shape=image.shape, chunks=(40, 40), dtype=image.dtype)
    source[:] = image
    model = threshold_model()
    save_model(model, folder / "model.safetensors")
    reference = folder / "reference.zarr"
    segment_to(model, folder / "image.zarr", reference, chunk=32, probabilities=True)
    return folder, reference


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    found = {name: group[name][:] for name in ("0", "1", "2", "probabilities/0")}
    found["attributes"] = dict(group.attrs)
    return found


def killed_run(folder: Path, out: Path, point: str, n: int) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(Path(__file__).with_name("killed_run.py")), str(folder / "model.safetensors"),
               str(folder / "image.zarr"), str(out), point, str(n)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


# 16 chunks: records 1-16 are step 1, 17-32 step 3, then the two pyramid levels.
KILLS = [("after-record", 1), ("before-record", 7), ("after-record", 16), ("in-label", 5), ("before-record", 33),
         ("cleanup", 1)]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("point", "n"), KILLS)
def test_a_killed_run_resumes_to_the_same_output(inputs, tmp_path, point, n):
    folder, reference = inputs
    out = tmp_path / "out.zarr"
    assert killed_run(folder, out, point, n) == -signal.SIGKILL
    assert out.exists()
    assert (out / "work").exists() or point == "cleanup"
    result = segment_to(folder / "model.safetensors", folder / "image.zarr", out, chunk=32, probabilities=True,
                        resume=True)  # fmt: skip
    assert result.resumed > 0 or point == "cleanup"
    expected, found = arrays_of(reference), arrays_of(out)
    assert found.pop("attributes") == expected.pop("attributes")
    for name, array in expected.items():
        np.testing.assert_array_equal(found[name], array, err_msg=name)
    assert not (out / "work").exists()


def test_a_run_killed_twice_still_finishes_identically(inputs, tmp_path):
    """In-process variant: stop the generator between chunks twice (as Ctrl-C does)."""
    from napari_unet.core.stream import iter_segment_to

    folder, reference = inputs
    out = tmp_path / "out.zarr"
    for stop_after in (3, 20):
        generator = iter_segment_to(threshold_model(), folder / "image.zarr", out, chunk=32, probabilities=True,
                                    resume=True)  # fmt: skip
        for _ in range(stop_after):
            next(generator)
        generator.close()
    segment_to(threshold_model(), folder / "image.zarr", out, chunk=32, probabilities=True, resume=True)
    expected, found = arrays_of(reference), arrays_of(out)
    assert found.pop("attributes") == expected.pop("attributes")
    for name, array in expected.items():
        np.testing.assert_array_equal(found[name], array, err_msg=name)
