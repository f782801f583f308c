"""Training EfficientHRNet: the paper's recipe in a custom loop that runs under any tf.distribute strategy.

from keras_ehrnet.train import load_config, train
config = load_config("training/configs/H-4.yaml", ["data.train_ann=ann.json", "data.train_images=img/"])
result = train(config)  # or Trainer(config, strategy=..., dataset_fn=...).fit()
"""

from keras_ehrnet.train.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    LoggingConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    TrainConfig,
    TrainSection,
    ValidationConfig,
    apply_overrides,
    config_from_dict,
    load_config,
)
from keras_ehrnet.train.distribute import is_chief, make_strategy
from keras_ehrnet.train.finetune import InitReport, backbone_layers, freeze_backbone, load_initial_weights
from keras_ehrnet.train.monitor import TrainMonitor, heatmap_panel
from keras_ehrnet.train.optim import build_optimizer, decayed_variables, make_schedule
from keras_ehrnet.train.overfit import overfit, plot_ap_curves, plot_losses
from keras_ehrnet.train.schedules import StepDecayWarmup
from keras_ehrnet.train.trainer import (
    CocoTrainData,
    DatasetFn,
    NonFiniteLossError,
    Trainer,
    TrainingFailedError,
    TrainResult,
    coco_validation,
    train,
)

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
