"""COCO-format keypoint datasets: annotations, flip pairs, ignore regions and image decoding.

Any COCO-style `person_keypoints`-like file works (COCO's 17 joints, CrowdPose's 14, animal
sets …): the keypoint names and skeleton come from the category, the left/right flip pairs are
inferred from the names or given explicitly. The file and the image files are checked in one pass
first (`keras_ehrnet.data.validate`); every error names the annotation file, the image id and
the annotation id, so a bad record in a 100 k-image file can be found.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from keras_ehrnet.data.validate import (
    check_annotations,
    check_images,
    decode_image_file,
    keypoint_categories,
    load_annotation_json,
    problems_error,
)
from keras_ehrnet.errors import DatasetError
from keras_ehrnet.keypoints import (
    KeypointSet,
    parse_skeleton,
    resolve_flip_index,
)

log = logging.getLogger("keras_ehrnet.data")

# Show a progress bar for the annotation pass only when it is long enough to notice.
_PROGRESS_MIN_IMAGES = 5000


@dataclass
class SkipLog:
    """Thread-safe record of samples left out with `skip_invalid=True`, reported at the end.

    `entries` holds one `(image_id, path, reason)` per bad image, however many passes skip it
    (`events` counts every skip); `report()` gives a readable summary.
    """

    entries: list[tuple[int, str, str]] = field(default_factory=list)
    events: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, image_id: int | None, path: str, reason: str) -> None:
        """Record one skip; the first skip of an image is logged at once."""
        try:
            image_id = int(image_id)
        except (TypeError, ValueError):
            image_id = -1
        with self._lock:
            self.events += 1
            if any(e[0] == image_id and e[1] == str(path) for e in self.entries):
                return
            self.entries.append((image_id, str(path), reason))
        log.warning("skipped image id %s (%s): %s", image_id, path, reason)

    @property
    def count(self) -> int:
        """How many distinct images were skipped so far."""
        return len(self.entries)

    def report(self) -> str:
        """One line per skipped image, headed by the count."""
        with self._lock:
            lines = [f"{len(self.entries)} sample(s) skipped as invalid ({self.events} skip(s) in all):"]
            lines += [f"  image id {i} ({p}): {r}" for i, p, r in self.entries]
        return "\n".join(lines)


@dataclass(frozen=True)
class ImageRecord:
    """One image and the annotations that shape its training targets.

    `keypoints` holds one row per person used for targets, as the reference chooses them
    (non-crowd people, and crowd regions that carry keypoints): float32 [N, J, 3] with
    (x, y, visibility) in source-image pixels. `ignore_rle` is the union of the crowd regions
    and of the people without keypoints (compressed RLE), or None when there are none.
    """

    image_id: int
    path: str
    width: int
    height: int
    keypoints: np.ndarray
    ann_ids: tuple[int, ...]
    ignore_rle: dict | None = None

    @property
    def num_people(self) -> int:
        """People with at least one labelled keypoint."""
        return int(np.count_nonzero((self.keypoints[..., 2] > 0).any(axis=-1)))

    def ignore_mask(self) -> np.ndarray | None:
        """uint8 [height, width], 1 where the loss must ignore the network, or None if nowhere."""
        if self.ignore_rle is None:
            return None
        return mask_utils.decode(self.ignore_rle)


def keypoint_set(
    ann_file: str | os.PathLike, flip_pairs: Sequence[Sequence[int | str]] | None = None
) -> KeypointSet:
    """The keypoint category of a COCO-format file (no images needed): for predicting and
    drawing with a model trained on that keypoint set. Flip pairs as in `CocoKeypoints`."""
    ann_file = Path(ann_file)
    cat = keypoint_categories(load_annotation_json(ann_file), ann_file)[0]
    names = tuple(str(n) for n in cat["keypoints"])
    skeleton = parse_skeleton(cat.get("skeleton"), len(names), ann_file)
    try:
        flip = resolve_flip_index(names, flip_pairs)
    except DatasetError as err:
        raise DatasetError(f"{ann_file}: {err}") from None
    return KeypointSet(names, skeleton, tuple(flip))


def _segmentation_rle(ann: dict, height: int, width: int, where: str) -> dict:
    """Compressed RLE of an annotation's region: polygons, RLE (either form) or, lacking both, its box."""
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, dict):
            size = list(seg.get("size", []))
            if size != [height, width]:
                raise DatasetError(f"{where}: RLE size {size} differs from the image's {[height, width]}")
            counts = seg.get("counts")
            if isinstance(counts, list):
                return mask_utils.frPyObjects(seg, height, width)
            if isinstance(counts, str):
                return {"size": size, "counts": counts.encode("ascii")}
            if isinstance(counts, bytes):
                return {"size": size, "counts": counts}
            raise DatasetError(f"{where}: RLE 'counts' must be a list or a string")
        polygons = [p for p in seg or [] if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            box = ann.get("bbox")
            if not box or len(box) != 4:
                raise DatasetError(f"{where}: region needs a segmentation or a bbox")
            x, y, w, h = (float(v) for v in box)
            polygons = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    except DatasetError:
        raise
    except Exception as e:  # pycocotools raises bare TypeError/ValueError on malformed input
        raise DatasetError(f"{where}: malformed segmentation ({e})") from None


class CocoKeypoints:
    """A COCO-format keypoint dataset read through pycocotools.

    Args:
        ann_file: the annotation JSON.
        image_dir: folder holding the images' `file_name`s.
        flip_pairs: left/right pairs (0-based indices or names); inferred from names if None.
        category_id: the keypoint category to read; all keypoint categories sharing one
            keypoint list are read together if None (e.g. one category per animal species).
        num_joints: if given, the number of keypoints the caller expects (checked).
        require_annotations: keep only images with at least one annotation of the category,
            crowd regions included, as the reference does for training.
        skip_invalid: leave out images with invalid annotations or image files (recorded
            in `skip_log`, each with its file, image id and annotation id) instead of raising
            a DatasetError that names the first problem and counts them all.
        skip_log: where skipped images are recorded (a new one if None).
        validate_images: how the image files are checked before anything trains on them:
            "header" (exists, size as the JSON says, not cut short), "full" (also decoded) or
            "off" (see `keras_ehrnet.data.validate`). Annotations are always checked.
        progress: show a progress bar over long passes.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        flip_pairs: Sequence[Sequence[int | str]] | None = None,
        category_id: int | None = None,
        num_joints: int | None = None,
        require_annotations: bool = True,
        skip_invalid: bool = False,
        skip_log: SkipLog | None = None,
        validate_images: str = "header",
        progress: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.skip_log = skip_log if skip_log is not None else SkipLog()
        self.progress = progress
        checked = check_annotations(self.ann_file, category_id=category_id)
        cats = checked.categories
        self.category_ids = [c["id"] for c in cats]
        self.keypoint_names: list[str] = checked.keypoint_names
        self.num_joints = len(self.keypoint_names)
        if num_joints is not None and num_joints != self.num_joints:
            raise DatasetError(
                f"{self.ann_file}: the keypoint category has {self.num_joints} keypoints, expected "
                f"{num_joints} (model.num_joints / --num-joints; leave it unset to take the file's)"
            )
        checked.raise_or_log(skip_invalid, self.skip_log, self.image_dir)
        self.coco = checked.coco()
        self.skeleton = list(parse_skeleton(cats[0].get("skeleton"), self.num_joints, self.ann_file))
        try:
            self.flip_index = resolve_flip_index(self.keypoint_names, flip_pairs)
        except DatasetError as err:
            raise DatasetError(f"{self.ann_file}: {err}") from None
        self._check_files = validate_images == "off"  # else check_images names missing files
        records = self._read_records(require_annotations, skip_invalid)
        problems = check_images(
            ((r.image_id, os.path.relpath(r.path, self.image_dir), r.width, r.height) for r in records),
            self.ann_file,
            self.image_dir,
            validate_images,
            progress=progress,
        )
        if problems:
            if not skip_invalid:
                raise problems_error(problems, "; data.skip_invalid=true skips such images")
            for p in problems:
                self.skip_log.add(p.image_id, str(p.image_file), p.message)
            bad = {p.image_id for p in problems}
            records = [r for r in records if r.image_id not in bad]
        if self.skip_log.count:
            log.warning("%s: %s", self.ann_file, self.skip_log.report())
        self.records: list[ImageRecord] = records
        self.image_ids = [r.image_id for r in self.records]

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        """The left/right pairs (a < b) that `flip_index` swaps."""
        return [(i, k) for i, k in enumerate(self.flip_index) if i < k]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def annotations(self, image_id: int) -> list[dict]:
        """The raw COCO annotations of one image (all categories read)."""
        ann_ids = self.coco.getAnnIds(imgIds=[image_id], catIds=self.category_ids, iscrowd=None)
        return self.coco.loadAnns(ann_ids)

    def _read_records(self, require_annotations: bool, skip_invalid: bool) -> list[ImageRecord]:
        records = []
        images = self.coco.dataset["images"]
        bar = tqdm(
            images,
            desc="annotations",
            unit="img",
            disable=not self.progress or len(images) < _PROGRESS_MIN_IMAGES,
        )
        for info in bar:
            try:
                record = self._record(info)
            except DatasetError as e:
                if not skip_invalid:
                    raise
                self.skip_log.add(
                    info.get("id", -1), str(self.image_dir / str(info.get("file_name"))), str(e)
                )
                continue
            if record is None or (require_annotations and not record.ann_ids):
                continue
            if self._check_files and not os.path.isfile(record.path):
                message = f"image file not found: {record.path} (image id {record.image_id})"
                if not skip_invalid:
                    raise FileNotFoundError(message)
                self.skip_log.add(record.image_id, record.path, "image file not found")
                continue
            records.append(record)
        return records

    def _record(self, info: dict) -> ImageRecord | None:
        image_id = info.get("id")
        where = f"{self.ann_file}: image id {image_id}"
        try:
            width, height = int(info["width"]), int(info["height"])
            file_name = str(info["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{where}: needs 'file_name', 'width' and 'height'") from None
        if width <= 0 or height <= 0:
            raise DatasetError(f"{where}: bad size {width}x{height}")
        anns = self.annotations(image_id)
        j = self.num_joints
        people, ignore = [], []
        for ann in anns:
            ann_where = f"{self.ann_file}: annotation id {ann.get('id')} (image id {image_id})"
            raw = ann.get("keypoints")
            if raw is None:
                raw = [0] * (3 * j)
            if not isinstance(raw, list) or len(raw) != 3 * j:
                n = len(raw) if isinstance(raw, list) else type(raw).__name__
                raise DatasetError(f"{ann_where}: {n} keypoint values, expected {3 * j} ({j} keypoints x 3)")
            try:
                kp = np.asarray(raw, dtype=np.float32).reshape(j, 3)
            except (TypeError, ValueError):
                raise DatasetError(f"{ann_where}: keypoints are not numbers") from None
            if not np.isfinite(kp).all() or (kp[:, 2] < 0).any():
                raise DatasetError(f"{ann_where}: keypoints must be finite with visibility >= 0")
            labelled = int(np.count_nonzero(kp[:, 2] > 0))
            crowd = bool(ann.get("iscrowd", 0))
            if crowd or labelled == 0:
                ignore.append(_segmentation_rle(ann, height, width, ann_where))
            if not crowd or labelled > 0:
                people.append(kp)
        keypoints = np.stack(people) if people else np.zeros((0, j, 3), np.float32)
        ignore_rle = None
        if ignore:
            ignore_rle = mask_utils.merge(ignore) if len(ignore) > 1 else ignore[0]
        return ImageRecord(
            image_id=int(image_id),
            path=str(self.image_dir / file_name),
            width=width,
            height=height,
            keypoints=keypoints,
            ann_ids=tuple(int(a.get("id", -1)) for a in anns),
            ignore_rle=ignore_rle,
        )


def load_image(record: ImageRecord) -> np.ndarray:
    """Decode a record's image as RGB uint8 [height, width, 3] (see `decode_image_file`)."""
    return decode_image_file(record.path, record.width, record.height, record.image_id)
