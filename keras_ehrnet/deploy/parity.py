"""Tools to prove an artefact computes what the Keras model computes.

A freshly initialised EfficientHRNet has outputs around 1e-11 (HRNet's
std-0.001 initialisation compounds over depth): every artefact would "match"
it, and CPU timings would suffer from denormal numbers. `realistic_weights`
gives a random model unit-scale activations everywhere, like a trained one,
so that parity and speed are measured on realistic numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_ehrnet.deploy.common import calibration_images
from keras_ehrnet.deploy.exporter import _load_model
from keras_ehrnet.deploy.runtimes import KerasRunner, Runner, load_runner


def realistic_weights(
    model: Any, images: np.ndarray, *, seed: int = 0, output_max: float | None = 2.0
) -> Any:
    """Re-randomise every kernel (He-normal, fan-in) and set BatchNorm statistics from `images`.

    BatchNorm moving mean/variance become the batch statistics of one pass over
    `images` (RGB 0..255, [B, H, W, 3]), so activations have unit scale as in a
    trained network; the heads (`final_quarter`, `final_half`) are then scaled
    so that each output's largest magnitude on `images` is `output_max`, like
    a trained model's heatmaps (peaks near 1) and tags (a few units). The model is
    changed in place and returned.
    """
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(
            layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose)
        ):
            kernel = layer.kernel
            shape = tuple(kernel.shape)
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                fan_in = shape[0] * shape[1]
            elif isinstance(layer, keras.layers.Conv2DTranspose):
                fan_in = (
                    shape[0] * shape[1] * shape[3] / 4.0
                )  # stride-2 4×4: each output sees a quarter of the taps
            else:
                fan_in = shape[0] * shape[1] * shape[2]
            kernel.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))
            if layer.bias is not None:
                layer.bias.assign(rng.normal(0.0, 0.1, tuple(layer.bias.shape)).astype(np.float32))
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in batch_norms]
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    rates = [d.rate for d in dropouts]
    try:
        for bn in batch_norms:
            bn.momentum = 0.0  # moving statistics := this batch's statistics
        for d in dropouts:
            d.rate = 0.0
        model(np.asarray(images, np.float32), training=True)
    finally:
        for bn, m in zip(batch_norms, momenta):
            bn.momentum = m
        for d, r in zip(dropouts, rates):
            d.rate = r
    if output_max is not None:
        for index, name in enumerate(("final_quarter", "final_half")):
            try:
                head = model.get_layer(name)
            except ValueError:
                continue
            peak = float(
                np.abs(np.asarray(model(np.asarray(images, np.float32), training=False)[index])).max()
            )
            factor = output_max / peak if peak > 0 else 1.0
            head.kernel.assign(head.kernel * factor)
            if head.bias is not None:
                head.bias.assign(head.bias * factor)
    return model


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute difference, the same relative to the reference's largest magnitude, and correlation."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    diff = np.abs(reference - candidate)
    scale = float(np.abs(reference).max())
    r, c = reference.ravel() - reference.mean(), candidate.ravel() - candidate.mean()
    denominator = float(np.sqrt((r * r).sum() * (c * c).sum()))
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "reference_max": scale,
        "relative": float(diff.max() / scale) if scale else float("inf"),
        "correlation": float((r * c).sum() / denominator) if denominator else float("nan"),
        "nan": bool(np.isnan(candidate).any()),
    }


def parity_report(
    reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray], num_joints: int
) -> dict[str, dict[str, float]]:
    """`compare_outputs` for the quarter heatmaps, quarter tags and half heatmaps separately."""
    (rq, rh), (cq, ch) = reference, candidate
    j = num_joints
    return {
        "quarter_heatmaps": compare_outputs(rq[..., :j], cq[..., :j]),
        "quarter_tags": compare_outputs(rq[..., j:], cq[..., j:]),
        "half_heatmaps": compare_outputs(rh, ch),
    }


def verify_artefact(
    model: Any,
    artefact: Any,
    image_dir: str,
    *,
    num_images: int = 4,
    num_threads: int | None = None,
) -> dict:
    """Run an artefact and the Keras model on real images from `image_dir`; `parity_report` of the two.

    `model`: keras.Model, .keras path or a KerasRunner; `artefact`: a path or a Runner.

    Images are letterboxed to the artefact's fixed size (else the model's native one).
    """
    keras_runner = model if isinstance(model, KerasRunner) else KerasRunner(_load_model(model))
    runner = artefact if isinstance(artefact, Runner) else load_runner(artefact, num_threads=num_threads)
    size = runner.fixed_input_size
    if size is None:
        r = int(keras_runner.model.config.input_size)
        size = (r, r)
    images = np.stack(list(calibration_images(image_dir, size, num_images, progress=False)))
    reference = keras_runner(images)
    candidate = runner(images)
    num_joints = int(reference[1].shape[-1])
    return {
        "runner": runner.name,
        "images": len(images),
        "input_size": f"{size[0]}x{size[1]}",
        "outputs": parity_report(reference, candidate, num_joints),
    }
