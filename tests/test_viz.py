"""The comparison sheet shows ground truth beside predictions, image by image."""

import json

import cv2
import numpy as np

from keras_ehrnet.data import sample_dataset
from keras_ehrnet.inference.drawing import ground_truth_people, write_comparison


def test_ground_truth_people_keep_labelled_joints_only():
    anns = [
        {"keypoints": [10, 20, 2, 0, 0, 0, 30, 40, 1]},
        {"keypoints": [0, 0, 0] * 3},  # a crowd box or an unlabelled person: nothing to draw
    ]
    people = ground_truth_people(anns)
    assert len(people) == 1
    np.testing.assert_array_equal(people[0]["keypoints"][:, 2], [1, 0, 1])
    np.testing.assert_array_equal(people[0]["keypoints"][2, :2], [30, 40])


def test_comparison_sheet_draws_truth_and_predictions(tmp_path):
    ann_file, images = sample_dataset()
    data = json.loads(ann_file.read_text())
    keep = sorted(data["images"], key=lambda i: i["file_name"])[:2]
    ids = {i["id"] for i in keep}
    data["images"] = keep
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    small = tmp_path / "two.json"
    small.write_text(json.dumps(data))
    first, second = keep
    person = next(a for a in data["annotations"] if a["image_id"] == first["id"] and a["num_keypoints"] > 5)
    kp = np.asarray(person["keypoints"], float).reshape(-1, 3)
    predicted = {"people": [{"keypoints": kp.tolist(), "score": 0.9, "box": [0, 0, 50, 50]}]}
    (tmp_path / "first.json").write_text(json.dumps(predicted))

    panel = 200
    out = write_comparison(
        small, images, {first["file_name"]: tmp_path / "first.json"}, tmp_path / "sheet.png", panel=panel
    )
    sheet = cv2.imread(str(out))[..., ::-1]
    assert sheet.shape[1] >= 4 * panel  # two pairs side by side
    plain = cv2.imread(str(images / first["file_name"]))[..., ::-1]
    scale = panel / max(plain.shape[:2])
    plain = cv2.resize(
        plain, (round(plain.shape[1] * scale), round(plain.shape[0] * scale)), interpolation=cv2.INTER_AREA
    )
    h, w = plain.shape[:2]
    left = sheet[22 : 22 + h, :w].astype(int)
    right = sheet[22 : 22 + h, panel + 4 : panel + 4 + w].astype(int)
    # both panels of the first image carry drawings over the photo
    assert np.abs(left - plain).max() > 100 and np.abs(right - plain).max() > 100
    # the second image has no prediction: its right panel stays empty
    x0 = 2 * panel + 4 + 8 + panel + 4
    assert sheet[22 : 22 + 100, x0 : x0 + 100].max() == 0
