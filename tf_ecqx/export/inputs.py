"""Checks of what to_tflite is given, before anything reaches TensorFlow or a runtime.

The converter and the runtimes fail late and unclearly on data they cannot feed ("failed to prepare", a type error
from set_tensor, or an abort of the whole process), so the model's interface and the samples are checked here, and
each problem is named with its fix. Samples are read once: a generator serves both calibration and verification.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from tf_ecqx._keras import keras

CALIBRATION_SAMPLES = 200
VERIFICATION_SAMPLES = 500
ONE_IN_ONE_OUT = "to_tflite exports models with one float input and one output"

Shape = tuple[int | None, ...]


def sample_shape(qmodel: keras.Model) -> Shape:
    """The shape of one input sample of qmodel, after checking that it has one float input and one output."""
    name = qmodel.name
    if len(qmodel.inputs) != 1:
        raise ValueError(
            f"{ONE_IN_ONE_OUT}; model {name!r} has {len(qmodel.inputs)} inputs {_names(qmodel.input_names)}. "
            "Export a model with one input (merge the inputs inside it, e.g. stack images on the channel axis)."
        )
    if len(qmodel.outputs) != 1:
        raise ValueError(
            f"{ONE_IN_ONE_OUT}; model {name!r} has {len(qmodel.outputs)} outputs {_names(qmodel.output_names)}. "
            "Export a single-output model: keras.Model(qmodel.inputs, qmodel.outputs[0])."
        )
    dtype = tf.as_dtype(qmodel.inputs[0].dtype)
    if not dtype.is_floating:
        raise ValueError(
            f"{ONE_IN_ONE_OUT}; model {name!r} takes {dtype.name} input {qmodel.input_names[0]!r}. Build the model "
            "on a float32 input and convert the data to float before it (e.g. x.astype('float32') / 255): the "
            "exported file quantizes the float input to int8 itself."
        )
    return tuple(qmodel.inputs[0].shape[1:])


def _names(names: list[str]) -> str:
    return "(" + ", ".join(repr(name) for name in names) + ")"


def calibration_and_verification(
    representative_data: np.ndarray | tf.data.Dataset | Iterable,
    verification_data: np.ndarray | tf.data.Dataset | Iterable | None,
    shape: Shape,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked float32 calibration samples and verification samples (default: the representative data, read once).
    Where the model leaves its input size open (a fully convolutional net), the file is made for the size of the
    representative data, and every sample must have it."""
    if verification_data is None:
        representative = read_samples(representative_data, "representative_data", shape, VERIFICATION_SAMPLES)
        return representative[:CALIBRATION_SAMPLES], representative
    calibration = read_samples(representative_data, "representative_data", shape, CALIBRATION_SAMPLES)
    verification = read_samples(verification_data, "verification_data", calibration.shape[1:], VERIFICATION_SAMPLES)
    return calibration, verification


def read_samples(data: np.ndarray | tf.data.Dataset | Iterable, name: str, shape: Shape, limit: int) -> np.ndarray:
    """Up to `limit` samples as float32 from an array, a (x, y) tuple, or an iterable (dataset, generator) of x or
    (x, y) batches; each batch checked against the model's sample `shape`, and the samples checked to be finite."""
    batches, count = [], 0
    for batch in _batches(data):
        batches.append(_checked_batch(batch, name, shape)[: limit - count])
        shape = batches[0].shape[1:]  # an open input size is fixed by the first batch
        count += len(batches[-1])
        if count >= limit:
            break
    if count == 0:
        raise ValueError(f"{name} is empty: pass at least one input sample (e.g. 100-500 training images).")
    samples = np.concatenate(batches).astype(np.float32)
    _check_finite(samples, name)
    return samples


def _batches(data: np.ndarray | tf.data.Dataset | Iterable) -> Iterable:
    """The input batches of `data`: the array itself (or x of an (x, y) tuple), else x of each element it yields."""
    if isinstance(data, tuple):
        data = data[0]
    if hasattr(data, "__array__"):  # a numpy array or a tensor: one batch
        return [data]
    return (batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data)


def _checked_batch(batch: object, name: str, shape: Shape) -> np.ndarray:
    """The batch as an array, once it holds numbers and its samples have the model's sample shape."""
    try:
        array = np.asarray(batch)
    except (ValueError, TypeError) as error:
        raise TypeError(
            f"{name} is not an array of numbers: numpy cannot make one of it ({error}). Pass a numpy array of "
            "samples, or batches of them, all of one shape."
        ) from None
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} holds {array.dtype} values; to_tflite needs numbers (int or float samples for the model's float "
            "input)."
        )
    if _fits(array.shape, shape):
        raise ValueError(
            f"{name} is a single sample of shape {array.shape} without a batch axis; the model takes batches of shape "
            f"{(None, *shape)}: add a batch axis (x[None] for one sample, dataset.batch(32) for a dataset of single "
            "samples)."
        )
    if array.ndim == 0 or not _fits(array.shape[1:], shape):
        raise ValueError(
            f"{name} has samples of shape {array.shape[1:]}, but the model takes samples of shape {shape} (batches of "
            f"{(None, *shape)}). Pass data shaped like the model's input, qmodel.inputs[0]."
        )
    return array


def _fits(actual: tuple[int, ...], expected: Shape) -> bool:
    """Whether a shape matches the model's, where the model leaves a dimension open (None)."""
    return len(actual) == len(expected) and all(e is None or a == e for a, e in zip(actual, expected))


def _check_finite(samples: np.ndarray, name: str) -> None:
    """Refuse NaN and inf: calibration would take them as the input range, verification would compare nonsense."""
    finite = np.isfinite(samples)
    if not finite.all():
        first = int(np.argmin(finite.reshape(len(samples), -1).all(axis=1)))
        raise ValueError(
            f"{name} holds {int(np.isnan(samples).sum())} NaN and {int(np.isinf(samples).sum())} inf values (first in "
            f"sample {first}); calibration and verification need finite inputs. Drop or repair those samples."
        )
