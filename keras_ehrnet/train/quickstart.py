"""The whole product on the sample dataset in one call: train, score, export, predict, draw.

A newcomer's first run. H-4 is trained from random initialisation (nothing is downloaded) on
the ten COCO images shipped in `keras_ehrnet/data/sample` until it has memorised them: it learns
those ten images, not people in general. What the run shows is every stage working end to end on
real data with the same code a full training uses, and a model whose export finds the people it
was shown.

Training, scoring, export and drawing all see one geometry: each whole image letterboxed into a
fixed R×R input (`overfit(view="whole")`), which is also the one fixed size the TFLite file
takes, so the export scores what the Keras model scores.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from keras_ehrnet.data import sample_dataset
from keras_ehrnet.deploy.tflite import export_tflite
from keras_ehrnet.fileio import atomic_path, atomic_write_json, check_writable
from keras_ehrnet.inference.drawing import write_comparison
from keras_ehrnet.inference.predictor import Predictor, predict_files
from keras_ehrnet.metrics.coco import evaluate_coco
from keras_ehrnet.models.model import load_keras_model
from keras_ehrnet.train.overfit import overfit

# people the exported model scores below this are left out of the drawings (all are scored for AP)
DRAW_MIN_SCORE = 0.1
QUICKSTART_EPOCHS = 300
QUICKSTART_SIZE = 256


def quickstart(
    out_dir: str | os.PathLike = "runs/quickstart",
    *,
    level: str = "H-4",
    input_size: int = QUICKSTART_SIZE,
    batch_size: int = 5,
    epochs: int = QUICKSTART_EPOCHS,
    minutes: float | None = 8.75,
    learning_rate: float = 2e-3,
    draw_min_score: float = DRAW_MIN_SCORE,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train `level` on the sample, score COCO AP, export TFLite, predict and draw on the sample.

    The recipe is the overfitting benchmark's (`keras_ehrnet.train.overfit.overfit`): whole
    images letterboxed into `input_size`², no augmentation, He-initialised HR part, no
    stochastic depth, Adam stepped ×0.1 at 88 % and 96 % of `epochs`. `minutes` is only a
    safety cap for slow machines (a stop by time keeps the model as it stands).

    Writes into `out_dir`: `model.keras`, `model.tflite` (fp32, `input_size`²), `metrics.json`
    (AP before and after training, for the Keras model and for the TFLite export, at the same
    input), `loss.png`, `compare.png` (each image: ground truth beside the export's prediction),
    `predictions/*.jpg` with one JSON per image, and the training workdir `train/`.
    Returns the metrics with the paths of those files.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    ann, images = sample_dataset()
    if (out / "train").exists():
        # a new run: a previous one's checkpoints would otherwise be resumed from
        shutil.rmtree(out / "train")
    check_writable(out, kind="dir", what="--out")
    out.mkdir(parents=True, exist_ok=True)
    size = (input_size, input_size)

    log(
        f"[1/4] training {level} on the {_count_images(images)} sample images, each letterboxed whole into "
        f"{input_size}×{input_size}, for {epochs} epochs"
        + (f" (at most {minutes:g} minutes)" if minutes else "")
        + ": it memorises these ten images"
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
        flip_test=True,
        view="whole",
        progress=progress,
    )
    model_path = out / "model.keras"
    for src, dst in ((trained["final_model"], model_path), (out / "train" / "loss.png", out / "loss.png")):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    log(
        f"      Keras model, AP on the sample at {input_size}×{input_size}: before training "
        f"{trained['AP_before']:.3f}, after {trained['AP_after']:.3f}"
    )

    log(f"[2/4] exporting TFLite (fp32) at {input_size}×{input_size}, the size it was trained and scored at")
    model = load_keras_model(model_path)
    tflite_path = export_tflite(model, out / "model.tflite", size, "fp32", progress=False)

    log("[3/4] scoring the TFLite model on the sample with pycocotools (same letterboxed input)")
    tflite_summary = evaluate_coco(str(tflite_path), ann, images, flip=True, progress=False, verbose=False)

    log(f"[4/4] predicting with the TFLite model; drawing the people it scores at least {draw_min_score:g}")
    drawing = Predictor(str(tflite_path), flip=True, min_score=draw_min_score)
    drawn = predict_files(drawing, [images], out / "predictions", progress=progress)
    compare_path = write_comparison(
        ann,
        images,
        {Path(entry["input"]).name: entry["json"] for entry in drawn["inputs"] if "json" in entry},
        out / "compare.png",
        right_title=f"TFLite export, people scoring ≥ {draw_min_score:g}",
    )

    metrics = {
        "level": level,
        "input_size": input_size,
        "images": trained["images"],
        "epochs_done": trained["epochs_done"],
        "steps": trained["steps"],
        "train_minutes": trained["train_minutes"],
        "stopped_by_time_limit": trained["stopped_by_time_limit"],
        "images_per_sec_median": trained["images_per_sec_median"],
        "machine": trained["machine"],
        "loss_first": trained["loss_first"],
        "loss_last_epoch_mean": trained["loss_last_epoch_mean"],
        "AP_before": trained["AP_before"],
        "AP": trained["AP_after"],
        "keras": trained["after"],
        "AP_tflite": tflite_summary.get("AP"),
        "tflite_input_size": list(size),
        "tflite": {k: v for k, v in tflite_summary.items() if isinstance(v, (int, float))},
        "draw_min_score": draw_min_score,
        "config": trained["config"],
        "predictions": {
            "images": drawn["frames"],
            "people_drawn": sum(entry["people"] for entry in drawn["inputs"]),
            "fps": drawn["fps"],
        },
        "total_minutes": (time.perf_counter() - started) / 60.0,
        "files": {
            "model": str(model_path),
            "tflite": str(tflite_path),
            "metrics": str(out / "metrics.json"),
            "loss_plot": str(out / "loss.png"),
            "compare": str(compare_path),
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
