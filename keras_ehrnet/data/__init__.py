"""Data: COCO-format keypoint datasets into a tf.data pipeline with HigherHRNet targets.

ann, images = keras_ehrnet.data.sample_dataset()
ds = keras_ehrnet.data.make_dataset(ann, images, input_size=512, batch_size=8, seed=0)
images, targets = next(iter(ds))
"""

from __future__ import annotations

from pathlib import Path

from keras_ehrnet._lazy import lazy_getattr
from keras_ehrnet.data.augment import AffineParams, AugmentConfig
from keras_ehrnet.errors import DatasetError, ImageError
from keras_ehrnet.keypoints import infer_flip_index

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


# The tf.data pipeline and the target renderers need TensorFlow, the COCO reader pycocotools:
# imported on first use (PEP 562), so `keras_ehrnet.data.validate` (which the drawing code reads
# annotations with) imports with neither.
__getattr__ = lazy_getattr(
    __name__,
    {
        "coco": ("CocoKeypoints", "ImageRecord", "SkipLog", "load_image"),
        "pipeline": ("Sample", "build_dataset", "load_sample", "make_dataset"),
        "targets": ("gaussian_heatmaps",),
    },
)


def sample_dataset() -> tuple[Path, Path]:
    """(annotation file, image folder) of the small COCO sample shipped with the package."""
    return SAMPLE_DIR / "person_keypoints_sample.json", SAMPLE_DIR / "images"


__all__ = [
    "AffineParams",
    "AugmentConfig",
    "CocoKeypoints",
    "DatasetError",
    "ImageError",
    "ImageRecord",
    "Sample",
    "SkipLog",
    "build_dataset",
    "gaussian_heatmaps",
    "infer_flip_index",
    "load_image",
    "load_sample",
    "make_dataset",
    "sample_dataset",
]
