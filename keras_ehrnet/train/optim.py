"""Optimizer of the paper's recipe: Adam, weight decay 1e-4, step decay, optional warm-up.

The released code builds `torch.optim.Adam(params, lr)` without passing its WD value, so it
trained with no weight decay at all, while the paper states Adam with weight decay 1e-4.
Modes (optimizer.weight_decay_mode):

* "decoupled" (default): keras AdamW, w ← w − lr·wd·w (Loshchilov & Hutter). With lr = 1e-3
  and wd = 1e-4 this is a gentle pull (about 1e-7 per step), so it honours the paper's
  statement while staying close to what the released weights were trained with.
* "coupled": L2 in the loss, ½·wd·‖w‖², i.e. PyTorch's `Adam(weight_decay=wd)`; Adam divides
  it by the gradient scale, so it acts far more strongly on weights with small gradients.
* "none": exactly the released training code.

Biases and BatchNorm parameters are never decayed.
"""

from __future__ import annotations

import math

import keras

from keras_ehrnet.train.config import OptimizerConfig
from keras_ehrnet.train.schedules import ScaledSchedule, StepDecayWarmup


def decayed_variables(model: keras.Model) -> list:
    """Trainable variables that take weight decay: kernels, not biases or BatchNorm parameters."""
    skip: set[int] = set()
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            skip.update(id(v) for v in layer.weights)
        stack.extend(getattr(layer, "layers", []))
    return [v for v in model.trainable_variables if id(v) not in skip and v.name != "bias"]


def make_schedule(config: OptimizerConfig, steps_per_epoch: int) -> StepDecayWarmup:
    """The learning-rate schedule, in optimizer steps."""
    return StepDecayWarmup(
        config.learning_rate,
        steps_per_epoch,
        step_epochs=config.lr_steps,
        factor=config.lr_factor,
        warmup_steps=int(math.ceil(config.warmup_epochs * steps_per_epoch)),
        warmup_start_factor=config.warmup_start_factor,
    )


def build_optimizer(
    config: OptimizerConfig,
    model: keras.Model,
    steps_per_epoch: int,
    *,
    loss_scaling: bool = False,
    lr_multiplier=None,
) -> keras.optimizers.Optimizer:
    """Adam/AdamW on the schedule, wrapped in a dynamic LossScaleOptimizer for float16.

    With `config.ema_momentum` the optimizer also keeps a moving average of the weights
    (Keras' `use_ema`; see `Trainer.averaged_weights`).

    `lr_multiplier` (a scalar tf.Variable) scales the scheduled rate while training runs.

    Build it inside the strategy scope; it is built on `model.trainable_variables` here so that
    checkpoints can restore its slots straight away.
    """
    schedule = make_schedule(config, steps_per_epoch)
    if lr_multiplier is not None:
        schedule = ScaledSchedule(schedule, lr_multiplier)
    common = dict(learning_rate=schedule, beta_1=config.beta_1, beta_2=config.beta_2, epsilon=config.epsilon)
    if config.ema_momentum is not None:
        common.update(use_ema=True, ema_momentum=config.ema_momentum)
    if config.weight_decay_mode == "decoupled" and config.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **common)
        keep = {id(v) for v in decayed_variables(model)}
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if id(v) not in keep]
        )
    else:
        optimizer = keras.optimizers.Adam(**common)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer
