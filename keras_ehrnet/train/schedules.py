"""Learning-rate schedule: step decay at epoch boundaries with an optional linear warm-up."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_ehrnet._tf import tf


@keras.saving.register_keras_serializable(package="keras_ehrnet")
class StepDecayWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`base · factor^k` during epoch e, where k counts the `step_epochs` ≤ e (PyTorch MultiStepLR
    stepped once per epoch, as in the reference); the first `warmup_steps` updates rise
    linearly from `base · warmup_start_factor` to the scheduled value.

    `step` is the optimizer's update counter (0 for the first update).
    """

    def __init__(
        self,
        base_learning_rate: float,
        steps_per_epoch: int,
        step_epochs: Sequence[float] = (200, 260),
        factor: float = 0.1,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.001,
    ):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.base_learning_rate = float(base_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_epochs = [float(e) for e in step_epochs]
        self.factor = float(factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = tf.floor(step / float(self.steps_per_epoch))
        decays = tf.zeros([], tf.float32)
        for boundary in self.step_epochs:
            decays += tf.cast(epoch >= boundary, tf.float32)
        lr = self.base_learning_rate * tf.pow(self.factor, decays)
        if self.warmup_steps > 0:
            progress = tf.minimum(step / float(self.warmup_steps), 1.0)
            lr *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        return lr

    def get_config(self) -> dict:
        return {
            "base_learning_rate": self.base_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "step_epochs": self.step_epochs,
            "factor": self.factor,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
        }


@keras.saving.register_keras_serializable(package="keras_ehrnet")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step) · multiplier`, where `multiplier` is a variable that can be changed while
    training runs (for example to step the rate on a wall-clock budget rather than on epochs).

    Serialises with the multiplier's current value.
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, multiplier):
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        self.schedule = schedule
        if not isinstance(multiplier, tf.Variable):
            multiplier = tf.Variable(
                float(multiplier), trainable=False, dtype=tf.float32, name="lr_multiplier"
            )
        self.multiplier = multiplier

    def __call__(self, step):
        return self.schedule(step) * tf.cast(self.multiplier, tf.float32)

    def get_config(self) -> dict:
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "multiplier": float(self.multiplier.numpy()),
        }
