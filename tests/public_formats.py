"""Small annotation files laid out like the public keypoint datasets' own, on real images.

Each writer takes the embedded COCO sample (10 train2017 images, `keras_ehrnet/data/sample`),
copies its images under the dataset's kind of file names and rewrites its people in the
dataset's keypoint order with the fields that dataset's file has and lacks:

* coco: the sample as it is (17 keypoints, polygons and RLE crowds, `area`).
* crowdpose: as the official `crowdpose_{train,val,test}.json`: 14 keypoints (COCO's twelve
  limb joints, then `head`, `neck`), the category still carrying COCO's 17-keypoint skeleton,
  `crowdIndex` on images, annotations without `area` or `segmentation`, no crowd regions.
* ochuman: as `ochuman_coco_format_{val,test}_range_0.00_1.00.json`: COCO's 17 keypoints and
  skeleton, polygons and `area`, no crowd regions; people whose mask was not annotated have an
  empty `segmentation`.
* aic: as MMPose's COCO-format `aic_{train,val}.json`: 14 keypoints in AI Challenger's order
  (right arm, left arm, right leg, left leg, `head_top`, `neck`), visibility already in COCO's
  0/1/2, no `area` or `segmentation`, 40-hex-digit file names.

The head joint is COCO's nose and the neck the middle of the shoulders (labelled when both
are), so the files stay faithful in structure; the people are real. Run it as a script to
write all four: `python tests/public_formats.py OUT_DIR`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keras_ehrnet.data import sample_dataset  # noqa: E402
from keras_ehrnet.keypoints import AIC, COCO_NAMES, CROWDPOSE  # noqa: E402

COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip
FORMATS = ("coco", "crowdpose", "ochuman", "aic")


def _joints(ann: dict) -> dict[str, list[float]]:
    """COCO keypoints by name, plus "head" (the nose) and "neck" (between the shoulders)."""
    k = ann["keypoints"]
    joints = {name: k[3 * i : 3 * i + 3] for i, name in enumerate(COCO_NAMES)}
    ls, rs = joints["left_shoulder"], joints["right_shoulder"]
    both = ls[2] > 0 and rs[2] > 0
    joints["neck"] = [(ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, min(ls[2], rs[2])] if both else [0, 0, 0]
    joints["head"] = joints["head_top"] = joints["nose"]
    return joints


def _remap(ann: dict, names: tuple[str, ...]) -> tuple[list[float], int]:
    joints = _joints(ann)
    flat = [float(v) for name in names for v in joints[name]]
    return flat, sum(1 for name in names if joints[name][2] > 0)


def write_public_format(kind: str, out: str | Path) -> tuple[Path, Path]:
    """Write `kind`'s annotation file and images under `out`; returns (annotation file, image folder)."""
    if kind not in FORMATS:
        raise ValueError(f"kind must be one of {FORMATS}, got {kind!r}")
    ann_file, image_dir = sample_dataset()
    data = json.loads(ann_file.read_text())
    out = Path(out) / kind
    images_out = out / "images"
    if kind == "coco":
        images_out.mkdir(parents=True, exist_ok=True)
        for info in data["images"]:
            shutil.copyfile(image_dir / info["file_name"], images_out / info["file_name"])
        path = out / "person_keypoints_train2017.json"
        path.write_text(json.dumps(data))
        return path, images_out

    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    people = [a for a in data["annotations"] if not a["iscrowd"]]  # none of the three has crowd regions
    images = copy.deepcopy(data["images"])
    if kind == "crowdpose":

        def name_of(k, info):
            return 100000 + k, f"{100000 + k}.jpg"

    elif kind == "ochuman":

        def name_of(k, info):
            return k + 1, f"{k + 1:06d}.jpg"

    else:

        def name_of(k, info):
            return k + 1, hashlib.sha1(info["file_name"].encode()).hexdigest() + ".jpg"

    new_ids = {}
    images_out.mkdir(parents=True, exist_ok=True)
    for k, info in enumerate(images):
        new_id, new_name = name_of(k, info)
        shutil.copyfile(image_dir / info["file_name"], images_out / new_name)
        new_ids[info["id"]] = new_id
        h, w = sizes[info["id"]]
        images[k] = {"file_name": new_name, "id": new_id, "height": h, "width": w}
        if kind == "crowdpose":
            images[k]["crowdIndex"] = round(0.1 * (k % 10), 2)

    names = {"crowdpose": CROWDPOSE.keypoints, "ochuman": COCO_NAMES, "aic": AIC.keypoints}[kind]
    anns = []
    for n, a in enumerate(people):
        keypoints, count = _remap(a, names)
        ann = {
            "num_keypoints": count,
            "iscrowd": 0,
            "keypoints": keypoints,
            "image_id": new_ids[a["image_id"]],
            "bbox": a["bbox"],
            "category_id": 1,
            "id": n + 1,
        }
        if kind == "ochuman":
            ann["area"] = a["area"]
            ann["segmentation"] = a["segmentation"] if n % 4 else []  # some masks not annotated
        anns.append(ann)
    category = {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(names)}
    if kind in ("crowdpose", "ochuman"):
        category["skeleton"] = COCO_SKELETON  # CrowdPose's files carry COCO's, for 17 keypoints
    else:
        position = {name: i + 1 for i, name in enumerate(names)}
        links = [("head_top", "neck"), ("neck", "right_shoulder"), ("neck", "left_shoulder")]
        category["skeleton"] = [[position[a], position[b]] for a, b in links]
    file_name = {
        "crowdpose": "crowdpose_train.json",
        "ochuman": "ochuman_coco_format_val_range_0.00_1.00.json",
        "aic": "aic_train.json",
    }[kind]
    path = out / file_name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [category]}))
    return path, images_out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/public_formats.py OUT_DIR")
    for fmt in FORMATS:
        ann, folder = write_public_format(fmt, sys.argv[1])
        print(f"{fmt:9s} --train-ann {ann} --train-images {folder}")
