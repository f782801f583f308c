"""ImageNet weights for the backbone: Keras' EfficientNetB0 for H0, the authors' compact B-1 … B-4.

`load_backbone_weights` fills the "stem_*" / "block<i>_*" layers of any keras-ehrnet model
(`build_backbone`, `build_model`, `build_backbone_classifier`) and leaves everything else as
initialised. Sources:

* φ = 0: `keras.applications.EfficientNetB0`'s ImageNet file. "imagenet" lets Keras fetch and
  cache it (`keras.utils.get_file` into ~/.keras/models); a path may be that file
  (efficientnetb0_notop.h5 / efficientnetb0.h5), a `.weights.h5` of the application, or a
  `.keras` / `.h5` full model of it.
* any φ: a PyTorch `.pth` of the authors' compact EfficientNet ImageNet classifier (B0, B-1 … B-4),
  read by `torch_import` (those files sit on Google Drive and cannot be fetched by a program).

Keras' layers map to ours one to one (block2b ↔ block3, …); two numerical details differ and are
folded into the copied tensors: Keras' BatchNorm ε is 1e-3 and ours 1e-5, so the moving variance
gains 1e-3 − 1e-5; and Keras normalises pixels with its own Rescaling + Normalization layers,
which must hold the ImageNet mean/std that our in-graph `pixel_normalization` applies.
Everything is checked before anything is assigned, so a file of the wrong architecture or level
changes nothing and raises `BackboneWeightsError` with one line naming the first bad tensor.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path

import keras
import numpy as np

from keras_ehrnet.models.scaling import IMAGENET_MEAN, IMAGENET_STD, EHRNetConfig
from keras_ehrnet.weights.torch_import import load_torch_weights
from keras_ehrnet.weights.weights_map import weight_pairs

KERAS_B0_FILE = "efficientnetb0_notop.h5"
KERAS_B0_URL = "https://storage.googleapis.com/keras-applications/" + KERAS_B0_FILE
KERAS_B0_MD5 = "50bc09e76180e00e4465e1a485ddc09d"  # keras.src.applications.efficientnet.WEIGHTS_HASHES
KERAS_BN_EPSILON = 1e-3  # keras.applications' EfficientNet uses the Keras default
AUTHORS_IMAGENET_URL = "https://drive.google.com/drive/folders/1AZMYacfDcZv4QePcYONtg2in7oVmmSwV"
TORCH_SUFFIXES = (".pth", ".pt", ".tar")
_BACKBONE_LAYER = re.compile(r"^(stem|head)_(conv|bn)$|^block(\d+)_(\w+)$")
_KERAS_BLOCK_PART = {
    "expand_conv": "expand_conv",
    "expand_bn": "expand_bn",
    "dwconv": "dwconv",
    "dw_bn": "bn",
    "se_reduce": "se_reduce",
    "se_expand": "se_expand",
    "project_conv": "project_conv",
    "project_bn": "project_bn",
}
_KERAS_OWN = re.compile(r"^(stem_|block\d+[a-z]_)")  # backbone layers of a Keras EfficientNet


class BackboneWeightsError(ValueError):
    """Backbone weights that cannot be used; the message is one line naming the file."""


@dataclasses.dataclass
class BackboneReport:
    """What `load_backbone_weights` loaded and what it left as initialised."""

    source: str
    tensors: int
    parameters: int
    total_parameters: int
    unused: list[str] = dataclasses.field(default_factory=list)  # source layers not needed

    def summary(self) -> str:
        """One line, e.g. "backbone: 213 tensors / 4.0 M parameters from … ; left initialised: …"."""
        rest = self.total_parameters - self.parameters
        left = f"{rest / 1e6:.1f} M parameters outside the backbone" if rest else "nothing"
        return (
            f"backbone: {self.tensors} tensors / {self.parameters / 1e6:.1f} M parameters from "
            f"{self.source}; left initialised: {left}"
        )


def load_backbone_weights(
    model: keras.Model, weights: str | os.PathLike, config: EHRNetConfig
) -> BackboneReport:
    """Load ImageNet weights into the backbone layers of `model` (built for `config`).

    `weights` is "imagenet" (H0 only: Keras' EfficientNetB0 file, downloaded and cached by
    Keras) or a path (.h5 / .weights.h5 / .keras of Keras' EfficientNetB0, or the authors'
    .pth for any level). Raises FileNotFoundError for a missing file and BackboneWeightsError
    (one line, nothing assigned) for anything that does not fit.
    """
    path = resolve_backbone_weights(config, weights)
    if path.name.endswith(TORCH_SUFFIXES):
        return _load_torch(model, path)
    return _load_keras(model, path, config)


def resolve_backbone_weights(config: EHRNetConfig, weights: str | os.PathLike) -> Path:
    """The weights file to load: checked against the level, "imagenet" fetched (or found in
    Keras' cache). Call it before building a model, so a bad source fails fast."""
    check_backbone_weights(config, weights)
    return _fetch_keras_b0() if str(weights) == "imagenet" else Path(weights)


def check_backbone_weights(
    config: EHRNetConfig, weights: str | os.PathLike, *, file_must_exist: bool = True
) -> None:
    """Refuse level/source pairs that cannot work (and missing files), before building a model."""
    if not isinstance(weights, (str, os.PathLike)):
        raise BackboneWeightsError(f"backbone weights must be 'imagenet' or a file path, got {weights!r}")
    level = f"{config.name} (φ = {config.phi:g})"
    if str(weights) == "imagenet":
        if config.phi == 0:
            return
        if config.phi in (-1, -2, -3, -4):
            raise BackboneWeightsError(
                f"backbone weights 'imagenet' for {config.name}: its {config.backbone_name} ImageNet "
                f"checkpoint cannot be downloaded by a program; fetch it by hand from the authors' "
                f"folder {AUTHORS_IMAGENET_URL} and pass the .pth file as the path"
            )
        raise BackboneWeightsError(f"no ImageNet backbone exists for {level}; {_what_exists()}")
    name = os.fspath(weights)
    if not name.endswith(TORCH_SUFFIXES) and config.phi != 0:
        raise BackboneWeightsError(
            f"{name}: Keras EfficientNetB0 weights fit H0 only, not {level}; {_what_exists()}"
        )
    if file_must_exist and not Path(name).is_file():
        raise FileNotFoundError(f"backbone weights: no such file: {name}")


def _what_exists() -> str:
    return (
        "ImageNet backbones exist for H0 (Keras' EfficientNetB0, 'imagenet') and for H0, H-1 … H-4 "
        f"(the authors' compact B0, B-1 … B-4 .pth files, {AUTHORS_IMAGENET_URL})"
    )


def keras_cache_path(file_name: str = KERAS_B0_FILE) -> Path:
    """Where keras.utils.get_file keeps downloaded application weights ($KERAS_HOME/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / file_name


def _fetch_keras_b0() -> Path:
    """Keras' EfficientNetB0 ImageNet file: from the Keras cache, else downloaded into it."""
    try:
        return Path(
            keras.utils.get_file(KERAS_B0_FILE, KERAS_B0_URL, cache_subdir="models", file_hash=KERAS_B0_MD5)
        )
    except Exception as err:  # get_file raises a bare Exception for network errors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BackboneWeightsError(
            f"backbone weights 'imagenet': cannot fetch {KERAS_B0_URL} ({reason}); download it on a "
            f"machine with internet and put it at {keras_cache_path()}, or pass its path instead of 'imagenet'"
        ) from None


# --------------------------------------------------------------------------- PyTorch (.pth)


def _load_torch(model: keras.Model, path: Path) -> BackboneReport:

    try:
        report = load_torch_weights(model, path, backbone_only=True)
    except ValueError as err:
        bad = getattr(err, "report", None)
        if bad is None:  # unreadable file: the reader's message is one line
            raise BackboneWeightsError(str(err).splitlines()[0]) from None
        if bad.mismatched:
            key, (got, expected) = next(iter(bad.mismatched.items()))
            what = f"{key} expected shape {expected}, got {got}"
        else:
            what = f"{bad.missing[0]} is missing"
        raise BackboneWeightsError(
            f"{path}: not the backbone of {model.name}: {what} (a checkpoint of another level?)"
        ) from None
    sizes = {p.torch_key: int(np.prod(p.variable.shape)) for p in weight_pairs(model)}
    return BackboneReport(
        source=path.name,
        tensors=len(report.loaded),
        parameters=sum(sizes[k] for k in report.loaded),
        total_parameters=model.count_params(),
    )


# --------------------------------------------------------------------------- Keras EfficientNetB0


@dataclasses.dataclass
class _SourceLayer:
    weights: dict[str, np.ndarray]
    epsilon: float = KERAS_BN_EPSILON


def keras_layer_name(name: str, config: EHRNetConfig) -> str | None:
    """The Keras EfficientNet layer that holds our backbone layer `name` (None: not backbone).

    Our blocks are numbered 1, 2, … over all stages; Keras names them by stage and repeat
    (block1a, block2a, block2b, …), and calls the depthwise BatchNorm "bn" and the classifier
    head "top".
    """
    m = _BACKBONE_LAYER.match(name)
    if not m:
        return None
    if m.group(1):
        return f"{'stem' if m.group(1) == 'stem' else 'top'}_{m.group(2)}"
    index, part = int(m.group(3)), m.group(4)
    if part not in _KERAS_BLOCK_PART:
        return None
    ids = [
        f"{s + 1}{chr(97 + r)}"
        for s, stage in enumerate(config.backbone_stages)
        for r in range(stage.repeats)
    ]
    if not 1 <= index <= len(ids):
        return None
    return f"block{ids[index - 1]}_{_KERAS_BLOCK_PART[part]}"


def _load_keras(model: keras.Model, path: Path, config: EHRNetConfig) -> BackboneReport:
    layers = _read_keras_layers(path)
    plan: list[tuple[keras.Variable, np.ndarray]] = []
    used: set[str] = set()
    for layer in model.layers:
        source_name = keras_layer_name(layer.name, config)
        if source_name is None or not layer.weights:
            continue
        source = layers.get(source_name)
        for var in layer.weights:
            expected = tuple(var.shape)
            value = None if source is None else _find(source.weights, var.name)
            if value is None:
                raise BackboneWeightsError(
                    f"{path}: no tensor {source_name}/{var.name} (expected shape {expected}) — "
                    "not Keras' EfficientNetB0"
                )
            if tuple(value.shape) != expected:
                raise BackboneWeightsError(
                    f"{path}: tensor {source_name}/{var.name} expected shape {expected}, got "
                    f"{tuple(value.shape)} — not Keras' EfficientNetB0"
                )
            if var.name == "moving_variance":
                # y = (x − m) / sqrt(v + ε): the same y with our ε needs v + ε_keras − ε_ours
                value = value + (source.epsilon - layer.epsilon)
            plan.append((var, value))
        used.add(source_name)
    if not plan:
        raise BackboneWeightsError(f"{model.name} has no backbone layers to load {path} into")
    for name, source in layers.items():
        if name not in used and _KERAS_OWN.match(name):
            first = next(iter(source.weights.items()))
            raise BackboneWeightsError(
                f"{path}: tensor {name}/{first[0]} {tuple(first[1].shape)} has no place in the "
                f"{config.backbone_name} backbone — a deeper EfficientNet than B0?"
            )
    _check_normalization(path, layers)
    for var, value in plan:
        var.assign(value.astype(var.dtype))
    return BackboneReport(
        source=path.name,
        tensors=len(plan),
        parameters=sum(int(np.prod(var.shape)) for var, _ in plan),
        total_parameters=model.count_params(),
        unused=[n for n in layers if n not in used],
    )


def _find(weights: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    if name in weights:
        return weights[name]
    if name == "kernel":  # Keras 2 named a depthwise kernel "depthwise_kernel"
        return weights.get("depthwise_kernel")
    return None


def _check_normalization(path: Path, layers: dict[str, _SourceLayer]) -> None:
    """Keras' Normalization layer must hold ImageNet's mean and std (or std², as a fixed model
    would): our backbone normalises with exactly those, in `pixel_normalization`."""
    norm = next((s for n, s in layers.items() if re.fullmatch(r"normalization(_\d+)?", n)), None)
    if norm is None or "mean" not in norm.weights or "variance" not in norm.weights:
        return
    mean = np.ravel(norm.weights["mean"])
    var = np.ravel(norm.weights["variance"])
    std = np.array(IMAGENET_STD)
    ok = (
        mean.shape == (3,)
        and np.allclose(mean, IMAGENET_MEAN, atol=1e-4)
        and (np.allclose(var, std, atol=1e-4) or np.allclose(var, std**2, atol=1e-4))
    )
    if not ok:
        raise BackboneWeightsError(
            f"{path}: its Normalization layer uses mean {np.round(mean, 4).tolist()}, variance "
            f"{np.round(var, 4).tolist()}; keras-ehrnet's backbone expects ImageNet's mean "
            f"{list(IMAGENET_MEAN)} and std {list(IMAGENET_STD)}"
        )


def _read_keras_layers(path: Path) -> dict[str, _SourceLayer]:
    """{layer name: its tensors by variable name} from any file of Keras' EfficientNetB0."""
    name = path.name
    if name.endswith(".keras"):
        try:
            source = keras.saving.load_model(str(path), compile=False)
        except Exception as err:
            raise BackboneWeightsError(f"{path}: not a loadable .keras model ({_first_line(err)})") from None
        return _layers_of(source)
    if name.endswith(".weights.h5"):
        return _layers_of(_keras_b0_with(path))
    if name.endswith((".h5", ".hdf5")):
        return _read_legacy_h5(path)
    raise BackboneWeightsError(
        f"{path}: expected Keras' {KERAS_B0_FILE} (.h5), a .weights.h5 or .keras file of "
        "keras.applications.EfficientNetB0, or the authors' .pth"
    )


def _layers_of(model: keras.Model) -> dict[str, _SourceLayer]:
    out = {}
    for layer in model.layers:
        if layer.weights:
            weights = {v.name: np.asarray(v.numpy()) for v in layer.weights}
            out[layer.name] = _SourceLayer(weights, float(getattr(layer, "epsilon", KERAS_BN_EPSILON)))
    return out


def _keras_b0_with(path: Path) -> keras.Model:
    """A Keras 3 `.weights.h5` keys tensors by layer position, so it needs the application itself."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            include_top = "dense" in f.get("layers", {})
    except OSError as err:
        raise BackboneWeightsError(f"{path}: not a readable HDF5 file ({_first_line(err)})") from None
    model = keras.applications.EfficientNetB0(
        weights=None, include_top=include_top, input_shape=(None, None, 3)
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(str(path))
    except Exception as err:
        raise BackboneWeightsError(
            f"{path}: not weights of Keras' EfficientNetB0 ({_first_line(err)})"
        ) from None
    return model


def _read_legacy_h5(path: Path) -> dict[str, _SourceLayer]:
    """Keras' HDF5 layout (the application's download, `save_weights` in Keras 2, or a full
    model saved as .h5): attribute layer_names, each group listing its weight_names."""
    import h5py

    def text(value) -> str:
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    try:
        with h5py.File(path, "r") as f:
            group = f.get("model_weights", f)
            if "layer_names" not in group.attrs:
                raise BackboneWeightsError(
                    f"{path}: an HDF5 file without Keras layer names (a Keras 3 weights file must be "
                    "named *.weights.h5)"
                )
            out = {}
            for layer in map(text, group.attrs["layer_names"]):
                g = group[layer]
                weights = {}
                for weight in map(text, g.attrs.get("weight_names", [])):
                    weights[weight.split("/")[-1].split(":")[0]] = np.asarray(g[weight][()])
                if weights:
                    out[layer] = _SourceLayer(weights)
            return out
    except BackboneWeightsError:
        raise
    except (OSError, KeyError) as err:
        raise BackboneWeightsError(f"{path}: not a readable Keras HDF5 file ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Keras' load errors start with a count; the example message on a later line names the tensor
    for line in lines:
        if line.startswith(("Layer '", "Shape mismatch")):
            return line.strip()
    return lines[0] if lines else type(err).__name__
