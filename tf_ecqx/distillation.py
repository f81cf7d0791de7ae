"""Distiller: quantization-aware training of a QAT model (the student) against its float model (the teacher).

As in the Keras knowledge-distillation example (Hinton et al. 2015): a keras.Model whose train step minimises
alpha * loss(y, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)). Callbacks, reports
and `quantized_student` see through it to the student; save and export the student itself.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from tf_ecqx._keras import keras
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.quantization.settings import check_share


def check_temperature(temperature: float) -> float:
    """temperature as float if it is a finite number > 0 (the softening of both models' logits)."""
    number = not isinstance(temperature, bool) and isinstance(temperature, (int, float))
    if not number or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"temperature={temperature!r} is not allowed: it divides the logits before the softmax, a finite number "
            "> 0 (1 = unsoftened; the Keras example uses 3-10)."
        )
    return float(temperature)


def _output_shape(model: keras.Model, role: str) -> tuple:
    outputs = getattr(model, "outputs", None)
    if not isinstance(model, keras.Model) or not outputs or len(outputs) != 1:
        raise ValueError(
            f"Distiller: the {role} must be a built tf_keras functional or Sequential model with one output (logits); "
            f"got {type(model).__name__}."
        )
    return tuple(outputs[0].shape[1:])


def distillation_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float) -> tf.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (T^2 keeps the gradient scale
    independent of T)."""
    teacher = tf.cast(teacher_logits, tf.float32) / temperature
    student = tf.cast(student_logits, tf.float32) / temperature
    kl = tf.reduce_sum(tf.nn.softmax(teacher) * (tf.nn.log_softmax(teacher) - tf.nn.log_softmax(student)), axis=-1)
    return temperature**2 * tf.reduce_mean(kl)


class Distiller(keras.Model):
    """Trains `student` (a QAT model from quantize_model) with `fit`, also matching the teacher's softened outputs.

    Both models return logits. alpha in [0, 1] weighs the compiled loss on the labels against the distillation term;
    temperature > 0 softens both softmaxes (defaults: the Keras example's). compile as usual: the loss is the
    student's loss on the labels. Logs (of fit and evaluate): "loss" (that loss), the compiled metrics of the student
    and "distillation_loss". Only the student's variables are trained; the teacher runs in inference mode.
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        temperature: float = 3.0,
        alpha: float = 0.1,
        **kwargs: Any,
    ):
        if teacher is None:
            raise ValueError("Distiller: teacher is None; pass the float model the student was quantized from.")
        if teacher is student:
            raise ValueError("Distiller: the teacher is the student itself; pass the float model it came from.")
        student_shape, teacher_shape = _output_shape(student, "student"), _output_shape(teacher, "teacher")
        if student_shape != teacher_shape:
            raise ValueError(
                f"Distiller: the teacher's output shape {teacher_shape} differs from the student's {student_shape}; "
                "pass the float model the student was quantized from."
            )
        if not any(True for _ in quantized_kernels(student)):
            raise ValueError(
                f"Distiller: the student {student.name!r} has no ECQ kernel; pass tf_ecqx.quantize_model(teacher, ...)."
            )
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.temperature = check_temperature(temperature)
        self.alpha = check_share("alpha", alpha, "the weight of the loss on the labels (1 - alpha: distillation)")
        self.distillation_tracker = keras.metrics.Mean(name="distillation_loss")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [*super().metrics, self.distillation_tracker]

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        return self.student(inputs, training=training)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            logits = self.student(x, training=True)
            label_loss = self.compute_loss(x, y, logits, sample_weight)
            distillation = distillation_loss(teacher_logits, logits, self.temperature)
            loss = self.alpha * label_loss + (1.0 - self.alpha) * distillation
        self.optimizer.minimize(loss, self.student.trainable_variables, tape=tape)
        self.distillation_tracker.update_state(distillation)
        return self.compute_metrics(x, y, logits, sample_weight)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        logits = self.student(x, training=False)
        self.compute_loss(x, y, logits, sample_weight)
        self.distillation_tracker.update_state(
            distillation_loss(self.teacher(x, training=False), logits, self.temperature)
        )
        return self.compute_metrics(x, y, logits, sample_weight)


def quantized_student(model: keras.Model) -> keras.Model:
    """The QAT model that callbacks and reports work on: a Distiller's student, else the model itself."""
    return model.student if isinstance(model, Distiller) else model
