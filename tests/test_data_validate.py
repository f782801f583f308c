"""Bad input never costs finished work: one validation pass before the first step names every
bad record (file, image id, annotation id), training stops in one line or skips and lists,
and evaluation skips and lists what it cannot take and scores the rest."""

from __future__ import annotations

import json
import logging
import math
import zlib

import cv2
import numpy as np
import pytest
from synthetic_coco import person, write_dataset
from test_evaluate import ZeroRunner
from test_training import tiny_model

from keras_ehrnet.data import CocoKeypoints, DatasetError, SkipLog, make_dataset
from keras_ehrnet.data.validate import check_annotations, check_image_file
from keras_ehrnet.metrics.coco import evaluate_coco


def _dataset(tmp_path, n: int = 3, size=(120, 100), **first):
    specs = [{"size": size, "people": [person({0: (40 + 10 * k, 50), 5: (50, 60)}, 17)]} for k in range(n)]
    specs[0].update(first)
    return write_dataset(tmp_path, specs)


def _edit(ann, change) -> None:
    data = json.loads(ann.read_text())
    change(data)
    ann.write_text(json.dumps(data))


# --- item 1: a zero-byte image -----------------------------------------------------------------


def test_a_zero_byte_image_is_named_before_training_or_skipped(tmp_path, caplog):
    ann, images = _dataset(tmp_path)
    (images / "000001.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"image id 2 \(.*000001\.jpg\): image file is empty \(0 bytes\)"):
        CocoKeypoints(ann, images)
    log = SkipLog()
    assert len(CocoKeypoints(ann, images, skip_invalid=True, skip_log=log)) == 2
    assert log.entries[0][0] == 2 and "000001.jpg" in log.entries[0][1] and "empty" in log.entries[0][2]


def test_a_zero_byte_image_met_mid_run_is_skipped_and_named(tmp_path):
    """Emptied after the check: OpenCV raises for an empty buffer; the pipeline skips it."""
    ann, images = _dataset(tmp_path)
    (images / "000001.jpg").write_bytes(b"")
    log = SkipLog()
    kwargs = dict(input_size=64, batch_size=1, training=False, validate_images="off")
    assert len(list(make_dataset(ann, images, skip_invalid=True, skip_log=log, **kwargs))) == 2
    assert log.entries[0][0] == 2 and "empty (0 bytes)" in log.entries[0][2]


# --- item 2: image content checked up front ----------------------------------------------------


def _png_with_broken_pixels(path, h: int, w: int) -> None:
    """A PNG whose header and end marker are right but whose compressed pixels are not."""
    ok, buf = cv2.imencode(".png", np.full((h, w, 3), 90, np.uint8))
    data = bytearray(buf.tobytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start : start + length] = bytes(length)  # zeros: not a zlib stream
    crc = zlib.crc32(bytes(data[start - 4 : start + length])).to_bytes(4, "big")
    data[start + length : start + length + 4] = crc
    path.write_bytes(bytes(data))


def test_header_check_is_quick_and_full_check_decodes(tmp_path):
    ann, images = _dataset(tmp_path)
    _png_with_broken_pixels(images / "000002.jpg", 100, 120)  # a PNG named .jpg, pixels broken
    assert check_image_file(images / "000002.jpg", 120, 100, "header") is None
    assert "cannot decode" in check_image_file(images / "000002.jpg", 120, 100, "full")
    assert len(CocoKeypoints(ann, images)) == 3
    with pytest.raises(DatasetError, match=r"image id 3 .*000002\.jpg.*cannot decode"):
        CocoKeypoints(ann, images, validate_images="full")


def test_many_bad_images_stop_with_the_first_and_a_count(tmp_path):
    ann, images = _dataset(tmp_path, n=5)
    (images / "000000.jpg").write_bytes(b"")
    data = (images / "000002.jpg").read_bytes()
    (images / "000002.jpg").write_bytes(data[: len(data) - 200])
    (images / "000004.jpg").unlink()
    with pytest.raises(DatasetError) as err:
        CocoKeypoints(ann, images)
    message = str(err.value)
    assert "\n" not in message and "image id 1 " in message and "(and 2 more problem(s))" in message
    log = SkipLog()
    assert CocoKeypoints(ann, images, skip_invalid=True, skip_log=log).image_ids == [2, 4]
    report = log.report()
    assert "3 sample(s) skipped" in report
    assert "empty" in report and "truncated JPEG" in report and "not found" in report


# --- item 3: duplicate ids and other bad records ----------------------------------------------


def test_duplicate_image_ids_are_named_not_mixed(tmp_path):
    ann, images = _dataset(tmp_path)
    _edit(ann, lambda d: d["images"][1].update(id=1))  # same size as image 1: used to train silently
    with pytest.raises(
        DatasetError, match=r"image id 1 appears 2 times in 'images' \(000000\.jpg, 000001\.jpg\)"
    ):
        CocoKeypoints(ann, images)
    log = SkipLog()
    ds = CocoKeypoints(ann, images, skip_invalid=True, skip_log=log)
    assert ds.image_ids == [3]  # both copies out: no one's people trained on another image
    assert log.count == 3 and "annotation id 2: names image id 2, which is not in 'images'" in log.report()


def test_duplicate_annotation_ids_are_named(tmp_path):
    ann, images = _dataset(tmp_path)
    _edit(ann, lambda d: d["annotations"][2].update(id=1))
    with pytest.raises(DatasetError, match=r"annotation id 1 appears 2 times"):
        CocoKeypoints(ann, images)
    assert CocoKeypoints(ann, images, skip_invalid=True).image_ids == [2]


BAD_RECORDS = {
    "annotation of a missing image": (
        lambda d: d["annotations"][0].update(image_id=99),
        r"image id 99 annotation id 1: names image id 99, which is not in 'images'",
    ),
    "wrong-length keypoints": (
        lambda d: d["annotations"][0].update(keypoints=[1.0] * 50),
        r"image id 1 annotation id 1 .*50 keypoint values, expected 51",
    ),
    "non-finite keypoint": (
        lambda d: d["annotations"][0]["keypoints"].__setitem__(0, math.nan),
        r"annotation id 1 .*NaN or infinite",
    ),
    "visibility 3": (
        lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 3),
        r"annotation id 1 .*visibility 3 \(COCO uses 0",
    ),
    "negative bbox width": (
        lambda d: d["annotations"][0].update(bbox=[10, 10, -5, 20]),
        r"annotation id 1 .*'bbox' \[10, 10, -5, 20\] has a negative",
    ),
    "negative image size": (
        lambda d: d["images"][0].update(width=-120),
        r"image id 1 \(000000\.jpg\): bad size -120x100",
    ),
    "string image size": (
        lambda d: d["images"][0].update(height="100"),
        r"image id 1 .*'width' and 'height' must be numbers",
    ),
    "image without id": (lambda d: d["images"][0].pop("id"), r"images\[0\]: 'id' must be an integer"),
    "unknown category": (
        lambda d: d["annotations"][0].update(category_id=7),
        r"annotation id 1 .*category_id 7 is not in 'categories'",
    ),
    "keypoints as text": (
        lambda d: d["annotations"][0].update(keypoints="0 0 0"),
        r"annotation id 1 .*str keypoint values",
    ),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_bad_records_are_named_with_image_and_annotation_ids(tmp_path, name):
    change, pattern = BAD_RECORDS[name]
    ann, images = _dataset(tmp_path)
    _edit(ann, change)
    with pytest.raises(DatasetError, match=pattern) as err:
        CocoKeypoints(ann, images)
    assert str(ann) in str(err.value) and "\n" not in str(err.value)
    ds = CocoKeypoints(ann, images, skip_invalid=True)
    assert len(ds) == 2  # the image the record spoils is left out (or, orphaned, keeps no one)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "a JSON list, not an object"),
        ('{"images": [], "annotations": []}', "no 'categories' list"),
        (
            '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}',
            "no category with",
        ),
        ('{"images": {}, "categories": []}', "no 'images' list"),
    ],
)
def test_files_that_are_not_keypoint_files_stop_at_once(tmp_path, content, message):
    ann = tmp_path / "bad.json"
    ann.write_text(content)
    with pytest.raises(DatasetError, match=message):
        check_annotations(ann)
    with pytest.raises(DatasetError, match=message):
        CocoKeypoints(ann, tmp_path, skip_invalid=True)  # nothing to skip: the file is unusable


def test_missing_fields_are_filled_for_scoring(tmp_path):
    ann, _ = _dataset(tmp_path)

    def strip(d):
        for a in d["annotations"]:
            for key in ("area", "iscrowd", "num_keypoints", "segmentation"):
                a.pop(key, None)
        d["annotations"][1].pop("bbox")

    _edit(ann, strip)
    anns = check_annotations(ann).dataset["annotations"]
    assert [a["num_keypoints"] for a in anns] == [2, 2, 2] and all(a["iscrowd"] == 0 for a in anns)
    assert anns[1]["bbox"] == [50.0, 50.0, 0.0, 10.0]  # around the labelled keypoints
    x, y, w, h = anns[0]["bbox"]
    assert anns[0]["area"] == pytest.approx(w * h * 0.53)


# --- item 7: evaluation checks as much as training, skips and lists -----------------------------


def test_evaluation_without_categories_is_one_line_and_status_2(tmp_path, capsys):
    from evaluation.coco import main

    ann, images = _dataset(tmp_path)
    _edit(ann, lambda d: d.pop("categories"))
    assert main(["--oracle", "--ann", str(ann), "--images", str(images), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(ann) in err and "no 'categories' list" in err


def test_evaluation_skips_and_lists_bad_images_and_scores_the_rest(tmp_path, capsys):
    ann, images = _dataset(tmp_path, n=5)
    _edit(ann, lambda d: d["annotations"][0].update(keypoints=[0.0] * 48))  # image 1
    cv2.imwrite(str(images / "000001.jpg"), np.zeros((90, 120, 3), np.uint8))  # image 2: 120x90, JSON 120x100
    (images / "000002.jpg").write_bytes(b"")  # image 3
    summary = evaluate_coco(ZeroRunner(), ann, images, input_size=64, progress=False, verbose=False)
    assert summary["images"] == 2 and summary["skipped"] == 3 and len(summary["problems"]) == 3
    out = capsys.readouterr().out
    assert "3 image(s) skipped" in out
    assert "image id 1 annotation id 1" in out and "48 keypoint values" in out
    assert "120x90 but its annotation says 120x100" in out and "empty (0 bytes)" in out


def test_strict_evaluation_writes_its_summary_then_fails(tmp_path, capsys):
    from evaluation.coco import main

    ann, images = _dataset(tmp_path)
    (images / "000001.jpg").write_bytes(b"")
    model = tmp_path / "tiny.keras"
    tiny_model(17).save(model)
    out = tmp_path / "summary.json"
    argv = ["--ann", str(ann), "--images", str(images), "--input-size", "64", "--quiet", "--json", str(out)]
    assert main(["--oracle", *argv]) == 0  # the oracle reads no image: nothing skipped
    assert main(["--model", str(model), "--no-flip", *argv]) == 0
    assert json.loads(out.read_text())["skipped"] == 1
    assert main(["--model", str(model), "--no-flip", *argv, "--strict"]) == 2
    assert json.loads(out.read_text())["images"] == 2  # the rest was scored and written first
    assert "--strict: 1 image(s) skipped" in capsys.readouterr().err


def test_training_reports_where_the_skip_log_lists_skips(tmp_path, caplog):
    ann, images = _dataset(tmp_path)
    _edit(ann, lambda d: d["images"][2].update(id=1))
    with caplog.at_level(logging.WARNING, logger="keras_ehrnet.data"):
        CocoKeypoints(ann, images, skip_invalid=True)
    assert "3 sample(s) skipped" in caplog.text and "image id 1 appears 2 times" in caplog.text
    assert f"image id 3 ({ann}): annotation id 3: names image id 3" in caplog.text
