"""ONNX Runtime as a peer of ``napari_unet.predict`` on the very same tiles.

The model's own valid-convolution module is exported to ONNX at predict's tile shape
(dynamic batch), optionally quantised to int8 with ONNX Runtime's dynamic quantisation
(weights int8 ahead of time, activations per call), and run by an ONNX Runtime CPU
session with as many threads as torch uses. :func:`network_of_session` swaps the
network inside predict's tile loop, so tiling, normalisation, stitching and
post-processing are predict's own and only the network differs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from pathlib import Path

import torch

INPUT, OUTPUT = "tiles", "logits"
ORT_MISSING = "ONNX RUNTIME NOT INSTALLED (the export extra): its rows are left out"


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def export_valid_module(model, tile: tuple[int, int], path: Path) -> Path:
    """``model`` (eval mode, valid convolutions) as ONNX for (batch, C, *tile) inputs."""
    example = torch.zeros(1, model.config.in_channels, *tile)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=17,
        )
    return path


def quantized(path: Path) -> Path:
    """An int8 copy of the ONNX file (dynamic quantisation: ConvInteger / MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.stem + "_int8.onnx")
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QUInt8)
    return out


def session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def network_of_session(ort_session):
    """Within the block, predict computes each tile batch's logits with ``ort_session``."""
    from napari_unet.core import predict as predict_module

    def run(tiles: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(ort_session.run([OUTPUT], {INPUT: tiles.numpy()})[0])

    original = predict_module._network
    predict_module._network = lambda *args, **kwargs: run
    try:
        yield
    finally:
        predict_module._network = original
