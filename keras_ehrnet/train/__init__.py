"""Training EfficientHRNet: the paper's recipe in a custom loop that runs under any tf.distribute strategy.

from keras_ehrnet.train import load_config, train
config = load_config("training/configs/H-4.yaml", ["data.train_ann=ann.json", "data.train_images=img/"])
result = train(config)  # or Trainer(config, strategy=..., dataset_fn=...).fit()

That loop needs TensorFlow. On JAX or PyTorch (or TensorFlow) `keras_ehrnet.train.fit.fit` trains
the same model with the same loss through `model.fit`. The names below are imported on first use,
so `keras_ehrnet.train.fit` and the config tools import without TensorFlow.
"""

from keras_ehrnet._lazy import lazy_getattr

_HOMES = {
    "overfit": ("overfit", "plot_ap_curves", "plot_losses"),
    "config": (
        "CheckpointConfig",
        "ConfigError",
        "DataConfig",
        "LoggingConfig",
        "LossConfig",
        "ModelConfig",
        "OptimizerConfig",
        "TrainConfig",
        "TrainSection",
        "ValidationConfig",
        "apply_overrides",
        "config_from_dict",
        "load_config",
    ),
    "distribute": ("is_chief", "make_strategy"),
    "finetune": ("InitReport", "backbone_layers", "freeze_backbone", "load_initial_weights"),
    "monitor": ("TrainMonitor", "heatmap_panel"),
    "optim": ("build_optimizer", "decayed_variables", "make_schedule"),
    "schedules": ("StepDecayWarmup",),
    "trainer": (
        "CocoTrainData",
        "DatasetFn",
        "NonFiniteLossError",
        "Trainer",
        "TrainingFailedError",
        "TrainResult",
        "coco_validation",
        "train",
    ),
}
__getattr__ = lazy_getattr(__name__, _HOMES)


__all__ = [
    "CheckpointConfig",
    "CocoTrainData",
    "ConfigError",
    "DataConfig",
    "DatasetFn",
    "InitReport",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimizerConfig",
    "StepDecayWarmup",
    "TrainConfig",
    "TrainMonitor",
    "TrainResult",
    "TrainSection",
    "Trainer",
    "TrainingFailedError",
    "ValidationConfig",
    "apply_overrides",
    "backbone_layers",
    "build_optimizer",
    "coco_validation",
    "config_from_dict",
    "decayed_variables",
    "freeze_backbone",
    "heatmap_panel",
    "is_chief",
    "load_config",
    "load_initial_weights",
    "make_schedule",
    "make_strategy",
    "overfit",
    "plot_ap_curves",
    "plot_losses",
    "train",
]
