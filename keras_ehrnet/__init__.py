"""keras-ehrnet: EfficientHRNet multi-person pose estimation for TensorFlow/Keras 3."""

from keras_ehrnet.backbone import build_backbone_classifier
from keras_ehrnet.model import EfficientHRNet, build_model
from keras_ehrnet.scaling import PRESET_NAMES, EHRNetConfig, get_config

__version__ = "0.1.0"

__all__ = [
    "EHRNetConfig",
    "EfficientHRNet",
    "PRESET_NAMES",
    "build_backbone_classifier",
    "build_model",
    "get_config",
]
