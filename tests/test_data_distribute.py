"""Sharding and per-replica batching under tf.distribute."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT
from synthetic_coco import person, write_dataset

from keras_ehrnet.data import CocoKeypoints, build_dataset, make_dataset


def _numbered_dataset(root, count):
    """Images filled with grey level 20 * (k + 1), so an output pixel tells which image it is."""
    specs = []
    for k in range(count):
        pixels = np.full((96, 128, 3), 20 * (k + 1), np.uint8)
        specs.append({"size": (128, 96), "people": [person({0: (64, 48)}, 17)], "pixels": pixels})
    return write_dataset(root, specs)


def _which(images):
    return [round(float(v) / 20) - 1 for v in np.asarray(images)[:, 32, 32, 0]]


def test_input_pipelines_read_disjoint_equal_shards(tmp_path):
    ann, images = _numbered_dataset(tmp_path, 7)
    ds = CocoKeypoints(ann, images)
    seen = []
    for pipeline in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=4
        )
        # Global batch 4 over 4 replicas: each replica takes batches of one.
        batches = list(build_dataset(ds, input_size=64, batch_size=4, training=False, input_context=ctx))
        assert all(x.shape[0] == 1 for x, _ in batches)
        seen.append([k for x, _ in batches for k in _which(x)])
    assert seen == [[0, 2, 4], [1, 3, 5]]
    shuffled = []
    for pipeline in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        batches = build_dataset(
            ds, input_size=64, batch_size=2, seed=pipeline, input_context=ctx, augment=None
        )
        shuffled.append({k for x, _ in batches for k in _which(x)})
    assert len(shuffled[0]) == len(shuffled[1]) == 3 and not shuffled[0] & shuffled[1]


_MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import pytest
from keras_ehrnet.data import make_dataset
from keras_ehrnet.data.augment import AugmentConfig

ann, images = sys.argv[1], sys.argv[2]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
kw = dict(input_size=64, batch_size=4, seed=3, augment=AugmentConfig(max_rotation=0, max_translate=0))
steps = []
for images_, targets in make_dataset(ann, images, strategy=strategy, **kw):
    per_replica = strategy.experimental_local_results(images_)
    heat = strategy.experimental_local_results(targets["heatmaps_half"])
    sums = strategy.experimental_local_results(strategy.run(lambda x: tf.reduce_sum(x[:, :, :, 0]), args=(images_,)))
    steps.append({
        "devices": [v.device for v in per_replica],
        "shapes": [list(v.shape) for v in per_replica],
        "heat_shapes": [list(v.shape) for v in heat],
        "pixels": [v.numpy().tolist() for v in per_replica],
        "sums": [float(s) for s in sums],
    })
plain = [x.numpy().tolist() for x, _ in make_dataset(ann, images, **kw)]
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "steps": steps, "plain": plain}))
"""


def test_mirrored_strategy_gives_each_replica_its_part_of_the_global_batch(tmp_path):
    ann, images = _numbered_dataset(tmp_path, 8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(ann), str(images)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and len(out["steps"]) == 2
    for step, plain in zip(out["steps"], out["plain"]):
        assert [d.split("/")[-1] for d in step["devices"]] == ["device:CPU:0", "device:CPU:1"]
        assert step["shapes"] == [[2, 64, 64, 3]] * 2 and step["heat_shapes"] == [[2, 32, 32, 17]] * 2
        # Replica 0 gets the first half of the global batch, replica 1 the second half.
        both = np.concatenate([np.asarray(p) for p in step["pixels"]])
        np.testing.assert_array_equal(both, np.asarray(plain))
        np.testing.assert_allclose(
            step["sums"], [np.asarray(p)[..., 0].sum() for p in step["pixels"]], rtol=1e-5
        )
    firsts = [k for step in out["steps"] for p in step["pixels"] for k in _which(np.asarray(p))]
    assert sorted(firsts) == list(range(8))


def test_make_dataset_returns_a_plain_dataset_without_strategy(tmp_path):
    ann, images = _numbered_dataset(tmp_path, 2)
    assert isinstance(make_dataset(ann, images, input_size=64, batch_size=2), tf.data.Dataset)


def test_each_worker_builds_and_checks_only_its_share_of_the_records(tmp_path, monkeypatch):
    """Two workers' shards (CocoKeypoints(shard=…)) are disjoint, cover every image that can
    train, and each builds and checks about half of the records; through the pipeline they
    give the same images, augmented alike, as sharding the whole record list."""
    from keras_ehrnet.data import coco, validate

    specs = []
    for k in range(11):
        pixels = np.full((96, 128, 3), 20 * (k + 1), np.uint8)
        people = [] if k == 4 else [person({0: (64, 48)}, 17)]  # image 4 has nobody: never a record
        specs.append({"size": (128, 96), "people": people, "pixels": pixels})
    ann, images = write_dataset(tmp_path, specs)
    listed = [i["id"] for i in json.loads(ann.read_text())["images"]]
    trainable = set(listed) - {listed[4]}
    built, checked = [], []
    record = coco.CocoKeypoints._record
    monkeypatch.setattr(
        coco.CocoKeypoints, "_record", lambda self, info: built.append(info["id"]) or record(self, info)
    )
    check = validate.check_images
    for module in (validate, coco):  # coco holds its own reference
        monkeypatch.setattr(
            module,
            "check_images",
            lambda items, *a, **k: check([checked.append(i[0]) or i for i in items], *a, **k),
            raising=False,
        )

    shards = []
    for index in range(2):
        built.clear(), checked.clear()
        ds = CocoKeypoints(ann, images, shard=(index, 2))
        assert sorted(built) == sorted(checked) == sorted(ds.image_ids)  # built and checked: its share only
        assert len(built) == 5  # 10 trainable images over 2 workers, not all 11 listed
        assert ds.shard_size == 5 and (ds.shard_index, ds.num_shards) == (index, 2)
        shards.append(ds)
    a, b = (set(s.image_ids) for s in shards)
    assert not a & b and a | b == trainable

    whole = CocoKeypoints(ann, images)
    for index, ds in enumerate(shards):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=index, num_replicas_in_sync=2
        )
        kw = dict(input_size=64, batch_size=2, training=False, input_context=ctx)
        pre = [k for x, _ in build_dataset(ds, **kw) for k in _which(x)]
        late = [k for x, _ in build_dataset(whole, **kw) for k in _which(x)]
        assert pre == late and len(pre) == 5
        # augmented: each image is drawn from its place in the file, not in the shard
        kw = dict(input_size=64, batch_size=2, seed=3, shuffle=False, input_context=ctx)
        pre = [x.numpy() for x, _ in build_dataset(ds, **kw)]
        late = [x.numpy() for x, _ in build_dataset(whole, **kw)]
        assert len(pre) == len(late) == 5 and all(np.array_equal(a, b) for a, b in zip(pre, late))
        other = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=1 - index, num_replicas_in_sync=2
        )
        with pytest.raises(ValueError, match=f"shard {index} of 2"):
            build_dataset(ds, input_size=64, batch_size=2, training=False, input_context=other)
