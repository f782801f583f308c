"""keras-ehrnet: EfficientHRNet multi-person pose estimation for TensorFlow/Keras 3."""

from keras_ehrnet.inference.predictor import Predictor
from keras_ehrnet.metrics.coco import evaluate_coco
from keras_ehrnet.models.backbone import build_backbone, build_backbone_classifier
from keras_ehrnet.models.macs import count_macs
from keras_ehrnet.models.model import EfficientHRNet, build_model
from keras_ehrnet.models.scaling import PRESET_NAMES, EHRNetConfig, get_config
from keras_ehrnet.weights.torch_import import load_torch_weights

__version__ = "0.1.0"

__all__ = [
    "EHRNetConfig",
    "EfficientHRNet",
    "PRESET_NAMES",
    "Predictor",
    "build_backbone",
    "build_backbone_classifier",
    "build_model",
    "count_macs",
    "evaluate_coco",
    "get_config",
    "load_torch_weights",
]
