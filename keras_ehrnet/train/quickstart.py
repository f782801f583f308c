"""The whole product on the sample dataset in one call: train, score, export, predict, draw.

A newcomer's first run. H-4 is trained from random initialisation (nothing is downloaded) on
the ten COCO images shipped in `keras_ehrnet/data/sample`, at a small input size and for a
few minutes of a 2-core CPU, so the model only learns those images: the point is to see every
stage work end to end, on real data, with the same code a full training uses.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from keras_ehrnet.fileio import atomic_write_json

# people scoring less are left out of the drawings (all of them are scored for AP)
DRAW_MIN_SCORE = 0.05
QUICKSTART_AUGMENT = {
    # the test-time scale and no distortions: the fastest way to learn ten images
    "max_rotation": 0.0,
    "min_scale": 1.0,
    "max_scale": 1.0,
    "max_translate": 0.0,
    "flip_prob": 0.0,
}


def quickstart(
    out_dir: str | os.PathLike = "runs/quickstart",
    *,
    level: str = "H-4",
    input_size: int = 192,
    batch_size: int = 2,
    epochs: int = 150,
    minutes: float | None = 6.0,
    learning_rate: float = 1e-3,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train `level` on the sample, score COCO AP, export TFLite, predict and draw on the sample.

    Training stops after `epochs` or `minutes`, whichever comes first (a stop by time keeps the
    model as it stands). Writes into `out_dir`: `model.keras`, `model.tflite`, `metrics.json`
    (AP before and after training, for the Keras model and for the TFLite export), `loss.png`,
    `predictions/*.jpg` (skeletons drawn) with one JSON per image, and the training workdir
    `train/` (checkpoints, TensorBoard). Returns the metrics with the paths of those files.
    """
    from keras_ehrnet.data import sample_dataset
    from keras_ehrnet.evaluate import evaluate_coco
    from keras_ehrnet.export.tflite import export_tflite
    from keras_ehrnet.predictor import Predictor, predict_files
    from keras_ehrnet.train.benchmark import overfit

    started = time.perf_counter()
    out = Path(out_dir)
    ann, images = sample_dataset()
    if (out / "train").exists():
        # a new run: a previous one's checkpoints would otherwise be resumed from
        shutil.rmtree(out / "train")
    out.mkdir(parents=True, exist_ok=True)

    log(
        f"[1/4] training {level} at {input_size}×{input_size} on the {_count_images(images)} sample images "
        f"(at most {epochs} epochs" + (f" or {minutes:g} minutes)" if minutes else ")")
    )
    trained = overfit(
        ann,
        images,
        out / "train",
        level=level,
        input_size=input_size,
        batch_size=batch_size,
        epochs=epochs,
        minutes=minutes,
        learning_rate=learning_rate,
        augment=QUICKSTART_AUGMENT,
        flip_test=True,
        progress=progress,
    )
    model_path = out / "model.keras"
    shutil.copyfile(trained["final_model"], model_path)
    shutil.copyfile(out / "train" / "loss.png", out / "loss.png")
    log(f"      AP on the sample before training {trained['AP_before']:.3f}, after {trained['AP_after']:.3f}")

    # TFLite takes one fixed size and images are letterboxed into it. Training saw images scaled
    # to a short side of `input_size`; a 2:3 landscape input (most sample images are 640×427 or
    # 640×480) shows people at that same scale, where a square one would shrink them by a third.
    export_size = (input_size, 32 * math.ceil(input_size * 1.5 / 32))
    log(f"[2/4] exporting TFLite (fp32) at {export_size[0]}×{export_size[1]}")
    import keras

    model = keras.models.load_model(model_path)
    tflite_path = export_tflite(model, out / "model.tflite", export_size, "fp32", progress=False)

    log("[3/4] scoring the TFLite model on the sample with pycocotools")
    predictor = Predictor(str(tflite_path), input_size=input_size, flip=True)
    tflite_summary = evaluate_coco(predictor, ann, images, progress=False, verbose=False)

    log(f"[4/4] predicting with the TFLite model and drawing the people scoring at least {DRAW_MIN_SCORE}")
    drawing = Predictor(str(tflite_path), input_size=input_size, flip=True, min_score=DRAW_MIN_SCORE)
    drawn = predict_files(drawing, [images], out / "predictions", progress=progress)

    metrics = {
        "level": level,
        "input_size": input_size,
        "images": trained["images"],
        "epochs_done": trained["epochs_done"],
        "steps": trained["steps"],
        "train_minutes": trained["train_minutes"],
        "stopped_by_time_limit": trained["stopped_by_time_limit"],
        "images_per_sec_median": trained["images_per_sec_median"],
        "loss_first": trained["loss_first"],
        "loss_last_epoch_mean": trained["loss_last_epoch_mean"],
        "AP_before": trained["AP_before"],
        "AP": trained["AP_after"],
        "keras": trained["after"],
        "AP_tflite": tflite_summary.get("AP"),
        "tflite_input_size": list(export_size),
        "tflite": {k: v for k, v in tflite_summary.items() if isinstance(v, (int, float))},
        "predictions": {
            "images": drawn["frames"],
            "people": sum(entry["people"] for entry in drawn["inputs"]),
            "fps": drawn["fps"],
        },
        "total_minutes": (time.perf_counter() - started) / 60.0,
        "files": {
            "model": str(model_path),
            "tflite": str(tflite_path),
            "metrics": str(out / "metrics.json"),
            "loss_plot": str(out / "loss.png"),
            "annotated_images": sorted(entry["drawn"] for entry in drawn["inputs"] if "drawn" in entry),
            "train_workdir": str(out / "train" / "run"),
        },
    }
    for key in ("AP", "AP_tflite"):
        value = metrics[key]
        if value is None or not math.isfinite(value):
            raise RuntimeError(f"quickstart: {key} is {value!r}; expected a finite number")
    atomic_write_json(out / "metrics.json", metrics, indent=1)
    return metrics


def _count_images(folder: Path) -> int:
    return sum(1 for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
