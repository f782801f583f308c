"""Keypoint metadata, in one place: names, left/right flip index, skeleton, OKS constants.

Per-dataset metadata (as MMPose's `dataset_info` configs) is looked up from an annotation
file's keypoint names, so COCO, OCHuman (COCO's 17 keypoints), CrowdPose and AI Challenger
(14 keypoints each, in different orders) are scored with their own OKS constants without any
option. COCO is one `DatasetInfo` like the others; its flip index, grouping order and skeleton
are the defaults of decoding, drawing and evaluation for 17 joints. Left/right flip pairs are
not listed: every name here says its side, and `infer_flip_index` reads them from the names
(`resolve_flip_index` is the one place a keypoint set's flip index is worked out).
`KeypointSet` is the keypoint set of an annotation file (`keras_ehrnet.data.coco.keypoint_set`).

Sources: COCO's `cocoeval.py` (17 sigmas); CrowdPose's own `crowdposetools/cocoeval.py`
(Jeff-sjtu/CrowdPose: 14 sigmas, and OKS areas of bbox width × height × 0.53, as its
annotations carry no `area`); MMPose's `configs/_base_/datasets/aic.py` (AI Challenger's
sigmas, from the challenge's evaluation script; its COCO-format files carry no `area` either).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from keras_ehrnet.errors import DatasetError

log = logging.getLogger("keras_ehrnet.keypoints")

COCO_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# COCO's skeleton (0-based joint indices), as in the person category of the annotations.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
# HigherHRNet's grouping order: head, shoulders, hips, then elbows, wrists, knees, ankles.
COCO_JOINT_ORDER: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)
# COCO's per-keypoint OKS constants averaged: the default for keypoint sets without their own
DEFAULT_OKS_SIGMA = 0.0669

# Ground truth without an `area` gets bbox width × height × this for OKS, as CrowdPose's
# official evaluation (and xtcocotools with use_area=False) computes it.
BBOX_AREA_FACTOR = 0.53


@dataclass(frozen=True)
class DatasetInfo:
    """One public keypoint set: its names in order, its per-keypoint OKS constants and skeleton."""

    name: str
    keypoints: tuple[str, ...]
    sigmas: tuple[float, ...]
    aliases: tuple[tuple[str, ...], ...] = ()  # other spellings of the same keypoint list
    skeleton: tuple[tuple[int, int], ...] = ()  # 0-based limbs, for drawing

    @property
    def flip_index(self) -> tuple[int, ...]:
        """Channel j of a mirrored image's output is channel flip_index[j] of the original's."""
        return tuple(infer_flip_index(self.keypoints))

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
    skeleton=COCO_SKELETON,
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


_SIDE_TOKEN = re.compile(r"(?<![a-z])(left|right|l|r)(?![a-z])")
_SWAP = {"left": "right", "right": "left", "l": "r", "r": "l"}


def infer_flip_index(names: Sequence[str]) -> list[int]:
    """Left/right permutation of the keypoints from their names.

    Sides are whole tokens: `left_eye`/`right_eye`, `eye_l`/`eye_r`, `L_knee`/`R_knee`.
    Keypoints without a side map to themselves. A name that mentions a side without a
    partner raises, since guessing would silently train mirrored joints.
    """
    lowered = [n.lower() for n in names]
    position = {n: i for i, n in enumerate(lowered)}
    if len(position) != len(names):
        raise DatasetError(f"keypoint names are not unique: {list(names)}")
    index = []
    for i, name in enumerate(lowered):
        partner = _SIDE_TOKEN.sub(lambda m: _SWAP[m.group(1)], name)
        if partner != name:
            if partner not in position:
                raise DatasetError(
                    f"keypoint {names[i]!r} names a side but {partner!r} is not a keypoint; "
                    "pass flip_pairs explicitly"
                )
            index.append(position[partner])
        elif "left" in name or "right" in name:
            raise DatasetError(
                f"cannot tell the side of keypoint {names[i]!r} from its name; pass flip_pairs explicitly"
            )
        else:
            index.append(i)
    return index


def flip_index_from_pairs(pairs: Sequence[Sequence[int | str]], names: Sequence[str]) -> list[int]:
    """Permutation of length J from left/right pairs given as 0-based indices or keypoint names."""
    j = len(names)
    lookup = {n: i for i, n in enumerate(names)}
    index = list(range(j))
    seen: set[int] = set()
    for pair in pairs:
        if len(pair) != 2:
            raise DatasetError(f"flip pair {pair!r} must have two entries")
        a, b = (lookup[p] if isinstance(p, str) and p in lookup else p for p in pair)
        for k in (a, b):
            if not isinstance(k, (int, np.integer)) or not 0 <= k < j:
                raise DatasetError(f"flip pair {pair!r}: {k!r} is not a keypoint (names: {list(names)})")
            if k in seen:
                raise DatasetError(f"flip pair {pair!r}: keypoint {k} appears in more than one pair")
            seen.add(int(k))
        index[a], index[b] = int(b), int(a)
    return index


def resolve_flip_index(
    names: Sequence[str], flip_pairs: Sequence[Sequence[int | str]] | None = None
) -> list[int]:
    """The flip index of a keypoint set: from `flip_pairs` (indices or names) if given, else from the names."""
    return flip_index_from_pairs(flip_pairs, names) if flip_pairs is not None else infer_flip_index(names)


@dataclass(frozen=True)
class KeypointSet:
    """A dataset's keypoints: names, skeleton (0-based links) and flip permutation."""

    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    flip_index: tuple[int, ...]

    @property
    def num_joints(self) -> int:
        return len(self.names)


def parse_flip_pairs(text: str) -> list[list[int | str]]:
    """Command-line flip pairs "l_eye:r_eye,3:4" → [["l_eye", "r_eye"], [3, 4]] (digits: 0-based indices)."""
    pairs: list[list[int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        sides = [side.strip() for side in item.split(":")]
        if len(sides) != 2 or not all(sides):
            raise ValueError(f"flip pair {item!r}: expected LEFT:RIGHT")
        pairs.append([int(side) if side.isdigit() else side for side in sides])
    return pairs


def parse_skeleton(links, num_joints: int, where: str | os.PathLike = "") -> tuple[tuple[int, int], ...]:
    """A category's 1-based `skeleton` links as 0-based pairs; links that name no keypoint are dropped.

    The skeleton is only drawn, so a link that names no keypoint (CrowdPose's official files
    carry COCO's 17-keypoint skeleton for their 14 keypoints) is dropped with one warning for
    the whole list rather than refusing the file.
    """
    pairs, dropped = [], []
    for link in links if isinstance(links, list) else []:
        try:
            a, b = (int(v) - 1 for v in link)  # COCO skeletons are 1-based
        except (TypeError, ValueError):
            dropped.append(link)
            continue
        if 0 <= a < num_joints and 0 <= b < num_joints and a != b:
            pairs.append((a, b))
        else:
            dropped.append(link)
    if dropped:
        shown = ", ".join(str(d) for d in dropped[:3]) + (" …" if len(dropped) > 3 else "")
        log.warning(
            "%s: %d of %d skeleton links name no keypoint of the %d (%s): dropped (the skeleton is only drawn)",
            where,
            len(dropped),
            len(links),
            num_joints,
            shown,
        )
    return tuple(pairs)


# Computed once, from COCO's names.
COCO_FLIP_INDEX: tuple[int, ...] = COCO.flip_index
