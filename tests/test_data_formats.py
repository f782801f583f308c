"""The public keypoint datasets' own files (COCO, CrowdPose, OCHuman, AI Challenger) train and
evaluate as they come: skeletons for another keypoint set, missing `area`/`segmentation`,
keypoint counts taken from the data, each dataset's OKS constants."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from public_formats import FORMATS, write_public_format
from test_training import tiny_model

from keras_ehrnet.data import CocoKeypoints, DatasetError
from keras_ehrnet.data.coco import keypoint_set
from keras_ehrnet.keypoints import AIC, COCO, CROWDPOSE, find_dataset_info, parse_skeleton
from keras_ehrnet.metrics.coco import coco_summary, evaluate_results_file, load_coco
from keras_ehrnet.train import Trainer, config_from_dict
from keras_ehrnet.train.config import resolve_num_joints

JOINTS = {"coco": 17, "crowdpose": 14, "ochuman": 17, "aic": 14}
SIGMAS = {"coco": COCO.sigmas, "crowdpose": CROWDPOSE.sigmas, "ochuman": COCO.sigmas, "aic": AIC.sigmas}


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    return {kind: write_public_format(kind, root) for kind in FORMATS}


def test_the_files_keep_their_datasets_quirks(formats):
    crowdpose = json.loads(formats["crowdpose"][0].read_text())
    assert all("crowdIndex" in i for i in crowdpose["images"])
    assert not any("area" in a or "segmentation" in a for a in crowdpose["annotations"])
    assert max(max(link) for link in crowdpose["categories"][0]["skeleton"]) == 17  # COCO's, for 14
    aic = json.loads(formats["aic"][0].read_text())
    assert aic["categories"][0]["keypoints"][:3] == ["right_shoulder", "right_elbow", "right_wrist"]
    assert not any("area" in a for a in aic["annotations"])
    ochuman = json.loads(formats["ochuman"][0].read_text())
    assert any(a["segmentation"] == [] for a in ochuman["annotations"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", FORMATS)
def test_each_public_file_trains_one_epoch_and_evaluates(formats, kind, tmp_path, caplog):
    ann, images = formats[kind]
    said: list[str] = []
    values = {
        "data": {"train_ann": str(ann), "train_images": str(images), "val_ann": str(ann)},
        "train": {"epochs": 1, "steps_per_epoch": 2, "workdir": str(tmp_path), "strategy": "default"},
        "logging": {"progress": False, "images_every_steps": 0},
        "validation": {"every_epochs": 1, "flip": False},
    }
    values["data"].update({"val_images": str(images), "input_size": 64, "batch_size": 2})
    config = resolve_num_joints(config_from_dict(values), announce=said.append)
    j = JOINTS[kind]
    assert config.model.num_joints == j and said == [
        f"model.num_joints: {j} (from {ann}, {said[0].split(', ')[-1]}"
    ]
    with caplog.at_level(logging.WARNING):
        result = Trainer(config, model_fn=lambda: tiny_model(j)).fit()
    assert result.epoch == 1 and result.step == 2
    (record,) = result.validation
    assert np.isfinite(record["AP"]) and record["images"] == 10 and record["skipped"] == 0
    assert "0.0669" not in caplog.text  # each dataset is scored with its own OKS constants
    skeleton_warnings = [r for r in caplog.records if "skeleton links" in r.getMessage()]
    assert len(skeleton_warnings) == (1 if kind == "crowdpose" else 0)


@pytest.mark.parametrize("kind", FORMATS)
def test_ground_truth_scores_one_without_area_fields(formats, kind, tmp_path):
    """pycocotools needs `area` (CrowdPose and AIC have none): it is derived from the box."""
    ann, _ = formats[kind]
    data = json.loads(ann.read_text())
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in data["annotations"]
        if a["num_keypoints"] > 0
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert evaluate_results_file(ann, path, verbose=False)["AP"] == pytest.approx(1.0)
    coco = load_coco(ann)
    assert all(a["area"] > 0 for a in coco.anns.values() if a["num_keypoints"])
    shifted = [
        dict(r, keypoints=[v + 4.0 if i % 3 == 0 else v for i, v in enumerate(r["keypoints"])])
        for r in results
    ]
    names = data["categories"][0]["keypoints"]
    own = coco_summary(coco, shifted, keypoint_names=names, verbose=False)["AP"]
    given = coco_summary(coco, shifted, oks_sigmas=SIGMAS[kind], verbose=False)["AP"]
    assert own == given and own < 1.0


def test_known_keypoint_lists_are_recognised():
    assert find_dataset_info(COCO.keypoints) is COCO
    assert find_dataset_info([n.upper() for n in CROWDPOSE.keypoints]) is CROWDPOSE
    assert find_dataset_info([*CROWDPOSE.keypoints[:12], "top_head", "neck"]) is CROWDPOSE  # MMPose's name
    assert find_dataset_info(AIC.keypoints) is AIC and find_dataset_info(CROWDPOSE.keypoints[::-1]) is None
    for info in (COCO, CROWDPOSE, AIC):
        assert len(info.sigmas) == info.num_joints


def test_skeleton_links_naming_no_keypoint_are_dropped_with_one_warning(formats, caplog):
    ann, images = formats["crowdpose"]
    with caplog.at_level(logging.WARNING, logger="keras_ehrnet.data"):
        spec = keypoint_set(ann)
    warnings = [r.getMessage() for r in caplog.records if "skeleton" in r.getMessage()]
    assert len(warnings) == 1 and "3 of 19 skeleton links" in warnings[0] and str(ann) in warnings[0]
    assert len(spec.skeleton) == 16 and all(0 <= a < 14 and 0 <= b < 14 for a, b in spec.skeleton)
    assert len(CocoKeypoints(ann, images).skeleton) == 16
    assert parse_skeleton([[1, 2], "x", [3], [2, 2]], 3) == ((0, 1),)


def test_a_given_keypoint_count_that_disagrees_names_both_and_the_file(formats, tmp_path, capsys):
    from training.__main__ import main

    ann, images = formats["crowdpose"]
    argv = ["--train-ann", str(ann), "--train-images", str(images), "--workdir", str(tmp_path)]
    assert main([*argv, "--num-joints", "17", "--input-size", "64", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(ann) in err and "14 keypoints, expected 17" in err
    config = config_from_dict(
        {"model": {"num_joints": 17}, "data": {"train_ann": str(ann), "train_images": "x"}}
    )
    assert resolve_num_joints(config).model.num_joints == 17  # given: kept, checked against the data later


def test_no_training_data_means_cocos_seventeen(capsys):
    assert resolve_num_joints(config_from_dict({})).model.num_joints == 17
    assert "model.num_joints: 17" in capsys.readouterr().out


def test_a_file_without_a_keypoint_category_stops_in_one_line(formats, tmp_path, capsys):
    from training.__main__ import main

    ann, images = formats["aic"]
    broken = tmp_path / "aic.json"
    data = json.loads(ann.read_text())
    data["categories"] = []
    broken.write_text(json.dumps(data))
    argv = ["--train-images", str(images), "--workdir", str(tmp_path / "w"), "--input-size", "64"]
    assert main(["--train-ann", str(broken), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(broken) in err and "no category with a 'keypoints' list" in err
    with pytest.raises(DatasetError, match="expected 17"):
        CocoKeypoints(ann, images, num_joints=17)
