"""quantize_model: what users hand in (a tf_keras or Keras 3 model, or the path of a `.keras` file; layers to exclude
by name or class) turned into a tf_keras model, excluded layer names and one ECQxSettings for the quantization."""

from __future__ import annotations

import os

from tf_ecqx._keras import keras
from tf_ecqx.model_files import load_model_file
from tf_ecqx.quantization.api import quantize_layers
from tf_ecqx.quantization.model_checks import ExcludeSpec
from tf_ecqx.quantization.settings import DEFAULT_LAMBDA, ECQxSettings


def _is_keras3(cls: type) -> bool:
    """Whether a class comes from Keras 3 (module "keras.*"), told without importing Keras 3."""
    return any(c.__module__.startswith("keras.") for c in cls.__mro__)


def _exclude_items(exclude: ExcludeSpec | str | type | None) -> list[str | type]:
    """`exclude` as a list; Keras 3 layer classes become their tf_keras counterparts (the layers of the rebuild)."""
    if exclude is None:
        return []
    items = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
    if any(isinstance(item, type) and _is_keras3(item) for item in items):
        from tf_ecqx.keras3 import tf_keras_counterpart  # the only module that imports Keras 3

        items = [tf_keras_counterpart(item) if isinstance(item, type) and _is_keras3(item) else item for item in items]
    return items


def _tf_keras_model(model: keras.Model | str | os.PathLike) -> keras.Model:
    """The model itself, the model of a `.keras` file, or the tf_keras rebuild of a Keras 3 model."""
    if isinstance(model, (str, os.PathLike)):
        return load_model_file(model)
    if _is_keras3(type(model)):
        from tf_ecqx.keras3 import from_keras3  # the only module that imports Keras 3

        return from_keras3(model)
    return model


def quantize_model(
    model: keras.Model | str | os.PathLike,
    bits: int = 4,
    lambda_: float = DEFAULT_LAMBDA,
    exclude: ExcludeSpec | str | type | None = None,
    gradient: str = "reference",
    ecqx: bool = False,
    p: float = 0.1,
    q: float = 0.0,
) -> keras.Model:
    """A QAT clone of `model` whose kernels are ECQ-quantized to `bits` bits during training.

    lambda_ sets the entropy pressure (0 = nearest-level rounding; larger = sparser). `exclude` takes layer names or
    classes to keep in float. gradient is "reference" (EC2T centroid-scaled) or "ste" (plain straight-through).
    ecqx=True corrects the zero cost by LRP weight relevances: train with
    `callbacks=[tf_ecqx.RelevanceCallback(train_data, relevance=...)]`, which computes them. p and q are the sparsity
    ECQx may give back and add relative to ECQ (q = 0: the reference, where relevance never prunes more than ECQ).
    Activations get tfmot's 8-bit fake quantization so that a full-integer TFLite export is possible. `model` may
    also be a Keras 3 model (rebuilt as tf_keras first, see tf_ecqx.from_keras3) or the path of a `.keras` file
    written by either.
    """
    settings = ECQxSettings(bits=bits, lambda_=lambda_, gradient=gradient, ecqx=ecqx, p=p, q=q)  # checked first
    items = _exclude_items(exclude)
    model = _tf_keras_model(model)
    return quantize_layers(model, settings, items)
