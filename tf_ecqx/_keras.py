"""The single Keras switch: tf_ecqx builds on tfmot, which works on Keras 2 (`tf_keras`) only."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402

__all__ = ["keras"]
