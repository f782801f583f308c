"""COCO evaluation: the ground-truth oracle's AP, results format, empty results, unreadable images."""

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED

from keras_ehrnet.inference.oracle import Oracle
from keras_ehrnet.metrics.coco import (
    COCO_STAT_NAMES,
    coco_summary,
    evaluate_coco,
    load_coco,
    paired_difference,
)

COCO_MINI = SHARED / "data" / "coco-mini"
ANN = COCO_MINI / "annotations" / "person_keypoints_train2017.json"
IMAGES = COCO_MINI / "train2017"


@pytest.fixture(scope="module")
def coco_mini():
    if not ANN.is_file():
        pytest.skip(f"coco-mini not found at {COCO_MINI}")
    return ANN, IMAGES


class ZeroRunner:
    """A network that never sees anyone."""

    name = "zeros"
    num_joints = 17
    fixed_input_size = None

    def __call__(self, images):
        b, h, w, _ = images.shape
        return np.zeros((b, h // 4, w // 4, 34), np.float32), np.zeros((b, h // 2, w // 2, 17), np.float32)


def test_oracle_reaches_high_ap_on_coco_mini(coco_mini, tmp_path):
    ann, images = coco_mini
    results = tmp_path / "results.json"
    summary = evaluate_coco(
        Oracle(), ann, images, input_size=512, flip=True, results_path=results, progress=False
    )
    assert summary["AP"] >= 0.9, summary
    assert summary["images"] == 80 and summary["skipped"] == 0
    assert set(COCO_STAT_NAMES) <= set(summary)
    assert 0 < summary["decode_ms_median"] <= summary["decode_ms_max"]
    written = json.loads(results.read_text())
    assert len(written) == summary["people"] > 80
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in written)


def truth_as_results(coco) -> list[dict]:
    """Every annotated person of `coco` as a detection with score 1: the results that score AP 1."""
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in coco.dataset["annotations"]
        if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]


def test_ground_truth_as_results_scores_one(coco_mini):
    ann, _ = coco_mini
    coco = load_coco(ann)
    results = truth_as_results(coco)
    stats = coco_summary(coco, results, verbose=False)
    assert stats["AP"] == pytest.approx(1.0)
    stats = coco_summary(coco, results[: len(results) // 2], verbose=False)
    assert 0.2 < stats["AR"] < 0.8


def test_paired_difference_gives_the_gap_and_its_jackknife_error(coco_mini):
    ann, _ = coco_mini
    coco = load_coco(ann)
    truth = truth_as_results(coco)
    ids = sorted({r["image_id"] for r in truth})[:8]
    same = paired_difference(coco, truth, truth, ids)
    assert same["a"] == same["b"] == pytest.approx(1.0)
    assert same["delta"] == same["se"] == 0.0 and same["images"] == 8
    # B misses every person of one image: a loss that only that image carries
    missing = [r for r in truth if r["image_id"] != ids[3]]
    gap = paired_difference(coco, truth, missing, ids)
    assert gap["delta"] < -0.03
    assert gap["delta"] == pytest.approx(gap["b"] - gap["a"])
    assert len(gap["leave_one_out"]) == 8
    assert gap["leave_one_out"][3] == pytest.approx(0.0)  # without that image, nothing differs
    assert gap["se"] > 0.02
    with pytest.raises(ValueError, match="at least 3 images"):
        paired_difference(coco, truth, truth, ids[:2])


def test_other_keypoint_sets_get_default_or_given_oks_constants(coco_mini, tmp_path, caplog):
    """A 14-keypoint set (COCO's limbs + two): ground truth scores 1 with the default constants,
    a shifted copy scores lower with tighter ones, and a wrong count of constants is refused."""
    ann, _ = coco_mini
    data = json.loads(ann.read_text())
    keep = list(range(5, 17)) + [0, 1]
    for a in data["annotations"]:
        k = a["keypoints"]
        a["keypoints"] = [v for j in keep for v in k[3 * j : 3 * j + 3]]
        a["num_keypoints"] = sum(1 for j in keep if k[3 * j + 2] > 0)
    data["categories"][0]["keypoints"] = [data["categories"][0]["keypoints"][j] for j in keep]
    path = tmp_path / "kp14.json"
    path.write_text(json.dumps(data))
    coco = load_coco(path)
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": list(a["keypoints"]), "score": 1.0}
        for a in data["annotations"]
        if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]
    with caplog.at_level("WARNING"):
        assert coco_summary(coco, results, verbose=False)["AP"] == pytest.approx(1.0)
    assert "0.0669" in caplog.text
    shifted = [
        dict(r, keypoints=[v + 3.0 if i % 3 == 0 else v for i, v in enumerate(r["keypoints"])])
        for r in results
    ]
    loose = coco_summary(coco, shifted, oks_sigmas=[0.2] * 14, verbose=False)["AP"]
    tight = coco_summary(coco, shifted, oks_sigmas=[0.01] * 14, verbose=False)["AP"]
    assert tight < loose
    with pytest.raises(ValueError, match="14 joints but 3 OKS sigmas"):
        coco_summary(coco, results, oks_sigmas=[0.1, 0.1, 0.1], verbose=False)


def test_no_detection_gives_zero_ap(coco_mini, capsys):
    ann, images = coco_mini
    summary = evaluate_coco(ZeroRunner(), ann, images, input_size=64, max_images=3, progress=False)
    assert summary["AP"] == 0.0 and summary["AR"] == 0.0
    assert summary["people"] == 0 and summary["images"] == 3
    assert "No detections" in capsys.readouterr().out
    assert coco_summary(load_coco(ann), [], verbose=False) == {name: 0.0 for name in COCO_STAT_NAMES}


def test_results_files_empty_or_malformed(coco_mini, tmp_path):
    from evaluation.coco import main
    from keras_ehrnet.metrics.coco import evaluate_results_file

    ann, _ = coco_mini
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    summary = evaluate_results_file(ann, empty, verbose=False)
    assert summary["AP"] == 0.0 and summary["people"] == 0 and summary["images"] == 80
    out = tmp_path / "summary.json"
    assert main(["--results", str(empty), "--ann", str(ann), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["AP"] == 0.0
    for text, match in (
        ("{oops", "not valid JSON"),
        ('{"a": 1}', "JSON list"),
        ('[{"image_id": 1}]', "entry 0"),
    ):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            evaluate_results_file(ann, bad, verbose=False)
    assert main(["--results", str(bad), "--ann", str(ann)]) == 2
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"image_id": 123456789, "keypoints": [0] * 51, "score": 1.0}]))
    with pytest.raises(ValueError, match="123456789"):
        evaluate_results_file(ann, wrong, verbose=False)


def test_unreadable_images_are_skipped_and_named(coco_mini, tmp_path, capsys):
    ann, images = coco_mini
    data = json.loads(ann.read_text())
    keep = data["images"][:3]
    for info in keep:
        shutil.copy(images / info["file_name"], tmp_path / info["file_name"])
    (tmp_path / keep[1]["file_name"]).write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / keep[2]["file_name"]).unlink()
    ids = {i["id"] for i in keep}
    small = dict(data, images=keep, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    small_ann = tmp_path / "ann.json"
    small_ann.write_text(json.dumps(small))
    summary = evaluate_coco(ZeroRunner(), small_ann, tmp_path, input_size=64, progress=False)
    assert summary["images"] == 1 and summary["skipped"] == 2
    out = capsys.readouterr().out
    assert keep[1]["file_name"] in out and keep[2]["file_name"] in out


def test_bad_annotation_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        evaluate_coco(ZeroRunner(), tmp_path / "nothing.json", tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        evaluate_coco(ZeroRunner(), broken, tmp_path)


def test_coco_program_with_the_oracle(coco_mini, tmp_path):
    from evaluation.coco import main

    ann, images = coco_mini
    summary_path, results_path = tmp_path / "summary.json", tmp_path / "results.json"
    argv = ["--oracle", "--ann", str(ann), "--images", str(images), "--input-size", "256", "--no-flip"]
    argv += ["--max-images", "20", "--json", str(summary_path), "--out", str(results_path), "--quiet"]
    assert main(argv) == 0
    summary = json.loads(summary_path.read_text())
    assert set(COCO_STAT_NAMES) | {"images", "decode_ms_median", "decode_ms_max"} <= set(summary)
    assert summary["images"] == 20 and summary["AP"] > 0.5
    assert json.loads(results_path.read_text())
    assert main(["--model", str(tmp_path / "none.onnx"), "--ann", str(ann), "--images", str(images)]) == 2


def test_a_fixed_input_size_letterboxes_every_image(coco_mini, tmp_path):
    from evaluation.coco import main

    ann, images = coco_mini

    class Recording(ZeroRunner):
        shapes: set = set()

        def __call__(self, batch):
            self.shapes.add(batch.shape[1:3])
            return super().__call__(batch)

    runner = Recording()
    evaluate_coco(runner, ann, images, input_size=(128, 192), max_images=6, progress=False, verbose=False)
    assert runner.shapes == {(128, 192)}  # portrait and landscape images alike
    # the oracle letterboxed into a square still finds people (no flip test, so scale 1 only)
    summary_path = tmp_path / "summary.json"
    argv = ["--oracle", "--ann", str(ann), "--images", str(images), "--input-size", "320x320", "--no-flip"]
    assert main([*argv, "--max-images", "20", "--json", str(summary_path), "--quiet"]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["settings"]["input_size"] == [320, 320] and summary["AP"] > 0.5


def test_a_model_for_other_joints_is_refused(coco_mini):
    ann, images = coco_mini

    class FourJoints(ZeroRunner):
        num_joints = 4

    with pytest.raises(ValueError, match="4 joints"):
        evaluate_coco(FourJoints(), ann, images, input_size=64, flip=False, progress=False)


def test_evaluate_an_in_memory_keras_model(coco_mini):
    import keras_ehrnet

    ann, images = coco_mini
    model = keras_ehrnet.build_model("H-4", input_size=(64, 64))  # fixed size: letterboxed, one trace
    summary = evaluate_coco(model, ann, images, max_images=2, progress=False, verbose=False)
    assert summary["images"] == 2 and summary["model"] == "keras"
    assert 0 <= summary["AP"] <= 1 and summary["decode_ms_max"] > 0
