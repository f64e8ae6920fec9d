"""The README of a bioimage.io model package: for the people who download it.

It says what the model was trained on and how (from the model file's training
record), what the network is, what its input and output mean, how to run it in Fiji,
Python and napari, how closely its weight formats agreed when it was written, and
which paper to cite.
"""

from __future__ import annotations

from . import exchange
from .model import UNet
from .model_card import describe_network, describe_training

PAPER_DOI = "10.1007/978-3-319-24574-4_28"
PAPER_TEXT = (
    "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015, LNCS 9351, pp. 234-241."
)


def package_readme(model: UNet, name: str, trained_on: str, checks: dict[str, float], shape: tuple[int, ...]) -> str:
    """The README.md of a package of ``model``: what it was trained on (``trained_on``, the
    user's words) and how, the network, its input and output, how to use it, and the
    largest differences between its weight formats (``checks``) on the test tensors of
    spatial ``shape``."""
    config, spec = model.config, model.spec
    sizes = exchange.axis_sizes(model)
    norm, inst = spec.normalization, spec.instances
    names = "zyx"[-config.ndim :]
    axes = ", ".join(names)
    per_axis = lambda values: " x ".join(str(v) for v in values)  # noqa: E731
    contexts = [axis.context for axis in sizes]
    unit = "voxels" if config.ndim == 3 else "px"
    lines = [
        f"# {name}",
        "",
        "A U-Net (Ronneberger et al. 2015) trained and exported with napari-unet. It gives the probability that",
        "a pixel belongs to an object (a cell or nucleus) rather than to the background.",
        "",
        "## Data it was trained on",
        "",
        trained_on,
        "",
        "## Training",
        "",
        *describe_training(getattr(model, "metadata", {}) or {}),
        "",
        "## Network",
        "",
        f"- {describe_network(model)}",
        f"- unpadded {'x'.join('3' * config.ndim)} convolutions"
        + (" (1 wide along an axis at the levels where the voxels are coarse along it)" if config.ndim == 3 else "")
        + f": the bare network's output is {per_axis(2 * c for c in contexts)} px ({axes}) smaller than its input.",
        f"  The exported module mirrors at least {per_axis(contexts)} px onto each side itself, so output and input",
        f"  have the same size; the outer {per_axis(a.halo for a in sizes)} px of each output tile saw mirrored",
        "  context and are declared as `halo`.",
        "- input sizes: "
        + ", ".join(f"{name} {a.smallest} + n * {a.step}" for name, a in zip(names, sizes))
        + " px (n = 0, 1, 2, ...)",
        "",
        "## Input and output",
        "",
        f"- input `raw` (batch, channel, {axes}): any intensities; the preprocessing maps the {norm.low} and",
        f"  {norm.high} percentiles of each image and channel to 0 and 1 (`scale_range`, values not clipped).",
        f"- output `foreground` (batch, channel, {axes}): the foreground probability, 1 minus the softmax",
        "  probability of the background class.",
        f"- napari-unet turns it into instances with threshold {inst.threshold}, minimum size {inst.min_size} {unit}",
        f"  ({inst.edge_size_factor:g} times that for objects at the image's border),",
        f"  holes filled: {inst.fill_holes}, objects grown by {inst.expand} px, touching objects split where",
        f"  the smoothed probability dips by {inst.split} between two peaks, on average along the line where",
        f"  their pieces meet (0: never; a piece under {inst.min_piece} px joins its neighbour), and objects",
        f"  filling less than {inst.min_fill} of the ellipse of their second moments split at the necks of",
        f"  their mask at least {inst.neck} px deep (0: never) unless a piece would have fewer than",
        f"  {inst.min_piece} px.",
        "",
        "## How to use it",
        "",
        "- Fiji with deepImageJ: *DeepImageJ Install Model*, choose this zip file; then open an image and run",
        "  *DeepImageJ Run* with this model; threshold the probability at 0.5 to get a mask.",
        "- Python: `bioimageio predict` (package bioimageio.core) or `napari_unet.load_model('<this zip>')`.",
        "- napari: drop the zip on the viewer with napari-unet installed; it becomes the session's model.",
        "",
        "## Validation",
        "",
        f"Checked when the package was written, on the {per_axis(shape)} px test tensors:",
        "",
        *(f"- {label}: max |difference| {value:.2e}" for label, value in checks.items()),
        "",
        "Measure the segmentation quality on annotated images of your own before relying on it.",
        "",
        "## Citation",
        "",
        f"{PAPER_TEXT} doi:{PAPER_DOI}",
        "",
    ]
    return "\n".join(lines)
