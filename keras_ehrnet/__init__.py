"""keras-ehrnet: EfficientHRNet multi-person pose estimation for TensorFlow/Keras 3.

The public names below are imported on first use (PEP 562), so that running an exported
.onnx or .tflite file (`keras_ehrnet.deploy.runtimes`, `Predictor`) never imports TensorFlow: its
thread pools would take the cores from ONNX Runtime or LiteRT. The model classes are imported
as soon as Keras is (at once if it already is), so that `keras.saving.load_model` finds them.
"""

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys

from keras_ehrnet._lazy import lazy_getattr

__version__ = "0.1.0"

# module (below the package) → the public names it defines
_HOMES = {
    "models.scaling": ("EHRNetConfig", "PRESET_NAMES", "get_config"),
    "models.model": ("EfficientHRNet", "build_model"),
    "models.backbone": ("build_backbone", "build_backbone_classifier"),
    "models.macs": ("count_macs",),
    "inference.predictor": ("Predictor",),
    "metrics.coco": ("evaluate_coco",),
    "weights.torch_import": ("load_torch_weights",),
}
__all__ = sorted(name for names in _HOMES.values() for name in names)
__getattr__ = lazy_getattr(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


class _RegisterWhenKerasLoads(importlib.abc.MetaPathFinder):
    """Import the model classes right after `keras` itself is first imported.

    `keras.saving.load_model` finds EfficientHRNet only once its module has run; with the public
    names imported lazily, `import keras_ehrnet; import keras; keras.saving.load_model(...)` would
    otherwise fail. The finder removes itself once the `keras` module it wraps has run (a bare
    `importlib.util.find_spec("keras")`, which runs nothing, leaves it in place).
    """

    _looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" or self._looking:
            return None
        self._looking = True
        try:
            spec = importlib.util.find_spec("keras")
        finally:
            self._looking = False
        if spec is None or spec.loader is None:
            return spec
        run_keras = spec.loader.exec_module

        def exec_module(module):
            run_keras(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            # a backend that cannot build the model: its use will say why
            with contextlib.suppress(ImportError):
                importlib.import_module("keras_ehrnet.models.model")

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:  # registers EfficientHRNet for keras.saving.load_model
    importlib.import_module("keras_ehrnet.models.model")
elif not any(isinstance(finder, _RegisterWhenKerasLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenKerasLoads())
