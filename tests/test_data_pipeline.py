"""The COCO reader and the tf.data pipeline, on real coco-mini images and on synthetic sets."""

import json
import logging

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED
from pycocotools import mask as mask_utils
from synthetic_coco import CROWDPOSE_NAMES, person, write_dataset

from keras_ehrnet.data import (
    AffineParams,
    AugmentConfig,
    CocoKeypoints,
    DatasetError,
    SkipLog,
    build_dataset,
    gaussian_heatmaps,
    load_sample,
    make_dataset,
    sample_dataset,
)
from keras_ehrnet.data.pipeline import _pass_order
from keras_ehrnet.data.visualize import decode_joints

COCO_MINI = SHARED / "data" / "coco-mini"
NO_AUG = AugmentConfig(max_rotation=0, min_scale=1, max_scale=1, max_translate=0, flip_prob=0)


@pytest.fixture(scope="module")
def coco_mini():
    ann = COCO_MINI / "annotations" / "person_keypoints_train2017.json"
    if not ann.is_file():
        pytest.skip(f"coco-mini not found at {COCO_MINI}")
    return ann, COCO_MINI / "train2017", json.loads(ann.read_text())


def _first(ds):
    images, targets = next(iter(ds))
    return images.numpy(), {k: v.numpy() for k, v in targets.items()}


def _peak_cells_hold_one(heatmaps, keypoints, stride):
    """Every labelled keypoint inside the map has the Gaussian's 1.0 at its floor cell."""
    h, w, _ = heatmaps.shape
    checked = 0
    for n in range(keypoints.shape[0]):
        for j in range(keypoints.shape[1]):
            x, y, v = keypoints[n, j]
            cx, cy = int(np.floor(x / stride)), int(np.floor(y / stride))
            if v > 0 and 0 <= cx < w and 0 <= cy < h:
                assert heatmaps[cy, cx, j] == 1.0, (n, j, x, y)
                checked += 1
    return checked


# --- the reader -------------------------------------------------------------------------------


def test_reader_on_coco_mini_follows_the_annotation_file(coco_mini):
    ann, images, raw = coco_mini
    ds = CocoKeypoints(ann, images)
    annotated = {a["image_id"] for a in raw["annotations"]}
    assert sorted(ds.image_ids) == sorted(annotated)
    cat = raw["categories"][0]
    assert ds.num_joints == 17 and ds.keypoint_names == cat["keypoints"]
    assert ds.skeleton == [(a - 1, b - 1) for a, b in cat["skeleton"]]
    assert [ds.keypoint_names[k] for k in ds.flip_index[1:5]] == [
        "right_eye",
        "left_eye",
        "right_ear",
        "left_ear",
    ]
    for record in ds:
        anns = [a for a in raw["annotations"] if a["image_id"] == record.image_id]
        used = [a for a in anns if not a["iscrowd"] or a["num_keypoints"] > 0]
        assert record.keypoints.shape == (len(used), 17, 3)
        np.testing.assert_array_equal(record.keypoints, [np.reshape(a["keypoints"], (17, 3)) for a in used])
        needs_mask = any(a["iscrowd"] or a["num_keypoints"] == 0 for a in anns)
        assert (record.ignore_rle is not None) == needs_mask
    assert sum(r.num_people for r in ds) == sum(a["num_keypoints"] > 0 for a in raw["annotations"])
    every = CocoKeypoints(ann, images, require_annotations=False)
    assert len(every) == len(raw["images"])


# --- targets through the whole pipeline -------------------------------------------------------


def test_pipeline_equals_the_numpy_reference_path_on_coco_mini(coco_mini):
    ann, images, _ = coco_mini
    ds = CocoKeypoints(ann, images)
    batch, r = 4, 256
    out_images, t = _first(build_dataset(ds, input_size=r, batch_size=batch, seed=7, epoch=3))
    assert out_images.shape == (batch, r, r, 3) and out_images.dtype == np.float32
    assert t["heatmaps_quarter"].shape == (batch, r // 4, r // 4, 17)
    assert t["heatmaps_half"].shape == (batch, r // 2, r // 2, 17)
    assert t["mask_quarter"].shape == (batch, r // 4, r // 4) and t["mask_half"].shape == (
        batch,
        r // 2,
        r // 2,
    )
    assert t["joints"].shape == (batch, 30, 17, 2) and t["joints"].dtype == np.int32
    order = _pass_order(np.arange(len(ds)), 3, seed=7, shuffle=True, length=len(ds))
    checked = 0
    for b in range(batch):
        s = load_sample(ds, int(order[b, 0]), input_size=r, seed=7, epoch=3)
        np.testing.assert_array_equal(out_images[b], s.image)
        np.testing.assert_array_equal(t["mask_quarter"][b], s.mask_quarter)
        np.testing.assert_array_equal(t["mask_half"][b], s.mask_half)
        np.testing.assert_array_equal(
            t["heatmaps_quarter"][b], gaussian_heatmaps(s.keypoints / 4, r // 4, r // 4)
        )
        np.testing.assert_array_equal(
            t["heatmaps_half"][b], gaussian_heatmaps(s.keypoints / 2, r // 2, r // 2)
        )
        checked += _peak_cells_hold_one(t["heatmaps_quarter"][b], s.keypoints, 4)
        checked += _peak_cells_hold_one(t["heatmaps_half"][b], s.keypoints, 2)
        # Joints rows decode back to the cells of the people that stay in view, in order.
        cells = np.floor(s.keypoints[..., :2] / 4)
        inside = (s.keypoints[..., 2] > 0) & (cells >= 0).all(-1) & (cells < r // 4).all(-1)
        rows = decode_joints(t["joints"][b], r // 4)
        kept = np.flatnonzero(inside.any(-1))[:30]
        for row, n in zip(rows, kept):
            np.testing.assert_array_equal(row[:, 2], inside[n])
            np.testing.assert_array_equal(row[inside[n], :2], cells[n][inside[n]])
        assert not t["joints"][b, len(kept) :].any()
    assert checked > 20


def _disc_dataset(tmp_path, count=6):
    """Images with a white disc on each person's single keypoint (joint 5), left/right asymmetric."""
    rng = np.random.default_rng(3)
    specs = []
    for k in range(count):
        w, h = (200, 150) if k % 2 else (150, 200)
        specs.append({"size": (w, h), "people": [person({5: tuple(rng.uniform(30, 120, 2))}, 17)]})
    return write_dataset(tmp_path, specs)


def test_image_and_keypoints_move_together(tmp_path):
    ann, images = _disc_dataset(tmp_path)
    ds = CocoKeypoints(ann, images)
    r = 128
    for index in range(len(ds)):
        for epoch in range(3):
            s = load_sample(ds, index, input_size=r, seed=11, epoch=epoch)
            j = 6 if s.params.flip else 5  # a mirrored left shoulder becomes the right one
            x, y, v = s.keypoints[0, j]
            if not (5 < x < r - 5 and 5 < y < r - 5):
                continue
            bright = s.image[..., 0] > 150
            ys, xs = np.nonzero(bright)
            assert bright.sum() >= 3
            assert abs(xs.mean() - x) < 1.5 and abs(ys.mean() - y) < 1.5, (index, epoch, s.params)
            # The heatmap peak is within one quarter-resolution pixel of the transformed keypoint.
            heat = gaussian_heatmaps(s.keypoints / 4, r // 4, r // 4)[..., j]
            py, px = np.unravel_index(heat.argmax(), heat.shape)
            assert heat[py, px] == 1.0 and abs(px - x / 4) < 1 and abs(py - y / 4) < 1


def test_flipped_samples_swap_left_and_right_channels(tmp_path):
    ann, images = _disc_dataset(tmp_path, count=4)
    ds = CocoKeypoints(ann, images)
    r = 128
    plain = build_dataset(ds, input_size=r, batch_size=4, augment=NO_AUG, seed=0, shuffle=False)
    flip = AugmentConfig(max_rotation=0, min_scale=1, max_scale=1, max_translate=0, flip_prob=1)
    mirrored = build_dataset(ds, input_size=r, batch_size=4, augment=flip, seed=0, shuffle=False)
    im_p, t_p = _first(plain)
    im_m, t_m = _first(mirrored)
    assert np.abs(im_m - im_p[:, :, ::-1]).max() <= 1  # the image is mirrored
    left, right = 5, 6
    for b in range(4):
        for key, size in (("heatmaps_quarter", r // 4), ("heatmaps_half", r // 2)):
            p, m = t_p[key][b], t_m[key][b]
            assert p[..., left].max() == 1 and not p[..., right].any()
            assert m[..., right].max() == 1 and not m[..., left].any()
            py, px = np.unravel_index(p[..., left].argmax(), p.shape[:2])
            my, mx = np.unravel_index(m[..., right].argmax(), m.shape[:2])
            assert my == py and abs(mx - (size - 1 - px)) <= 1


# --- masks ------------------------------------------------------------------------------------


def test_masks_cover_crowd_regions_of_coco_mini(coco_mini):
    ann, images, raw = coco_mini
    ds = CocoKeypoints(ann, images)
    crowd = max((a for a in raw["annotations"] if a["iscrowd"]), key=lambda a: a["area"])
    index = ds.image_ids.index(crowd["image_id"])
    record = ds[index]
    s = load_sample(ds, index, input_size=512, training=False, ignore_padding=False)
    h, w = record.height, record.width
    region = mask_utils.decode(mask_utils.frPyObjects(crowd["segmentation"], h, w))
    region = cv2.erode(region, np.ones((9, 9), np.uint8))  # stay clear of the border
    ys, xs = np.nonzero(region)
    # Eval mode: the short side fills the crop, centred.
    scale = 512 / min(w, h)
    qx = np.floor(((xs - w / 2) * scale + 256) / 4).astype(int)
    qy = np.floor(((ys - h / 2) * scale + 256) / 4).astype(int)
    inside = (qx >= 0) & (qx < 128) & (qy >= 0) & (qy < 128)
    assert inside.sum() > 500
    assert (s.mask_quarter[qy[inside], qx[inside]] == 0).mean() > 0.97
    assert 0.3 < s.mask_quarter.mean() < 0.99


def test_masks_from_rle_crowds_and_people_without_keypoints(tmp_path):
    w, h = 160, 128
    crowd_map = np.zeros((h, w), np.uint8)
    crowd_map[10:50, 20:70] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd_map))
    counts = []  # uncompressed RLE, as COCO stores crowds
    flat = crowd_map.flatten(order="F")
    run, value = 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            run, value = 0, pixel
        run += 1
    counts.append(run)
    people = [
        person({0: (100, 100)}, 17),
        person({}, 17, iscrowd=1, segmentation={"size": [h, w], "counts": counts}, num_keypoints=0),
        person({}, 17, segmentation=[[100, 10, 140, 10, 140, 60, 100, 60]], num_keypoints=0),
        person(
            {},
            17,
            iscrowd=1,
            segmentation={"size": [h, w], "counts": rle["counts"].decode()},
            num_keypoints=0,
        ),
    ]
    ann, images = write_dataset(tmp_path, [{"size": (w, h), "people": people}])
    ds = CocoKeypoints(ann, images)
    ignore = ds[0].ignore_mask()
    assert ignore[10:50, 20:70].all() and ignore[10:60, 100:140].all()  # RLE crowds and polygon
    assert ignore.sum() == 40 * 50 + 50 * 40
    # Eval mode with the long side fitting the crop: every image pixel is in view.
    long = AugmentConfig(scale_type="long")
    s = load_sample(ds, 0, input_size=160, training=False, augment=long, ignore_padding=True)
    m = s.mask_half  # 80 x 80, 2 source px per cell, y_half = (y + 16) / 2: the image spans rows 8..71
    assert not m[14:32, 11:34].any() and not m[14:37, 51:69].any()
    assert m[40:70, 5:75].all()
    assert not m[:7].any() and not m[73:].any()  # padding above and below the image
    padded = load_sample(ds, 0, input_size=160, training=False, augment=long, ignore_padding=False)
    assert padded.mask_half[:7].all()


# --- datasets of other shapes -----------------------------------------------------------------


def test_custom_14_keypoint_dataset_end_to_end(tmp_path):
    specs = [
        {"size": (180, 140), "people": [person({0: (50, 40), 1: (80, 42), 12: (65, 20), 13: (65, 30)}, 14)]},
        {
            "size": (140, 180),
            "people": [person({6: (60, 100), 7: (80, 100)}, 14), person({12: (30, 30)}, 14)],
        },
    ]
    skeleton = [[13, 14], [14, 1], [14, 2]]
    ann, images = write_dataset(tmp_path, specs, names=CROWDPOSE_NAMES, skeleton=skeleton)
    ds = make_dataset(ann, images, input_size=96, batch_size=2, seed=1, num_joints=14)
    out_images, t = _first(ds)
    assert out_images.shape == (2, 96, 96, 3)
    assert t["heatmaps_quarter"].shape == (2, 24, 24, 14) and t["heatmaps_half"].shape == (2, 48, 48, 14)
    assert t["joints"].shape == (2, 30, 14, 2)
    assert t["heatmaps_half"].max() == 1.0 and t["joints"][..., 1].sum() > 0
    reader = CocoKeypoints(ann, images)
    assert reader.flip_index == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13]
    assert reader.skeleton == [(12, 13), (13, 0), (13, 1)]
    with pytest.raises(DatasetError, match="expected 17"):
        make_dataset(ann, images, input_size=96, batch_size=2, num_joints=17)


def test_seed_and_epoch_fix_order_and_augmentation(tmp_path):
    ann, images = _disc_dataset(tmp_path, count=8)
    kw = dict(input_size=64, batch_size=2, seed=5)
    a = [x.numpy() for x, _ in make_dataset(ann, images, epoch=2, **kw)]
    b = [x.numpy() for x, _ in make_dataset(ann, images, epoch=2, **kw)]
    c = [x.numpy() for x, _ in make_dataset(ann, images, epoch=3, **kw)]
    assert len(a) == 4 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    resumed = [x.numpy() for x, _ in make_dataset(ann, images, epoch=2, **kw).skip(2)]
    assert all(np.array_equal(x, y) for x, y in zip(resumed, a[2:]))
    # Two passes with epochs=2 are epochs 2 and 3.
    both = [x.numpy() for x, _ in make_dataset(ann, images, epoch=2, epochs=2, **kw)]
    assert all(np.array_equal(x, y) for x, y in zip(both, a + c))
    assert make_dataset(ann, images, epochs=2, **kw).cardinality().numpy() == 8


def test_eval_mode_has_no_augmentation_and_keeps_partial_batches(tmp_path):
    ann, images = _disc_dataset(tmp_path, count=3)
    ds = make_dataset(ann, images, input_size=64, batch_size=2, training=False)
    batches = [x.numpy() for x, _ in ds]
    assert [len(x) for x in batches] == [2, 1]
    reader = CocoKeypoints(ann, images)
    for k, x in enumerate(np.concatenate(batches)):
        np.testing.assert_array_equal(x, load_sample(reader, k, input_size=64, params=AffineParams()).image)


# --- bad input --------------------------------------------------------------------------------


def _three_images(tmp_path, **first):
    specs = [{"size": (120, 100), "people": [person({0: (40 + 10 * k, 50)}, 17)]} for k in range(3)]
    specs[0].update(first)
    return write_dataset(tmp_path, specs)


def test_missing_image_file_is_named_or_skipped(tmp_path):
    ann, images = _three_images(tmp_path, write=False)
    with pytest.raises(DatasetError, match=r"image id 1 \(.*000000\.jpg\): image file not found"):
        CocoKeypoints(ann, images)
    with pytest.raises(FileNotFoundError, match=r"000000\.jpg.*image id 1"):
        CocoKeypoints(ann, images, validate_images="off")
    log = SkipLog()
    ds = CocoKeypoints(ann, images, skip_invalid=True, skip_log=log)
    assert len(ds) == 2 and log.count == 1 and "000000.jpg" in log.report()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_and_truncated_jpegs_are_found_before_training(tmp_path, damage):
    ann, images = _three_images(tmp_path)
    path = images / "000001.jpg"
    data = path.read_bytes()
    path.write_bytes(b"not an image" * 50 if damage == "garbage" else data[: len(data) // 2])
    reason = "not a readable image file" if damage == "garbage" else "truncated JPEG"
    with pytest.raises(DatasetError, match=rf"image id 2 \(.*000001\.jpg\): .*{reason}"):
        make_dataset(ann, images, input_size=64, batch_size=1, training=False)
    # Unchecked (or damaged after the check), the pipeline still names the file mid-run.
    ds = make_dataset(ann, images, input_size=64, batch_size=1, training=False, validate_images="off")
    with pytest.raises(tf.errors.OpError, match=r"000001\.jpg \(image id 2\)"):
        list(ds)


def test_skip_invalid_skips_counts_and_reports_at_the_end(tmp_path, caplog):
    ann, images = _three_images(tmp_path)
    (images / "000001.jpg").write_bytes(b"garbage")
    data = (images / "000002.jpg").read_bytes()
    (images / "000002.jpg").write_bytes(data[:-300])
    with pytest.raises(DatasetError, match=r"image id 2 .*\(and 1 more problem\(s\)\)"):
        CocoKeypoints(ann, images, require_annotations=False)
    log = SkipLog()
    with caplog.at_level(logging.WARNING, logger="keras_ehrnet.data"):
        ds = make_dataset(
            ann,
            images,
            input_size=64,
            batch_size=1,
            training=False,
            skip_invalid=True,
            skip_log=log,
            epochs=2,
            validate_images="off",  # the pipeline's own skipping, for files that break mid-run
        )
        batches = list(ds)
    assert len(batches) == 2  # the good image, once per pass
    assert log.count == 2 and log.events == 4 and {e[0] for e in log.entries} == {2, 3}
    assert "truncated JPEG" in log.report() and "cannot decode" in log.report()
    assert "2 sample(s) skipped" in caplog.text
    checked_log = SkipLog()
    ds = make_dataset(
        ann, images, input_size=64, batch_size=1, training=False, skip_invalid=True, skip_log=checked_log
    )
    assert len(list(ds)) == 1 and checked_log.count == 2 and checked_log.events == 2


def test_wrong_keypoint_count_names_the_annotation(tmp_path):
    bad = person({0: (10, 10)}, 17)
    bad["keypoints"] = bad["keypoints"][:-3]
    ann, images = _three_images(tmp_path, people=[bad])
    with pytest.raises(DatasetError, match=r"image id 1 annotation id 1 .*48 keypoint values, expected 51"):
        CocoKeypoints(ann, images)
    log = SkipLog()
    assert len(CocoKeypoints(ann, images, skip_invalid=True, skip_log=log)) == 2 and log.count == 1


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    gray = np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (100, 1))
    rgba = np.zeros((100, 120, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 255  # red in OpenCV's BGRA order
    specs = [
        {"size": (120, 100), "people": [person({0: (30, 30)}, 17)], "pixels": gray},
        {"size": (120, 100), "people": [person({0: (30, 30)}, 17)], "pixels": rgba, "file_name": "rgba.png"},
    ]
    ann, images = write_dataset(tmp_path, specs)
    out, _ = _first(make_dataset(ann, images, input_size=64, batch_size=2, training=False))
    centre = out[:, 20:44, 20:44]
    assert np.array_equal(centre[0, ..., 0], centre[0, ..., 1]) and np.array_equal(
        centre[0, ..., 0], centre[0, ..., 2]
    )
    assert centre[0, ..., 0].std() > 10
    np.testing.assert_array_equal(centre[1].reshape(-1, 3)[0], [200, 0, 0])


def test_wrong_image_size_is_named(tmp_path):
    ann, images = _three_images(tmp_path, pixels=np.zeros((90, 120, 3), np.uint8))
    with pytest.raises(
        DatasetError, match=r"image id 1 .*000000\.jpg\): image is 120x90 but its annotation says 120x100"
    ):
        make_dataset(ann, images, input_size=64, batch_size=1, training=False)
    with pytest.raises(
        tf.errors.OpError, match=r"000000\.jpg \(image id 1\) is 120x90 but its annotation says 120x100"
    ):
        list(make_dataset(ann, images, input_size=64, batch_size=1, training=False, validate_images="off"))


def test_keypoints_outside_the_image_and_crop_are_dropped(tmp_path):
    kp = person({0: (-30, 50), 1: (60, 50), 2: (500, 50)}, 17)
    ann, images = _three_images(tmp_path, people=[kp])
    _, t = _first(make_dataset(ann, images, input_size=64, batch_size=3, training=False))
    # Eval crop: short side 100 -> 64 px, centred, so x in [10, 110) is in view.
    assert t["joints"][0, 0, :3, 1].tolist() == [0, 1, 0]
    assert t["heatmaps_half"][0, ..., 1].max() == 1 and not t["heatmaps_half"][0, ..., [0, 2]].any()


def test_images_without_people(tmp_path):
    specs = [{"size": (120, 100), "people": []}, {"size": (120, 100), "people": [person({0: (60, 50)}, 17)]}]
    ann, images = write_dataset(tmp_path, specs)
    assert CocoKeypoints(ann, images).image_ids == [2]
    _, t = _first(make_dataset(ann, images, input_size=64, batch_size=2, training=False, shuffle=False))
    assert not t["heatmaps_quarter"][0].any() and not t["joints"][0].any() and t["mask_quarter"][0].all()
    assert t["heatmaps_quarter"][1].max() == 1
    ann2, images2 = write_dataset(tmp_path / "none", [{"size": (120, 100), "people": []}])
    with pytest.raises(DatasetError, match="no images with annotated people"):
        make_dataset(ann2, images2, input_size=64, batch_size=1)


@pytest.mark.parametrize("content", ["", "{}", '{"images": [], "annotations": [], "categories": []}'])
def test_empty_annotation_files_are_named(tmp_path, content):
    ann = tmp_path / "empty.json"
    ann.write_text(content)
    with pytest.raises(DatasetError, match="empty.json"):
        make_dataset(ann, tmp_path, input_size=64, batch_size=1)


# --- the embedded sample and the programs -----------------------------------------------------


def test_sample_dataset_is_small_and_useful():
    ann, images = sample_dataset()
    files = [ann, *images.iterdir(), ann.parent / "SOURCE.md"]
    assert all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in files) <= 2_000_000
    raw = json.loads(ann.read_text())
    with_people = {a["image_id"] for a in raw["annotations"] if a["num_keypoints"] > 0}
    assert 8 <= len(with_people) <= 12 and any(a["iscrowd"] for a in raw["annotations"])
    assert {i["file_name"] for i in raw["images"]} == {p.name for p in images.iterdir()}
    ds = CocoKeypoints(ann, images)
    assert len(ds) == len(raw["images"]) and all(r.num_people for r in ds)


def test_show_targets_writes_panels(tmp_path):
    from training.show_targets import main

    ann, images = sample_dataset()
    assert (
        main(
            [
                "--ann",
                str(ann),
                "--images",
                str(images),
                "--input-size",
                "128",
                "--out",
                str(tmp_path),
                "--n",
                "2",
            ]
        )
        == 0
    )
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    panel = cv2.imread(str(pngs[0]))
    assert panel.shape == (256, 256, 3)
    # The mask panel paints the padding and ignored regions red; the image panel does not.
    mask, plain = panel[128:, 128:].astype(int), panel[128:, :128].astype(int)
    assert ((mask[..., 2] - mask[..., 1]) > 100).mean() > ((plain[..., 2] - plain[..., 1]) > 100).mean()


def test_benchmark_data_program_reports_a_rate(tmp_path, capsys):
    from evaluation.benchmark.data import main

    ann, images = sample_dataset()
    out = tmp_path / "bench.json"
    argv = ["--ann", str(ann), "--images", str(images), "--input-size", "128", "--batch-size", "2"]
    assert main([*argv, "--batches", "3", "--reference", str(tmp_path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ours"]["images_per_second"] > 0 and result["ours"]["cores"] >= 1
    assert result["reference"].startswith("skipped") and "not a checkout" in result["reference"]
    assert "img/s" in capsys.readouterr().out
