"""What the public keypoint datasets agree on: keypoint names, OKS constants, missing fields.

One home for per-dataset metadata (as MMPose's `dataset_info` configs), looked up from an
annotation file's keypoint names, so COCO, OCHuman (COCO's 17 keypoints), CrowdPose and AI
Challenger (14 keypoints each, in different orders) are scored with their own OKS constants
without any option. Left/right flip pairs are not listed: every name here says its side, and
`coco.infer_flip_index` reads them from the names.

Sources: COCO's `cocoeval.py` (17 sigmas); CrowdPose's own `crowdposetools/cocoeval.py`
(Jeff-sjtu/CrowdPose: 14 sigmas, and OKS areas of bbox width × height × 0.53, as its
annotations carry no `area`); MMPose's `configs/_base_/datasets/aic.py` (AI Challenger's
sigmas, from the challenge's evaluation script; its COCO-format files carry no `area` either).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

COCO_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# Ground truth without an `area` gets bbox width × height × this for OKS, as CrowdPose's
# official evaluation (and xtcocotools with use_area=False) computes it.
BBOX_AREA_FACTOR = 0.53


@dataclass(frozen=True)
class DatasetInfo:
    """One public keypoint set: its names in order and its per-keypoint OKS constants."""

    name: str
    keypoints: tuple[str, ...]
    sigmas: tuple[float, ...]
    aliases: tuple[tuple[str, ...], ...] = ()  # other spellings of the same keypoint list

    @property
    def num_joints(self) -> int:
        return len(self.keypoints)

    def matches(self, names: Sequence[str]) -> bool:
        """True if `names` (any case) is this set's keypoint list or one of its aliases."""
        lowered = tuple(str(n).lower() for n in names)
        return lowered == self.keypoints or lowered in self.aliases


COCO = DatasetInfo(
    "coco",
    COCO_NAMES,
    (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
     0.087, 0.087, 0.089, 0.089),
)  # fmt: skip
_LIMBS = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
CROWDPOSE = DatasetInfo(
    "crowdpose",
    (*_LIMBS, "head", "neck"),  # the official files' names; MMPose calls the head "top_head"
    (0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
     0.079, 0.079),
    aliases=((*_LIMBS, "top_head", "neck"),),
)  # fmt: skip
AIC = DatasetInfo(
    "aic",
    ("right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
     "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
     "head_top", "neck"),
    (0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642,
     0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173),
)  # fmt: skip

KNOWN_DATASETS: tuple[DatasetInfo, ...] = (COCO, CROWDPOSE, AIC)  # OCHuman uses COCO's keypoints


def find_dataset_info(names: Sequence[str]) -> DatasetInfo | None:
    """The known dataset whose keypoint list `names` is, or None for a keypoint set of your own."""
    return next((info for info in KNOWN_DATASETS if info.matches(names)), None)
