"""Numeric core of ECQ: pure TensorFlow functions on kernels, no Keras, no state."""
