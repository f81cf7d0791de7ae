"""Which Keras wrote a `.keras` file, and loading a model from one (tf_keras directly, Keras 3 via keras3.py)."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

from tf_ecqx._keras import keras
from tf_ecqx.quantization.api import quantize_scope


def saved_keras_version(path: str | os.PathLike) -> str:
    """The Keras version recorded in a `.keras` archive ("2.x" for tf_keras, "3.x" for Keras 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No Keras model file at {str(path)!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            version = str(json.loads(archive.read("metadata.json")).get("keras_version", "unknown"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{str(path)!r} is not a `.keras` model archive (save models with model.save('name.keras')); "
            "load the model yourself and pass the model object."
        ) from error
    if damaged is not None:
        raise ValueError(
            f"{str(path)!r} is damaged: its member {damaged!r} fails its CRC check (an incomplete copy or a disk "
            "error). Use an intact copy or save the model again."
        )
    return version


def load_model_file(path: str | os.PathLike) -> keras.Model:
    """The tf_keras model in a `.keras` file: a float or tf_ecqx QAT model written by tf_keras, or a Keras 3 model
    (rebuilt as tf_keras)."""
    if saved_keras_version(path).startswith("3."):
        from tf_ecqx.keras3 import from_keras3  # the only module that imports Keras 3

        return from_keras3(path)
    with quantize_scope():
        return keras.models.load_model(path, compile=False)
