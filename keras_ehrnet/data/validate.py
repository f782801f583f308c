"""One validation pass over a COCO-format keypoint dataset, before any training step or scoring.

Training (`CocoKeypoints`) and evaluation (`evaluate_coco`, `python -m evaluation.coco`) read
annotation files through `check_annotations` and check image files with `check_images`, so a
bad record is found in seconds, not hours into a run, and both report it the same way: every
`Problem` names the annotation file, the image id, the annotation id and the image file.

Annotations are always checked: the file's structure (fatal: no keypoint category, not COCO),
then every image and annotation record (duplicate image or annotation ids, annotations of
images that are not listed, keypoint lists of the wrong length, visibilities other than 0/1/2,
non-finite numbers, negative sizes or boxes …). Image files are checked by `mode`:

* "header" (default): the file exists, is not empty, its header gives the size the JSON says
  (Pillow reads only the header), and a JPEG or PNG is not cut short (its last bytes hold the
  end marker). Fast: a few kilobytes per image.
* "full": also decode every image, as training will (OpenCV).
* "off": only the annotations.

The records that pass form a cleaned dataset; fields pycocotools' evaluation needs but public
files leave out are filled in there (see `fill_missing_fields`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from keras_ehrnet.errors import DatasetError, ImageError
from keras_ehrnet.keypoints import BBOX_AREA_FACTOR

log = logging.getLogger("keras_ehrnet.data")

IMAGE_CHECKS = ("header", "full", "off")
# Show a progress bar for the image pass only when it is long enough to notice.
_PROGRESS_MIN_IMAGES = 2000
_TAIL_BYTES = 1 << 16
_PNG_END = b"IEND\xaeB`\x82"


def jpeg_is_complete(data: bytes) -> bool:
    """True if the JPEG's last scan is closed by an end-of-image marker.

    Entropy-coded data never holds 0xFFD9 (0xFF bytes are stuffed), so a file cut short has
    no end-of-image marker after its last start-of-scan marker. `data` may be the whole file
    or only its last bytes.
    """
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")


def decode_image_file(
    path: str | os.PathLike, width: int, height: int, image_id: object = None
) -> np.ndarray:
    """Decode an image file as RGB uint8 [height, width, 3], checking it against the JSON's size.

    Grayscale, RGBA and 16-bit files become 8-bit RGB; EXIF orientation is ignored, as COCO
    annotates the stored pixels. Raises ImageError naming the file (and the image id) for
    missing, empty, undecodable, truncated or wrongly sized images.
    """
    where = f"{path}" + (f" (image id {image_id})" if image_id is not None else "")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read image {where}: {e.strerror or e}") from None
    if not data:
        raise ImageError(f"image file {where} is empty (0 bytes)")
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise ImageError(f"truncated JPEG {where}")
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB
    flags = (cv2.IMREAD_COLOR if rgb is None else rgb) | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:  # OpenCV raises for some malformed buffers instead of returning None
        raise ImageError(f"cannot decode image {where}: {str(e).strip().splitlines()[-1]}") from None
    if image is None:
        raise ImageError(f"cannot decode image {where}: not a readable image file")
    if image.shape[:2] != (height, width):
        h, w = image.shape[:2]
        raise ImageError(f"image {where} is {w}x{h} but its annotation says {width}x{height}")
    return image if rgb is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


@dataclass(frozen=True)
class Problem:
    """One bad record: which file, image and annotation, and what is wrong with it."""

    ann_file: str
    message: str
    image_id: object = None
    ann_id: object = None
    image_file: str | None = None

    def where(self) -> str:
        parts = []
        if self.image_id is not None:
            parts.append(f"image id {self.image_id}")
        if self.ann_id is not None:
            parts.append(f"annotation id {self.ann_id}")
        if self.image_file:
            parts.append(f"({self.image_file})")
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{self.ann_file}: {where + ': ' if where else ''}{self.message}"


def problems_error(problems: Sequence[Problem], hint: str = "") -> DatasetError:
    """One-line DatasetError: the first problem and how many there are in all."""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return DatasetError(f"{problems[0]}{more}{hint}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def load_annotation_json(ann_file: str | os.PathLike) -> dict:
    """The annotation file as a dict, or a DatasetError / FileNotFoundError naming it."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        what = "is a folder, not a file" if ann_file.is_dir() else "not found"
        raise FileNotFoundError(f"annotation file {what}: {ann_file}")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{ann_file}: not a valid JSON annotation file ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{ann_file}: not a COCO annotation file (a JSON {type(data).__name__}, not an object"
            " with 'images', 'annotations' and 'categories'; a results file goes to --results)"
        )
    if not isinstance(data.get("images"), list):
        raise DatasetError(f"{ann_file}: not a COCO annotation file (no 'images' list)")
    if not isinstance(data.setdefault("annotations", []), list):
        raise DatasetError(f"{ann_file}: 'annotations' must be a list")
    if not isinstance(data.get("categories"), list):
        raise DatasetError(
            f"{ann_file}: no 'categories' list (a keypoint file needs one category with 'keypoints')"
        )
    return data


def keypoint_categories(
    data: dict, ann_file: str | os.PathLike, category_id: int | None = None
) -> list[dict]:
    """The categories read for keypoints: `category_id`'s, or all that share one keypoint list."""
    cats = [c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints")]
    if category_id is not None:
        cats = [c for c in cats if c.get("id") == category_id]
        if not cats:
            raise DatasetError(f"{ann_file}: no keypoint category with id {category_id}")
    if not cats:
        raise DatasetError(f"{ann_file}: no category with a 'keypoints' list")
    for c in cats:
        names = c["keypoints"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DatasetError(f"{ann_file}: category {c.get('id')}: 'keypoints' must be a list of names")
        if "id" not in c:
            raise DatasetError(f"{ann_file}: keypoint category {c.get('name')!r} has no 'id'")
    names = [list(c["keypoints"]) for c in cats]
    if any(n != names[0] for n in names):
        ids = [c.get("id") for c in cats]
        raise DatasetError(
            f"{ann_file}: keypoint categories {ids} have different keypoint lists; pass category_id"
        )
    return cats


@dataclass
class CheckedAnnotations:
    """An annotation file after the record checks.

    `dataset` holds the records that passed (bad images are removed with all their
    annotations, annotations of unlisted images are removed), with missing fields filled in;
    `problems` lists what was removed and why; `categories` are the keypoint categories read.
    """

    ann_file: Path
    dataset: dict
    categories: list[dict]
    problems: list[Problem] = field(default_factory=list)

    @property
    def keypoint_names(self) -> list[str]:
        return [str(n) for n in self.categories[0]["keypoints"]]

    def coco(self):
        """A pycocotools COCO index over the cleaned records."""
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco.createIndex()
        return coco

    def raise_or_log(
        self, skip_invalid: bool, skip_log=None, image_dir: str | os.PathLike | None = None
    ) -> None:
        """Raise the first problem (with the count), or record them all in `skip_log`."""
        if not self.problems:
            return
        if not skip_invalid:
            raise problems_error(self.problems, "; data.skip_invalid=true skips such records")
        if skip_log is not None:
            for p in self.problems:
                path = (
                    str(Path(image_dir) / p.image_file)
                    if image_dir is not None and p.image_file
                    else str(self.ann_file)
                )
                reason = f"annotation id {p.ann_id}: {p.message}" if p.ann_id is not None else p.message
                skip_log.add(p.image_id, path, reason)


def _image_record_problem(info: dict, k: int, counts: Counter, names: dict) -> str | None:
    """What is wrong with one entry of 'images', or None."""
    image_id, file_name = info.get("id"), info.get("file_name")
    if not _is_int(image_id):
        return f"images[{k}]: 'id' must be an integer, got {image_id!r}"
    if counts[image_id] > 1:
        return (
            f"image id {image_id} appears {counts[image_id]} times in 'images' ({', '.join(names[image_id])})"
        )
    if not isinstance(file_name, str) or not file_name.strip():
        return f"'file_name' must be a non-empty string, got {file_name!r}"
    width, height = info.get("width"), info.get("height")
    if not (_is_number(width) and _is_number(height)):
        return f"'width' and 'height' must be numbers, got {width!r} x {height!r}"
    if not all(math.isfinite(v) and float(v).is_integer() and v > 0 for v in (width, height)):
        return f"bad size {width}x{height} (need positive whole pixels)"
    return None


def _image_problems(images: list, ann_file: str) -> tuple[list[Problem], dict]:
    """Problems of the 'images' records and {id: record} of those that pass."""
    problems: list[Problem] = []
    counts = Counter(i.get("id") for i in images if isinstance(i, dict) and _is_int(i.get("id")))
    names: dict = defaultdict(list)
    for info in images:
        if isinstance(info, dict) and counts.get(info.get("id"), 0) > 1:
            names[info["id"]].append(str(info.get("file_name")))
    good = {}
    for k, info in enumerate(images):
        if not isinstance(info, dict):
            problems.append(Problem(ann_file, f"images[{k}] is a {type(info).__name__}, not an object"))
            continue
        message = _image_record_problem(info, k, counts, names)
        if message:
            file_name = info.get("file_name")
            file_name = file_name if isinstance(file_name, str) else None
            problems.append(Problem(ann_file, message, info.get("id"), None, file_name))
        else:
            good[info["id"]] = info
    return problems, good


def _annotation_problem(ann: dict, num_joints: int) -> str | None:
    """What is wrong with one keypoint annotation, or None."""
    raw = ann.get("keypoints")
    if raw is not None:
        if not isinstance(raw, list) or len(raw) != 3 * num_joints:
            n = len(raw) if isinstance(raw, list) else type(raw).__name__
            return f"{n} keypoint values, expected {3 * num_joints} ({num_joints} keypoints x 3)"
        if not all(_is_number(v) for v in raw):
            return "keypoints are not all numbers"
        kp = np.asarray(raw, np.float64).reshape(num_joints, 3)
        if not np.isfinite(kp).all():
            return "keypoints hold NaN or infinite numbers"
        bad_v = sorted({float(v) for v in kp[:, 2]} - {0.0, 1.0, 2.0})
        if bad_v:
            return f"keypoint visibility {bad_v[0]:g} (COCO uses 0 unlabelled, 1 occluded, 2 visible)"
    box = ann.get("bbox")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            return f"'bbox' must be [x, y, width, height], got {box!r}"
        if not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
            return f"'bbox' {box} has a negative or non-finite size"
    area = ann.get("area")
    if area is not None and (not _is_number(area) or not math.isfinite(area) or area < 0):
        return f"'area' must be a number >= 0, got {area!r}"
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):  # True/False compare equal to 1/0
        return f"'iscrowd' must be 0 or 1, got {crowd!r}"
    return None


def fill_missing_fields(ann: dict, num_joints: int) -> dict:
    """The annotation with the fields pycocotools' keypoint evaluation reads, where absent.

    CrowdPose's and AI Challenger's files carry no `area` (their own evaluations derive it
    from the box): it becomes bbox width × height × 0.53, as CrowdPose's official evaluation
    computes it. A missing `bbox` becomes the box around the labelled keypoints, `iscrowd` 0,
    `num_keypoints` the count of labelled keypoints.
    """
    if all(ann.get(key) is not None for key in ("iscrowd", "num_keypoints", "bbox", "area")):
        return ann
    kp = np.asarray(ann.get("keypoints") or [0.0] * (3 * num_joints), np.float64).reshape(num_joints, 3)
    labelled = kp[kp[:, 2] > 0]
    out = dict(ann)
    if out.get("iscrowd") is None:
        out["iscrowd"] = 0
    if out.get("num_keypoints") is None:
        out["num_keypoints"] = len(labelled)
    if out.get("bbox") is None:
        if len(labelled):
            (x0, y0), (x1, y1) = labelled[:, :2].min(0), labelled[:, :2].max(0)
            out["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        else:
            out["bbox"] = [0.0, 0.0, 0.0, 0.0]
    if out.get("area") is None:
        out["area"] = float(out["bbox"][2]) * float(out["bbox"][3]) * BBOX_AREA_FACTOR
    return out


def check_annotations(ann_file: str | os.PathLike, *, category_id: int | None = None) -> CheckedAnnotations:
    """Read and check an annotation file: fatal structure errors raise DatasetError naming the
    file; bad records are listed as problems and left out of the cleaned dataset."""
    ann_file = Path(ann_file)
    data = load_annotation_json(ann_file)
    cats = keypoint_categories(data, ann_file, category_id)
    where = str(ann_file)
    num_joints = len(cats[0]["keypoints"])
    keypoint_cat_ids = {c["id"] for c in cats}
    known_cat_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}

    problems, images = _image_problems(data["images"], where)
    bad_images = {p.image_id for p in problems if p.image_id is not None}
    anns = data["annotations"]
    ann_counts = Counter(a.get("id") for a in anns if isinstance(a, dict) and _is_int(a.get("id")))
    kept = []
    for k, ann in enumerate(anns):
        if not isinstance(ann, dict):
            problems.append(Problem(where, f"annotations[{k}] is a {type(ann).__name__}, not an object"))
            continue
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        if _is_int(image_id) and image_id in bad_images:
            continue  # the image is left out already, with its own problem
        info = images.get(image_id) if _is_int(image_id) else None
        if not _is_int(ann_id):
            message = f"annotations[{k}]: 'id' must be an integer, got {ann_id!r}"
        elif ann_counts[ann_id] > 1:
            message = f"annotation id {ann_id} appears {ann_counts[ann_id]} times in 'annotations'"
        elif info is None:
            message = f"names image id {image_id!r}, which is not in 'images'"
        elif ann.get("category_id") not in known_cat_ids:
            message = f"category_id {ann.get('category_id')!r} is not in 'categories'"
        elif ann["category_id"] in keypoint_cat_ids:
            message = _annotation_problem(ann, num_joints)
        else:
            message = None
        if message is None:
            kept.append(
                fill_missing_fields(ann, num_joints) if ann["category_id"] in keypoint_cat_ids else ann
            )
            continue
        file_name = info.get("file_name") if info else None
        problems.append(
            Problem(where, message, image_id, ann_id if ann_id is not None else f"#{k}", file_name)
        )
        if info is not None:  # the image would train without one of its people
            bad_images.add(image_id)
    kept = [a for a in kept if a["image_id"] not in bad_images]
    dataset = dict(data)
    dataset["images"] = [info for image_id, info in images.items() if image_id not in bad_images]
    dataset["annotations"] = kept
    return CheckedAnnotations(ann_file, dataset, cats, problems)


def _tail(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        return f.read()


def check_image_file(path: str | os.PathLike, width: int, height: int, mode: str = "header") -> str | None:
    """What is wrong with one image file for an image the JSON says is width x height, or None."""
    from PIL import Image, UnidentifiedImageError

    path = str(path)
    try:
        size = os.stat(path).st_size
    except OSError as e:
        return (
            "image file not found"
            if isinstance(e, FileNotFoundError)
            else f"cannot read image: {e.strerror or e}"
        )
    if os.path.isdir(path):
        return "is a folder, not an image file"
    if size == 0:
        return "image file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"\xff\xd8" and not jpeg_is_complete(_tail(path, size)):
        return "truncated JPEG (no end-of-image marker)"
    if head == b"\x89PNG\r\n\x1a\n" and _PNG_END not in _tail(path, size)[-64:]:
        return "truncated PNG (no IEND chunk)"
    try:
        with Image.open(path) as image:
            w, h = image.width, image.height
    except Image.DecompressionBombError:
        w, h = None, None  # a huge image: OpenCV decodes it, only Pillow's guard refuses to
    except UnidentifiedImageError:
        return "cannot decode image: not a readable image file"
    except (SyntaxError, ValueError, OSError) as e:
        return f"cannot decode image: {e}"
    if w is not None and (w, h) != (width, height):
        return f"image is {w}x{h} but its annotation says {width}x{height}"
    return _decode_problem(path, width, height) if mode == "full" else None


def _decode_problem(path: str, width: int, height: int) -> str | None:
    try:
        decode_image_file(path, width, height)
    except ImageError as e:
        return str(e)
    return None


def check_images(
    items: Iterable[tuple[object, str, int, int]],
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    mode: str = "header",
    *,
    progress: bool = True,
) -> list[Problem]:
    """Check image files, given (image id, file_name, width, height) from the JSON; one
    Problem per bad file. A tqdm bar shows progress on sets of a few thousand images."""
    if mode not in IMAGE_CHECKS:
        raise ValueError(f"image check must be one of {IMAGE_CHECKS}, got {mode!r}")
    items = list(items)
    if mode == "off" or not items:
        return []
    image_dir = Path(image_dir)

    def one(item):
        image_id, file_name, width, height = item
        return check_image_file(image_dir / file_name, int(width), int(height), mode)

    bar = tqdm(
        total=len(items),
        desc=f"checking images ({mode})",
        unit="img",
        disable=not progress or len(items) < _PROGRESS_MIN_IMAGES,
    )
    problems = []
    with bar, ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 4)) as pool:
        for item, message in zip(items, pool.map(one, items)):
            bar.update()
            if message:
                problems.append(Problem(str(ann_file), message, item[0], None, str(image_dir / item[1])))
    return problems
