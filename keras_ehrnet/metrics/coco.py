"""COCO keypoint evaluation: predictions → COCO results → pycocotools' AP/AR table.

    summary = evaluate_coco(model, "person_keypoints_val2017.json", "val2017/")
    summary["AP"], summary["decode_ms_median"]

Works for a keras.Model, any runtime artefact (through `Predictor`), a ready
`Predictor`, or `keras_ehrnet.inference.oracle.Oracle()` (ideal outputs from the ground
truth: the ceiling of the decoding). Person scores and result fields follow
HigherHRNet's COCO evaluation (score = mean joint detection value, no rescoring,
no OKS-NMS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from keras_ehrnet.data.validate import check_annotations, check_images
from keras_ehrnet.fileio import atomic_write_json
from keras_ehrnet.inference.decoding import DecodeConfig, DecodeResult, decode_outputs
from keras_ehrnet.inference.images import ImageReadError, read_image
from keras_ehrnet.inference.oracle import Oracle, oracle_scale_outputs, person_keypoints
from keras_ehrnet.inference.predictor import Predictor
from keras_ehrnet.inference.transforms import make_test_plan
from keras_ehrnet.keypoints import DEFAULT_OKS_SIGMA, find_dataset_info, infer_flip_index

log = logging.getLogger("keras_ehrnet.metrics.coco")

# pycocotools' keypoint stats, in COCOeval.stats order.
COCO_STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def check_annotation_file(ann_file: str | os.PathLike):
    """The annotation file after the checks training uses (`keras_ehrnet.data.validate`):
    a `CheckedAnnotations` whose `coco()` indexes only the records that passed and whose
    `problems` name the others. Fatal errors raise DatasetError (a ValueError) naming the file."""
    return check_annotations(ann_file)


def load_coco(ann_file: str | os.PathLike, *, verbose: bool = False):
    """A pycocotools COCO object for `ann_file` (its valid records; the others are logged),
    with errors that name the file."""
    checked = check_annotation_file(ann_file)
    for problem in checked.problems:
        log.warning("left out: %s", problem)
    return checked.coco()


def keypoint_category(coco) -> dict:
    """The (first) category that has keypoints, e.g. COCO's person."""
    for cat in coco.loadCats(coco.getCatIds()):
        if cat.get("keypoints"):
            return cat
    raise ValueError("the annotation file has no category with keypoints (not a keypoint dataset)")


def coco_results(image_id: int, result: DecodeResult, category_id: int = 1) -> list[dict]:
    """COCO keypoint results for one image: one dict per person (keypoints x, y, score flattened)."""
    out = []
    for kp, score in zip(result.keypoints, result.scores):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_id),
                "keypoints": [round(float(v), 3) for v in np.asarray(kp, np.float64).reshape(-1)],
                "score": float(score),
            }
        )
    return out


def coco_summary(
    coco_gt,
    results: Sequence[dict],
    image_ids: Sequence[int] | None = None,
    *,
    oks_sigmas: Sequence[float] | None = None,
    keypoint_names: Sequence[str] | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Run pycocotools' keypoint evaluation; returns {"AP": …, "AR": …} (all 0 without any result).

    `verbose` prints pycocotools' table. `oks_sigmas`: per-joint OKS constants; by default
    those of the known dataset whose keypoint list `keypoint_names` is (COCO and OCHuman,
    CrowdPose, AI Challenger: `keras_ehrnet.keypoints`), COCO's for 17 joints, and
    `DEFAULT_OKS_SIGMA` for every joint of other sets (with a warning).
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        log.warning("no detections in any image: AP and AR are 0")
        if verbose:
            print("No detections: AP and AR are 0.")
        return {name: 0.0 for name in COCO_STAT_NAMES}
    num_joints = len(results[0]["keypoints"]) // 3
    quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
    with quiet:
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        if oks_sigmas is None and keypoint_names is not None:
            info = find_dataset_info(keypoint_names)
            oks_sigmas = info.sigmas if info is not None else None
        if oks_sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(oks_sigmas, dtype=np.float64)
        elif num_joints != len(ev.params.kpt_oks_sigmas):
            log.warning(
                "%d joints: COCO's OKS constants are for 17, so every joint uses %.4f (COCO's mean); "
                "pass oks_sigmas for your own",
                num_joints,
                DEFAULT_OKS_SIGMA,
            )
            ev.params.kpt_oks_sigmas = np.full(num_joints, DEFAULT_OKS_SIGMA)
        if len(ev.params.kpt_oks_sigmas) != num_joints:
            raise ValueError(
                f"results have {num_joints} joints but {len(ev.params.kpt_oks_sigmas)} OKS sigmas were given"
            )
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(max(v, 0.0)) for name, v in zip(COCO_STAT_NAMES, ev.stats)}


def paired_difference(
    coco_gt,
    results_a: Sequence[dict],
    results_b: Sequence[dict],
    image_ids: Sequence[int],
    *,
    stat: str = "AP",
    oks_sigmas: Sequence[float] | None = None,
) -> dict:
    """How far `stat` of results B is from results A on the same images, and how sure that is.

    A few images give an AP whose image-to-image spread dwarfs small differences, so the
    difference B − A comes with its leave-one-image-out jackknife standard error (both result
    sets scored on every subset of n − 1 images; the images are the unit that varies). Returns
    {"a", "b", "delta", "se", "images", "leave_one_out": [deltas]}.
    """
    ids = sorted({int(i) for i in image_ids})
    if len(ids) < 3:
        raise ValueError(f"a jackknife needs at least 3 images, got {len(ids)}")
    if stat not in COCO_STAT_NAMES:
        raise ValueError(f"stat must be one of {COCO_STAT_NAMES}, got {stat!r}")

    def score(results: Sequence[dict], subset: Sequence[int]) -> float:
        kept = [r for r in results if int(r["image_id"]) in set(subset)]
        return coco_summary(coco_gt, kept, subset, oks_sigmas=oks_sigmas, verbose=False)[stat]

    a, b = score(results_a, ids), score(results_b, ids)
    loo = []
    for left_out in ids:
        subset = [i for i in ids if i != left_out]
        loo.append(score(results_b, subset) - score(results_a, subset))
    n, mean = len(ids), float(np.mean(loo))
    se = float(np.sqrt((n - 1) / n * sum((d - mean) ** 2 for d in loo)))
    return {"a": a, "b": b, "delta": b - a, "se": se, "images": n, "leave_one_out": loo}


def load_results(results_path: str | os.PathLike) -> list[dict]:
    """A COCO keypoint results file (a JSON list of {image_id, category_id, keypoints, score})."""
    path = Path(results_path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"results file {path} is not valid JSON: {err}") from err
    if not isinstance(results, list):
        raise ValueError(
            f"results file {path} must hold a JSON list of detections, got {type(results).__name__}"
        )
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "keypoints", "score"} <= set(r):
            raise ValueError(
                f"results file {path}: entry {i} lacks image_id, keypoints or score: {str(r)[:80]}"
            )
        if len(r["keypoints"]) % 3:
            raise ValueError(
                f"results file {path}: entry {i} has {len(r['keypoints'])} keypoint numbers, not 3 per joint"
            )
    return results


def evaluate_results_file(
    ann_file: str | os.PathLike,
    results_path: str | os.PathLike,
    *,
    image_ids: Sequence[int] | None = None,
    oks_sigmas: Sequence[float] | None = None,
    verbose: bool = True,
) -> dict:
    """Score an existing COCO keypoint results file; an empty one scores 0 (not an error)."""
    checked = check_annotation_file(ann_file)
    coco = checked.coco()
    results = load_results(results_path)
    category = keypoint_category(coco)
    names = category["keypoints"]
    left_out = _report_problems(checked.problems)
    results = [dict(r, category_id=r.get("category_id", category["id"])) for r in results]
    ids = list(image_ids) if image_ids is not None else list(coco.getImgIds())
    ids = [i for i in ids if i not in left_out]
    unknown = sorted({r["image_id"] for r in results} - set(coco.imgs) - left_out, key=str)
    if unknown:
        raise ValueError(f"results file {results_path} names images not in {ann_file}: {unknown[:10]}")
    results = [r for r in results if r["image_id"] not in left_out]
    summary = dict(
        coco_summary(coco, results, ids, oks_sigmas=oks_sigmas, keypoint_names=names, verbose=verbose)
    )
    summary.update({"images": len(ids), "people": len(results), "skipped": len(left_out)})
    summary["problems"] = [str(p) for p in checked.problems]
    return summary


def _report_problems(problems) -> set:
    """Print the records left out (one line each) and return the image ids they take out."""
    if problems:
        print(f"{len(problems)} record(s) left out of the evaluation:")
        for problem in problems:
            print(f"  {problem}")
    return {p.image_id for p in problems if p.image_id is not None}


def evaluate_coco(
    model_or_runner_or_predictor: Any,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    input_size: int | tuple[int, int] | None = None,
    flip: bool = True,
    scales: Sequence[float] = (1.0,),
    image_ids: Sequence[int] | None = None,
    results_path: str | os.PathLike | None = None,
    progress: bool = True,
    decode_config: DecodeConfig | None = None,
    flip_index: Sequence[int] | None = None,
    oks_sigmas: Sequence[float] | None = None,
    max_images: int | None = None,
    verbose: bool = True,
    validate_images: str = "header",
    **decode_options: Any,
) -> dict:
    """COCO keypoint AP of a model, runtime artefact, Predictor or Oracle on an annotated image folder.

    Every image of `ann_file` (or `image_ids`, or the first `max_images`) is predicted
    with the given test settings (for a `Predictor`, its own settings are used); the
    results are written to `results_path` when given and scored with pycocotools.
    The annotations and image files are first checked as for training
    (`keras_ehrnet.data.validate`; `validate_images`: "header", "full" or "off"): images
    with bad records or files, and any that cannot be read later, are skipped, listed and
    counted, and the rest are scored. Returns the summary: COCO_STAT_NAMES, "images"
    evaluated, "skipped" (images), "problems" (one line each), "people" detected and
    "decode_ms_median"/"decode_ms_max" (everything after the network, per image).
    `input_size`: the short side R, or a fixed (height, width) to letterbox every image into
    (as a fixed-size export runs). Extra keyword arguments set `DecodeConfig` fields (e.g.
    refine=False).
    """
    checked = check_annotation_file(ann_file)
    coco = checked.coco()
    category = keypoint_category(coco)
    names = category["keypoints"]
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    problems = list(checked.problems)
    if not checked.dataset["images"] and not problems:
        raise ValueError(f"{ann_file}: lists no images to evaluate")
    left_out = {p.image_id for p in problems if p.image_id is not None}
    ids = list(image_ids) if image_ids is not None else list(coco.getImgIds())
    unknown = [i for i in ids if i not in coco.imgs and i not in left_out]
    if unknown:
        raise ValueError(f"image ids not in {ann_file}: {unknown[:10]}")
    ids = [i for i in ids if i in coco.imgs]
    if max_images is not None:
        ids = ids[:max_images]
    if not isinstance(model_or_runner_or_predictor, Oracle):  # the oracle reads no image
        infos = [coco.imgs[i] for i in ids]
        items = [(i["id"], i["file_name"], i["width"], i["height"]) for i in infos]
        image_problems = check_images(items, ann_file, image_dir, validate_images, progress=progress)
        problems += image_problems
        bad = {p.image_id for p in image_problems}
        ids = [i for i in ids if i not in bad]
    if flip_index is None and len(names) != 17:
        flip_index = tuple(infer_flip_index(names))

    oracle = model_or_runner_or_predictor if isinstance(model_or_runner_or_predictor, Oracle) else None
    if oracle is not None:
        config = decode_config or DecodeConfig()
        changes = dict(decode_options)
        if flip_index is not None:
            changes["flip_index"] = tuple(flip_index)
        config = dataclasses.replace(config, **changes)
        fixed = None if input_size is None or np.isscalar(input_size) else tuple(int(v) for v in input_size)
        input_size = min(fixed) if fixed else int(input_size or 512)
        scales = tuple(sorted((float(s) for s in scales), reverse=True))
        name = oracle.name
        fi = config.flip_index_for(len(names)) if flip else None
    elif isinstance(model_or_runner_or_predictor, Predictor):
        predictor = model_or_runner_or_predictor
        name = predictor.name
    else:
        predictor = Predictor(
            model_or_runner_or_predictor,
            input_size=input_size,
            flip=flip,
            scales=scales,
            flip_index=flip_index,
            decode_config=decode_config,
            **decode_options,
        )
        name = predictor.name
    if oracle is None and predictor.num_joints and predictor.num_joints != len(names):
        raise ValueError(
            f"{name} predicts {predictor.num_joints} joints but {ann_file} annotates {len(names)} ({category['name']})"
        )

    results: list[dict] = []
    evaluated: list[int] = []
    # one entry per problem: {"image_id", "file", "reason", "line" (what is printed)}
    skipped: list[dict] = [
        {"image_id": p.image_id, "file": p.image_file or "", "reason": p.message, "line": str(p)}
        for p in problems
    ]
    decode_ms: list[float] = []
    bar = tqdm(ids, desc=f"COCO eval ({name})", unit="img", disable=not progress)
    for image_id in bar:
        info = coco.imgs[image_id]
        path = image_dir / info["file_name"]
        if oracle is not None:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
            plan = make_test_plan(
                (int(info["height"]), int(info["width"])), input_size, scales, fixed_input_size=fixed
            )
            kp = person_keypoints(anns, len(names))
            outputs = oracle_scale_outputs(
                kp, plan, flip=flip, flip_index=fi, sigma=oracle.sigma, tag_per_joint=oracle.tag_per_joint
            )
            t = time.perf_counter()
            result = decode_outputs(outputs, plan, config)
            decode_ms.append((time.perf_counter() - t) * 1000)
        else:
            try:
                image = read_image(path, ignore_orientation=True)
            except ImageReadError as err:
                log.warning("skipped image id %s: %s", image_id, err)
                skipped.append(
                    {
                        "image_id": int(image_id),
                        "file": str(path),
                        "reason": str(err),
                        "line": f"{path}: {err}",
                    }
                )
                continue
            timings: dict[str, float] = {}
            result = predictor.predict_result(image, timings)
            decode_ms.append(timings["decode"] * 1000)
        evaluated.append(int(image_id))
        results.extend(coco_results(image_id, result, category["id"]))
        bar.set_postfix(people=len(results))
    skipped_ids = {s["image_id"] for s in skipped if s["image_id"] is not None}
    if skipped:
        print(f"{len(skipped_ids)} image(s) skipped ({len(skipped)} problem(s)):")
        for s in skipped:
            print(f"  {s['line']}")
    if results_path is not None:
        atomic_write_json(results_path, results)
    if evaluated:
        stats = coco_summary(
            coco, results, evaluated, oks_sigmas=oks_sigmas, keypoint_names=names, verbose=verbose
        )
    else:
        log.warning("no image could be evaluated")
        stats = {n: 0.0 for n in COCO_STAT_NAMES}
    summary = dict(stats)
    summary.update(
        {
            "images": len(evaluated),
            "skipped": len(skipped_ids),
            "problems": [s["line"] for s in skipped],
            "people": len(results),
            "decode_ms_median": float(np.median(decode_ms)) if decode_ms else 0.0,
            "decode_ms_max": float(np.max(decode_ms)) if decode_ms else 0.0,
            "model": name,
        }
    )
    return summary
