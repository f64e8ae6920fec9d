import numpy as np
import pytest
import zarr

from napari_unet import ConfigError, save_model
from napari_unet.cli import main
from napari_unet.core.cluster import cluster_client, model_loads
from napari_unet.core.progress import drive
from napari_unet.core.stream import iter_segment_to, segment_to

from .lazy import drawn_image, threshold_model
from .test_blocks import border_and_corner_objects

pytest.importorskip("distributed")


@pytest.mark.slow
def test_two_worker_processes_write_what_one_process_writes(tmp_path, capfd):
    image = drawn_image(border_and_corner_objects(chunk=32, n=4)[:124, :118])
    source = zarr.create_array(tmp_path / "image.zarr", shape=image.shape, chunks=(50, 50), dtype=image.dtype)
    source[:] = image
    model = threshold_model()
    save_model(model, tmp_path / "model.safetensors")
    segment_to(model, tmp_path / "image.zarr", tmp_path / "one.zarr", chunk=32, probabilities=True)
    with cluster_client(workers=2) as client:
        progress = []
        result = drive(
            iter_segment_to(model, tmp_path / "image.zarr", tmp_path / "two.zarr", chunk=32, probabilities=True,
                            client=client),
            progress.append,
        )  # fmt: skip
        loads = client.run(model_loads)
        assert len(client.scheduler_info()["workers"]) == 2
    assert sorted(loads.values()) in ([0, 1], [1, 1])  # each worker loaded the model (from its bytes) once at most
    assert progress[-1].done == progress[-1].total == 32 and result.computed == 32
    one, two = zarr.open_group(tmp_path / "one.zarr", mode="r"), zarr.open_group(tmp_path / "two.zarr", mode="r")
    for name in ("0", "1", "2", "probabilities/0"):
        np.testing.assert_array_equal(two[name][:], one[name][:], err_msg=name)
    # the command line's --workers takes the same route
    capfd.readouterr()
    code = main(["segment", str(tmp_path / "model.safetensors"), str(tmp_path / "image.zarr"),
                 "--out", str(tmp_path / "cli.zarr"), "--chunk", "32", "--workers", "2"])  # fmt: skip
    assert code == 0
    said = capfd.readouterr()
    assert "Scheduler" not in said.err and "Nanny" not in said.err, said.err  # dask's start and teardown: 50 lines
    assert " objects -> " in said.out
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "cli.zarr" / "0", mode="r")[:], one["0"][:])


def test_cluster_choices_are_checked():
    with pytest.raises(ConfigError, match="not both"), cluster_client(workers=2, scheduler="tcp://x:1"):
        pass
    with pytest.raises(ConfigError, match="at least 1"), cluster_client(workers=0):
        pass
