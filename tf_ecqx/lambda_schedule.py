"""LambdaSchedule: a Keras callback that sets the entropy weight lambda of every ECQ(x) kernel during `fit`.

The lambda is a variable of each quantizer (ECQxWeightQuantizer.lambda_variable), read by the compiled train step:
assigning it changes the assignment from the next step on without retracing. The schedule is a function of the
optimizer's step count, which a saved model keeps; it sets lambda at the start of each fit and before every step, so a
fit resumed from a saved model continues where it stopped. lambda itself is not saved (saved files keep the layout they
had before LambdaSchedule): a model saved mid-ramp loads with lambda = its settings' until a LambdaSchedule sets it
again. A ramp ends within its fit, so a model saved after the fit has lambda = its settings' anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from tf_ecqx._keras import keras
from tf_ecqx.distillation import quantized_student
from tf_ecqx.quantization.kernels import QuantizedKernel, quantized_kernels
from tf_ecqx.quantization.settings import STEPS, check_count, check_lambda


class LambdaSchedule(keras.callbacks.Callback):
    """lambda as a function of the training step s (the optimizer's iterations, counted from the first fit).

    ramp: LambdaSchedule(ramp_steps=N, warmup_steps=W) keeps lambda at 0 for W steps, then raises it linearly to each
    kernel's own lambda (its settings, e.g. quantize_model's lambda_) over N steps: factor min(1, (s - W + 1) / N).
    schedule: LambdaSchedule(schedule=f) sets lambda = f(s) for every kernel, f returning a number in [0, 100].
    Refused before the first step: a ramp that would not end within the fit, and any value of f outside [0, 100] on
    the steps of the fit (when Keras knows the steps per epoch; else each value is checked when it is used).
    """

    def __init__(
        self,
        ramp_steps: int = 0,
        warmup_steps: int = 0,
        schedule: Callable[[int], float] | None = None,
    ):
        super().__init__()
        self.ramp_steps = check_count("ramp_steps", ramp_steps, minimum=0, meaning=STEPS)
        self.warmup_steps = check_count("warmup_steps", warmup_steps, minimum=0, meaning=STEPS)
        if schedule is not None and not callable(schedule):
            raise ValueError(f"schedule={schedule!r} must be a callable step -> lambda (or None for a ramp).")
        if (schedule is None) == (ramp_steps + warmup_steps == 0):
            raise ValueError(
                "LambdaSchedule takes either ramp_steps/warmup_steps (a ramp to each kernel's lambda) or schedule "
                f"(a callable step -> lambda); got ramp_steps={ramp_steps}, warmup_steps={warmup_steps}, "
                f"schedule={schedule!r}."
            )
        self.schedule = schedule
        self._kernels: list[QuantizedKernel] = []
        self._checked = False
        self._ramp_done = False

    def value(self, step: int, target: float) -> float:
        """The lambda at training step `step` of a kernel whose settings ask for `target`."""
        if self.schedule is not None:
            return self._checked_value(step)
        if step < self.warmup_steps:
            return 0.0
        return target * min(1.0, (step - self.warmup_steps + 1) / max(self.ramp_steps, 1))

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._kernels = list(quantized_kernels(quantized_student(self.model)))
        if not self._kernels:
            raise ValueError(
                f"LambdaSchedule: model {self.model.name!r} has no ECQ kernel; quantize it with "
                "tf_ecqx.quantize_model(model, ...) first."
            )
        self._checked = False
        self._assign()  # lambda is not saved: a loaded model starts from its settings' lambda

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self._checked:  # the first epoch of this fit: its length is known, no step has run yet
            self._check_run(epoch)
            self._checked = True

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if not self._ramp_done:
            self._assign()

    def _assign(self) -> None:
        """Every kernel's lambda at the optimizer's current step (a finished ramp stays at the targets: no more)."""
        step = self._step()
        for k in self._kernels:
            k.quantizer.lambda_variable.assign(self.value(step, k.settings.lambda_))
        self._ramp_done = self.schedule is None and step >= self.warmup_steps + max(self.ramp_steps, 1) - 1

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _checked_value(self, step: int) -> float:
        value = self.schedule(step)
        try:
            return check_lambda(value)
        except ValueError as error:
            raise ValueError(f"LambdaSchedule: schedule({step}) = {value!r}. {error}") from None

    def _check_run(self, first_epoch: int) -> None:
        steps = self.params.get("steps")
        if steps is None:
            return
        start = self._step()
        end = start + steps * (self.params["epochs"] - first_epoch)
        if self.schedule is not None:
            for step in range(start, end):
                self._checked_value(step)
        elif self.warmup_steps + self.ramp_steps > end:
            raise ValueError(
                f"LambdaSchedule: warmup_steps + ramp_steps = {self.warmup_steps + self.ramp_steps} steps, but this "
                f"fit ends at step {end} ({steps} steps per epoch, from step {start}): the ramp would not reach "
                "the target lambda. Shorten warmup_steps/ramp_steps or train for more epochs."
            )
