"""PNG plots: input-relevance heatmaps (LRP) of a batch, per-layer sparsity and entropy, and a layer's code histogram.

matplotlib is used through its object API (no pyplot), so a user's interactive backend is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.files import atomic_path
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.relevance.composites import Composite
from tf_ecqx.relevance.propagation import checked_input, lrp
from tf_ecqx.report import LayerStats


def _image_batch(x: Any) -> np.ndarray:
    """x as float images (N, H, W) or (N, H, W, C), or a ValueError saying what was passed."""
    x = np.asarray(x, np.float32)
    if x.ndim not in (3, 4) or x.shape[0] == 0 or min(x.shape[1:3]) < 2:
        raise ValueError(
            f"plot_relevance needs a non-empty batch of images, shape (N, H, W) or (N, H, W, C) with N >= 1 and H, W "
            f">= 2; got shape {x.shape}."
        )
    return x


def _displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image (H, W) or (H, W, C) as imshow shows it: RGB scaled to [0, 1], other channel counts averaged to gray."""
    if image.ndim == 3 and image.shape[-1] == 3:
        low, high = image.min(), image.max()
        return (image - low) / (high - low) if high > low else np.zeros_like(image), None
    return (image.mean(axis=-1) if image.ndim == 3 else image), "gray"


def plot_relevance(
    model: keras.Model,
    x: Any,
    path: str | Path,
    y: Any = None,
    composite: str | Composite = "epsilon_plus_flat_bn_pass",
    columns: int = 8,
) -> Path:
    """Save a PNG grid of the input relevances (native lrp) of an image batch, to see what the model looks at.

    Each sample shows the image above its heatmap: relevance summed over channels, divided by the sample's max |R|,
    on a diverging colormap centred at 0 (red for, blue against the target class). y: target class per sample (None =
    the predicted class); composite as in lrp(); columns: samples per row. Returns the path written.
    """
    from matplotlib.figure import Figure  # no pyplot: the user's interactive backend is left alone

    images = checked_input(model, _image_batch(x))
    if not (isinstance(columns, int) and columns >= 1):
        raise ValueError(f"columns must be a positive integer; got {columns!r}.")
    predicted = np.argmax(model(images, training=False), axis=-1).astype(np.int32)
    targets = predicted if y is None else y  # the class explained is the class shown
    relevance = lrp(model, images, targets, composite=composite).input
    heatmaps = relevance.sum(axis=-1) if relevance.ndim == 4 else relevance
    scale = np.abs(heatmaps).max(axis=(1, 2), keepdims=True)
    heatmaps = np.divide(heatmaps, scale, out=np.zeros_like(heatmaps), where=scale > 0)
    targets = np.asarray(targets)

    n = len(images)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(1.6 * columns + 0.8, 3.4 * rows), layout="constrained")
    grid = figure.add_gridspec(2 * rows, columns)
    for i in range(n):
        row, column = divmod(i, columns)
        top, bottom = figure.add_subplot(grid[2 * row, column]), figure.add_subplot(grid[2 * row + 1, column])
        image, cmap = _displayable(images[i])
        top.imshow(image, cmap=cmap)
        title = f"class {targets[i]}" if y is None else f"target {targets[i]} (pred {predicted[i]})"
        top.set_title(title, fontsize=8)
        shown = bottom.imshow(heatmaps[i], cmap="bwr", vmin=-1.0, vmax=1.0)
        for axes in (top, bottom):
            axes.set_xticks([])
            axes.set_yticks([])
    figure.colorbar(shown, ax=figure.axes, shrink=0.6, label="relevance / max |R|")
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path


def plot_layer_stats(stats: list[LayerStats], path: str | Path) -> Path:
    """Save a PNG of per-layer sparsity and entropy (bits per weight) as bars, layers in model order."""
    from matplotlib.figure import Figure

    if not stats:
        raise ValueError("plot_layer_stats needs the statistics of at least one quantized layer.")
    names = [s.name for s in stats]
    figure = Figure(figsize=(max(4.0, 0.9 * len(stats) + 2), 5.5), layout="constrained")
    sparsity, entropy = figure.subplots(2, 1, sharex=True)
    sparsity.bar(names, [100 * s.sparsity for s in stats], color="tab:blue")
    sparsity.set_ylabel("sparsity (%)")
    sparsity.set_ylim(0, 100)
    entropy.bar(names, [s.entropy for s in stats], color="tab:orange")
    entropy.set_ylabel("entropy (bits/weight)")
    entropy.set_ylim(0, max(s.bits for s in stats))
    entropy.tick_params(axis="x", labelrotation=45)
    return _save(figure, path)


def plot_code_histogram(qmodel: keras.Model, layer: str, path: str | Path) -> Path:
    """Save a PNG histogram of the integer codes of one quantized layer (log count axis: zero dominates)."""
    from matplotlib.figure import Figure

    kernels = {k.name: k for k in quantized_kernels(qmodel)}
    if layer not in kernels:
        raise ValueError(f"No quantized layer {layer!r}; quantized layers: {', '.join(kernels) or 'none'}.")
    kernel = kernels[layer]
    codes = kernel.codes().numpy().ravel()
    levels = np.arange(int(kernel.state["k_min"]), int(kernel.state["k_max"]) + 1)
    counts = np.array([np.sum(codes == k) for k in levels])
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.subplots()
    axes.bar(levels, counts, color=np.where(levels == 0, "tab:red", "tab:blue"))
    axes.set_yscale("log")
    axes.set_xlabel("code k (value = k * step)")
    axes.set_ylabel("weights")
    axes.set_title(f"{layer}: {kernel.settings.bits}-bit codes, {np.mean(codes == 0):.1%} zero")
    return _save(figure, path)
