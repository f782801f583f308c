"""Side-by-side measurements against the authors' released PyTorch model (optional).

Given a path to a checkout of TeCSAR-UNCC/EfficientHRNet and an environment with torch and
yacs, build the reference model for a level (random weights, eval mode) and time it — eager
PyTorch, and exported to ONNX and run by ONNX Runtime — in the same process as our runtimes.
Nothing here is required: every entry point explains why it is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np


class ReferenceUnavailableError(RuntimeError):
    """The reference cannot be measured here; the message says why."""


def check_reference(path: str | Path | None) -> Path:
    """Validate the checkout path and the optional dependencies, or raise ReferenceUnavailableError."""
    if not path:
        raise ReferenceUnavailableError("no --reference path given")
    root = Path(path).expanduser().resolve()
    model_file = root / "lib" / "models" / "pose_higher_hrnet.py"
    if not model_file.is_file():
        raise ReferenceUnavailableError(
            f"{root} is not a checkout of TeCSAR-UNCC/EfficientHRNet ({model_file} missing)"
        )
    for module in ("torch", "yacs"):
        if importlib.util.find_spec(module) is None:
            raise ReferenceUnavailableError(f"the reference needs {module!r}, which is not installed")
    return root


def reference_config(path: str | Path, level: str, num_joints: int = 17):
    """The reference's yacs config for `level` (its example config over its defaults), frozen."""
    root = check_reference(path)
    lib = str(root / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    config_file = root / "Example Configs" / f"{level}.yaml"
    if not config_file.is_file():
        raise ReferenceUnavailableError(f"no reference config for {level}: {config_file}")
    from config import cfg as default_cfg  # the reference's yacs defaults

    cfg = default_cfg.clone()
    cfg.defrost()
    cfg.merge_from_file(str(config_file))
    cfg.MODEL.NUM_JOINTS = num_joints
    cfg.DATASET.NUM_JOINTS = num_joints
    cfg.freeze()
    return cfg


def load_reference_model(path: str | Path, level: str, num_joints: int = 17):
    """The authors' model for `level` from their example config, in eval mode; returns (model, input_size)."""
    root = check_reference(path)
    lib = str(root / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    from models.pose_higher_hrnet import get_pose_net

    cfg = reference_config(root, level, num_joints)
    model = get_pose_net(cfg, is_train=False)
    model.eval()
    return model, int(cfg.DATASET.INPUT_SIZE)


def torch_infer_fn(model, input_size: tuple[int, int], *, threads: int | None = None, batch: int = 1):
    """A no-argument callable running the reference eagerly under inference_mode."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    h, w = input_size
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32))

    def run():
        with torch.inference_mode():
            return [o.numpy() for o in model(x)]

    return run


def export_reference_onnx(model, input_size: tuple[int, int], out: str | Path) -> Path:
    """The reference exported to ONNX (opset 17, TorchScript exporter, as its facts were measured)."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = input_size
    torch.onnx.export(
        model,
        torch.zeros(1, 3, h, w),
        str(out),
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["quarter", "half"],
    )
    return out


def ort_infer_fn(
    onnx_path: str | Path, input_size: tuple[int, int], *, threads: int | None = None, batch: int = 1
):
    """A no-argument callable running an NCHW ONNX model with ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    h, w = input_size
    x = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)
    return lambda: session.run(None, {name: x})
