"""Predictor: the same pre-processing and decoding over any runtime, bad inputs, files and videos."""

import json

import cv2
import numpy as np
import pytest

from keras_ehrnet.inference.drawing import draw_people
from keras_ehrnet.inference.images import ImageReadError, read_image, to_rgb_uint8
from keras_ehrnet.inference.oracle import mirror_keypoints, oracle_maps, synthetic_crowd
from keras_ehrnet.inference.predictor import Predictor, predict_files
from keras_ehrnet.inference.transforms import apply_affine, make_test_plan
from keras_ehrnet.inference.video import read_json_lines
from keras_ehrnet.keypoints import COCO_FLIP_INDEX

IMAGE_SIZE = (240, 320)


class SceneRunner:
    """A stand-in network that 'sees' people at known image positions: it returns the ideal outputs
    for them at whatever input it gets, so the predictor's resize, flip and mapping are exercised."""

    name = "scene"
    num_joints = 17

    def __init__(
        self, keypoints, image_size, input_size, fixed_input_size=None, max_batch=None, scales=(1.0,)
    ):
        self.keypoints = np.asarray(keypoints, np.float64)
        self.image_size = image_size
        self.input_size = input_size
        self.fixed_input_size = fixed_input_size
        self.max_batch = max_batch
        self.scales = scales
        self.calls = []
        self.last = None

    def __call__(self, images):
        images = np.asarray(images)
        self.calls.append(images.shape)
        if self.max_batch and len(images) > self.max_batch:
            raise ValueError("this artefact takes one image at a time")
        plan = make_test_plan(
            self.image_size, self.input_size, self.scales, fixed_input_size=self.fixed_input_size
        )
        h, w = images.shape[1:3]
        (entry,) = [e for e in plan.scales if e.size == (h, w)]
        kp = self.keypoints.copy()
        kp[..., :2] = apply_affine(kp[..., :2], entry.affine)
        mirrored = mirror_keypoints(kp, w, COCO_FLIP_INDEX)
        if len(images) == 2:  # flip test: the second image must be the mirrored first one
            np.testing.assert_array_equal(images[1], images[0][:, ::-1])
            outs = [oracle_maps(kp, (h, w)), oracle_maps(mirrored, (h, w))]
        else:  # one at a time: the mirrored image follows the plain one
            flipped = self.last is not None and np.array_equal(images[0], self.last[:, ::-1])
            outs = [oracle_maps(mirrored if flipped else kp, (h, w))]
            self.last = None if flipped else images[0]
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])


def scene(num_people=2, seed=0):
    anns = synthetic_crowd(num_people, IMAGE_SIZE, seed=seed)
    return np.stack([np.reshape(a["keypoints"], (17, 3)) for a in anns]) if anns else np.zeros((0, 17, 3))


def assert_found(people, truth, tolerance):
    assert len(people) == len(truth)
    for person in truth:
        err = min(np.abs(p.keypoints[:, :2] - person[:, :2]).max() for p in people)
        assert err <= tolerance


@pytest.mark.parametrize(
    "fixed, max_batch, flip",
    [(None, None, True), (None, None, False), ((256, 256), None, True), ((192, 320), 1, True)],
)
def test_predictor_finds_known_people_through_any_runner(fixed, max_batch, flip):
    truth = scene()
    runner = SceneRunner(truth, IMAGE_SIZE, 256, fixed_input_size=fixed, max_batch=max_batch)
    predictor = Predictor(runner, input_size=256, flip=flip)
    image = np.random.default_rng(2).integers(0, 255, (*IMAGE_SIZE, 3), dtype=np.uint8)
    people = predictor.predict(image)
    k = predictor.plan(IMAGE_SIZE).base_affine[0, 0]
    assert_found(people, truth, 4 / k)  # within one R/4 output pixel
    for p in people:
        assert p.keypoints.shape == (17, 3) and p.score > 0.5
        x0, y0, x1, y1 = p.box
        assert x0 <= p.keypoints[:, 0].min() + 1e-3 and x1 >= p.keypoints[:, 0].max() - 1e-3
    # the timing of every stage is kept for reports
    assert {"preprocess", "network", "decode"} <= set(predictor.last_timings)
    if max_batch:  # an artefact that takes one image at a time is called one image at a time
        assert runner.calls[-1][0] == 1


def test_multi_scale_prediction():
    truth = scene(3, seed=7)
    scales = (0.5, 1.0, 1.5)
    runner = SceneRunner(truth, IMAGE_SIZE, 256, scales=scales)
    predictor = Predictor(runner, input_size=256, scales=scales)
    people = predictor.predict(np.zeros((*IMAGE_SIZE, 3), np.uint8))
    sizes = sorted({shape[1:3] for shape in runner.calls})
    assert sizes == [(128, 192), (256, 384), (384, 576)]  # every scale, short side R·s, 64-aligned
    assert_found(people, truth, 4 / predictor.plan(IMAGE_SIZE).base_affine[0, 0])


def test_a_fixed_input_size_letterboxes_a_model_that_takes_any_size():
    """input_size=(H, W) runs a model that takes any size exactly as its export at H×W would run."""
    truth = scene(3, seed=4)
    scripted = SceneRunner(truth, IMAGE_SIZE, 256, fixed_input_size=(192, 320))

    class AnySize:  # a Keras-like runner that does not fix its input size
        name, num_joints, fixed_input_size = "any", 17, None

        def __call__(self, images):
            return scripted(images)

    predictor = Predictor(AnySize(), input_size=(192, 320))
    people = predictor.predict(np.zeros((*IMAGE_SIZE, 3), np.uint8))
    assert {shape[1:3] for shape in scripted.calls} == {(192, 320)}
    assert predictor.input_size == 192 and predictor.fixed_input_size == (192, 320)
    assert_found(people, truth, 4 / predictor.plan(IMAGE_SIZE).base_affine[0, 0])
    # a size the network cannot take, or one an exported artefact was not built for, is refused
    with pytest.raises(ValueError, match="multiples of 32"):
        Predictor(AnySize(), input_size=(200, 320))
    fixed = SceneRunner(truth, IMAGE_SIZE, 256, fixed_input_size=(256, 256))
    with pytest.raises(ValueError, match="takes only 256x256 inputs; it cannot be run at 192x320"):
        Predictor(fixed, input_size=(192, 320))


def test_input_size_on_the_command_line():
    import argparse

    from keras_ehrnet.inference.transforms import parse_input_size

    assert parse_input_size("384") == 384
    assert parse_input_size("192X288") == (192, 288)
    for bad in ("192x", "1x2x3", "big", "0", "-5x64"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected R or HxW"):
            parse_input_size(bad)


def test_multi_scale_on_a_fixed_size_artefact_is_refused():
    runner = SceneRunner(scene(), IMAGE_SIZE, 256, fixed_input_size=(256, 256))
    with pytest.raises(ValueError, match="fixed at 256x256"):
        Predictor(runner, scales=(0.5, 1.0))


def test_images_of_any_kind():
    truth = scene(0)
    predictor = Predictor(SceneRunner(truth, IMAGE_SIZE, 256), input_size=256)
    base = np.random.default_rng(0).integers(0, 255, (*IMAGE_SIZE, 3), dtype=np.uint8)
    variants = {
        "gray": base[..., 0],
        "gray1": base[..., :1],
        "rgba": np.concatenate([base, np.full((*IMAGE_SIZE, 1), 255, np.uint8)], axis=-1),
        "float": base.astype(np.float32),
        "uint16": base.astype(np.uint16) * 257,
    }
    for name, image in variants.items():
        rgb = to_rgb_uint8(image)
        assert rgb.shape == (*IMAGE_SIZE, 3) and rgb.dtype == np.uint8, name
        assert predictor.predict(image) == []
    np.testing.assert_array_equal(to_rgb_uint8(variants["uint16"]), base)
    np.testing.assert_array_equal(to_rgb_uint8(variants["rgba"]), base)
    # tiny images work (upscaled), any size
    for size in ((1, 1), (3, 5), (17, 9)):
        tiny = Predictor(SceneRunner(np.zeros((0, 17, 3)), size, 256), input_size=256)
        assert tiny.predict(np.zeros((*size, 3), np.uint8)) == []
    # a very large image is brought down to the input size like any other
    huge = Predictor(SceneRunner(np.zeros((0, 17, 3)), (3000, 4000), 256), input_size=256)
    assert huge.predict(np.zeros((3000, 4000, 3), np.uint8)) == []
    assert huge.plan((3000, 4000)).base_size == (256, 384)
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        predictor.predict(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match="aspect ratio"):
        predictor.predict(np.zeros((10, 5000, 3), np.uint8))


def test_model_files_of_the_wrong_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        Predictor(tmp_path / "missing.keras")
    bad_onnx = tmp_path / "model.onnx"
    bad_onnx.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="model.onnx"):
        Predictor(bad_onnx)
    text = tmp_path / "model.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="model.txt"):
        Predictor(text)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ValueError, match="SavedModel"):
        Predictor(folder)
    with pytest.raises(TypeError, match="keras.Model"):
        Predictor(42)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        read_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG this is not an image")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(junk)
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, -1))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 200  # BGRA: red
    rgba[..., 3] = 255
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert (read_image(tmp_path / "rgba.png")[..., 0] == 200).all()


def test_predict_files_writes_json_drawings_and_video(tmp_path):
    truth = scene(2, seed=4)
    predictor = Predictor(SceneRunner(truth, IMAGE_SIZE, 256), input_size=256, flip=False)
    folder = tmp_path / "in"
    folder.mkdir()
    image = np.full((*IMAGE_SIZE, 3), 90, np.uint8)
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(folder / name), image)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, IMAGE_SIZE[::-1])
    for _ in range(3):
        writer.write(image)
    writer.release()
    out = tmp_path / "out"
    summary = predict_files(predictor, [folder, video, tmp_path / "missing.jpg"], out, progress=False)
    skipped = {s["input"]: s["reason"] for s in summary["skipped"]}
    assert any("broken.jpg" in k for k in skipped) and any("missing.jpg" in k for k in skipped)
    assert summary["frames"] == 5 and summary["fps"] > 0
    for stem in ("a", "b"):
        payload = json.loads((out / f"{stem}.json").read_text())
        assert (payload["width"], payload["height"]) == IMAGE_SIZE[::-1]
        assert len(payload["people"]) == 2
        assert len(payload["people"][0]["keypoints"]) == 17 and payload["keypoint_names"][0] == "nose"
        drawn = cv2.imread(str(out / f"{stem}.jpg"))
        assert drawn.shape[:2] == IMAGE_SIZE and np.abs(drawn.astype(int) - 90).max() > 50
    frames = read_json_lines(out / "clip.jsonl")
    assert len(frames) == 3 and all(len(f["people"]) == 2 for f in frames)
    assert (out / "clip.mp4").stat().st_size > 0


def test_draw_people_draws_on_a_copy():
    image = np.zeros((100, 120, 3), np.uint8)
    kp = np.zeros((17, 3))
    kp[:, 0] = np.linspace(20, 100, 17)
    kp[:, 1] = np.linspace(10, 90, 17)
    kp[:, 2] = 1.0
    kp[3, 2] = 0.0  # not drawn
    drawn = draw_people(image, [{"keypoints": kp, "score": 0.9}])
    assert image.max() == 0
    assert drawn[int(kp[0, 1]), int(kp[0, 0])].max() > 0
    assert drawn[int(kp[3, 1]) + 20 :, :10].max() == 0  # far from every drawn joint
    assert draw_people(image, [kp], skeleton=[]).max() > 0
    with pytest.raises(ValueError, match="keypoints"):
        draw_people(image, [np.zeros(5)])


@pytest.fixture(scope="module")
def h4_model():
    import keras_ehrnet

    model = keras_ehrnet.build_model("H-4")
    rng = np.random.default_rng(0)
    for name in ("final_quarter", "final_half"):  # non-trivial outputs for the comparison below
        bias = model.get_layer(name).bias
        bias.assign(rng.normal(0, 0.3, bias.shape).astype("float32"))
    return model


def test_keras_model_and_its_file_predict_alike(h4_model, tmp_path):
    in_memory = Predictor(h4_model, input_size=64)
    assert Predictor(h4_model).input_size == 384  # the level's native resolution by default
    path = tmp_path / "h4.keras"
    h4_model.save(path)
    from_file = Predictor(path, input_size=64)
    image = np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    plan = in_memory.plan(image.shape[:2])
    a = in_memory.network_outputs(image, plan)
    b = from_file.network_outputs(image, plan)
    np.testing.assert_allclose(a[0].quarter, b[0].quarter, atol=1e-5)
    np.testing.assert_allclose(a[0].half_flip, b[0].half_flip, atol=1e-5)
    ra, rb = in_memory.predict_result(image), from_file.predict_result(image)
    np.testing.assert_allclose(ra.keypoints, rb.keypoints, atol=1e-3)


def test_predict_program_smoke(tmp_path):
    from evaluation.predict import main

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.jpg"), np.full((50, 70, 3), 128, np.uint8))
    out = tmp_path / "out"
    assert main(["--level", "H-4", "--input-size", "64", str(folder), "--out", str(out), "--quiet"]) == 0
    payload = json.loads((out / "x.json").read_text())
    assert (payload["width"], payload["height"]) == (70, 50) and isinstance(payload["people"], list)
    assert (out / "x.jpg").exists()
    assert json.loads((out / "summary.json").read_text())["frames"] == 1
