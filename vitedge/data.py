"""The one data layer: images, videos and tensors -> preprocessed batches, for every step.

Image sources: ImageFolder, flat folder or glob -> (path, label) records, streamed.

Nothing here loads a data set into memory: records are paths, and `iter_batches` decodes and
preprocesses one batch at a time through the shared `preprocess`. Unreadable files are
skipped and counted, so a caller can say how many were dropped and refuse when too few remain.
"""

from __future__ import annotations

import glob as globlib
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.card import ModelCard, Preprocessing
from vitedge.errors import InputError
from vitedge.preprocess import (
    PixelInput,
    UnreadableImageError,
    check_image_size,
    preprocess,
)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".jfif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                            # camera and recorder formats: MPEG-TS, raw H.264/H.265 streams, ...
                            ".ts", ".m2ts", ".mts", ".h264", ".264", ".h265", ".265", ".hevc",
                            ".flv", ".wmv", ".3gp", ".mjpeg", ".mjpg"})
TENSOR_SUFFIXES = frozenset({".npy", ".npz"})


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int | None = None  # class index, when the source is labeled


@dataclass
class ImageSet:
    """A list of image paths with optional labels (ImageFolder: one subfolder per class)."""

    records: list[ImageRecord]
    class_names: list[str] | None = None  # ImageFolder's sorted subfolder names
    origin: str = ""

    @property
    def labeled(self) -> bool:
        return self.class_names is not None

    def sample(self, count: int | None, seed: int = 0) -> ImageSet:
        """A reproducible subset of `count` records (all of them when count is None or larger)."""
        if count is None or count >= len(self.records):
            return self
        chosen = sorted(random.Random(seed).sample(range(len(self.records)), count))
        return ImageSet([self.records[i] for i in chosen], self.class_names, self.origin)


@dataclass
class BatchStats:
    read: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason" of each unreadable file


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def safe_glob(pattern: str) -> list[Path]:
    """The paths `pattern` matches, where `**` is any depth of folders, each real folder visited
    once: a symbolic link back up the tree (a loop) or to a folder already seen is not followed
    again (Python's glob follows such loops until the path grows too long)."""
    parts = Path(pattern).parts
    if "**" not in parts:
        return [Path(p) for p in globlib.glob(pattern)]
    cut = parts.index("**")
    base = str(Path(*parts[:cut])) if cut else "."
    rest = str(Path(*parts[cut + 1:])) if cut + 1 < len(parts) else ""
    found: dict[str, Path] = {}
    seen: set[tuple[int, int]] = set()
    for top in ([Path(b) for b in globlib.glob(base)] if globlib.has_magic(base) else [Path(base)]):
        for folder, dirs, _files in os.walk(top, followlinks=True):
            try:
                info = os.stat(folder)
            except OSError:
                dirs[:] = []
                continue
            if (info.st_dev, info.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((info.st_dev, info.st_ino))
            dirs.sort()
            matches = safe_glob(os.path.join(globlib.escape(folder), rest)) if rest else [Path(folder)]
            for match in matches:
                found.setdefault(str(match), match)
    return list(found.values())


def open_images(source: str | Path) -> ImageSet:
    """Resolve a folder, ImageFolder or glob pattern into an ImageSet."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        paths = sorted(p for p in safe_glob(text) if _is_image(p))
        if not paths:
            raise InputError(f"glob {text!r} matches no image files",
                             f"expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}")
        return ImageSet([ImageRecord(p) for p in paths], None, text)
    root = Path(source)
    if not root.exists():
        raise InputError(f"data path {root} does not exist",
                         "pass an image folder, an ImageFolder (one subfolder per class) or a glob")
    if root.is_file():
        if _is_image(root):
            return ImageSet([ImageRecord(root)], None, text)
        if is_video(root):
            raise InputError(f"{root} is a video; this command reads images",
                             f"run a model on it with vitedge run MODEL --source {root}, or pass it as "
                             "--data to eval or quantize")
        raise InputError(f"{root} is not an image file or folder",
                         "pass an image folder, an ImageFolder or a glob such as 'frames/*.jpg'")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_dirs = [d for d in subdirs if any(_is_image(p) for p in d.rglob("*"))]
    if class_dirs:
        records = [ImageRecord(p, index)
                   for index, d in enumerate(class_dirs)
                   for p in sorted(p for p in d.rglob("*") if _is_image(p))]
        return ImageSet(records, [d.name for d in class_dirs], text)
    paths = sorted(p for p in root.iterdir() if _is_image(p))
    if not paths:
        raise InputError(f"{root} contains no image files",
                         f"expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}, "
                         "directly or in one subfolder per class")
    return ImageSet([ImageRecord(p) for p in paths], None, text)


def iter_batches(images: ImageSet | Sequence[ImageRecord], pre: Preprocessing, batch_size: int,
                 stats: BatchStats | None = None, *, pixels: PixelInput | None = None
                 ) -> Iterator[tuple[np.ndarray, list[ImageRecord]]]:
    """Yield (NCHW float32 batch, records in it), skipping and counting unreadable files; with
    `pixels`, batches of raw pixels as a graph with the preprocessing inside takes them."""
    records = images.records if isinstance(images, ImageSet) else list(images)
    stats = stats if stats is not None else BatchStats()
    arrays: list[np.ndarray] = []
    kept: list[ImageRecord] = []
    for record in records:
        try:
            arrays.append(preprocess(record.path, pre) if pixels is None else pixels.from_image(record.path, pre))
        except UnreadableImageError as exc:
            stats.skipped.append(f"{record.path}: {exc.message}")
            continue
        kept.append(record)
        stats.read += 1
        if len(arrays) == batch_size:
            yield np.stack(arrays), kept
            arrays, kept = [], []
    if arrays:
        yield np.stack(arrays), kept


# ----------------------------------------------------------------------- data sets (fixed samples)
# A source is opened once: the requested number of samples is chosen (seeded, reproducible) from
# the paths or frame indices, never by loading the whole data set. The chosen samples are decoded
# through the shared preprocessing; unreadable ones are skipped and counted, and opening fails
# when fewer than the stated minimum remain. Decoded samples are kept in memory only while they
# fit a fixed budget, otherwise every pass decodes them again (streaming).
MIN_SAMPLES = 10
CACHE_BYTES = 512 * 2**20  # keep decoded samples in memory up to this size


@dataclass
class DataSet:
    """A fixed, ordered selection of samples that can be iterated in batches any number of times."""

    origin: str
    kind: str  # "images" | "video" | "tensors"
    pre: Preprocessing
    labels: np.ndarray | None = None  # class index per sample, when the source is labeled
    class_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)
    _images: ImageSet | None = None
    _video: tuple[Path, list[int]] | None = None
    _tensors: np.ndarray | None = None
    _cache: np.ndarray | None = None

    def __len__(self) -> int:
        if self._cache is not None:
            return len(self._cache)
        if self._tensors is not None:
            return len(self._tensors)
        if self._images is not None:
            return len(self._images.records)
        return len(self._video[1]) if self._video else 0

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    def batches(self, batch_size: int = 32) -> Iterator[np.ndarray]:
        if self._cache is not None:
            yield from _slices(self._cache, batch_size)
        elif self._tensors is not None:
            for chunk in _slices(self._tensors, batch_size):
                yield np.ascontiguousarray(chunk, dtype=np.float32)
        elif self._images is not None:
            for batch, _ in iter_batches(self._images, self.pre, batch_size):
                yield batch
        elif self._video is not None:
            yield from _video_batches(self._video[0], self._video[1], self.pre, batch_size)

    def paths(self) -> list[Path | None]:
        """The file behind each sample (None for video frames and tensors)."""
        if self._images is not None:
            return [r.path for r in self._images.records]
        return [None] * len(self)

    def split(self, first: float, seed: int = 0) -> tuple[DataSet, DataSet]:
        """Two disjoint, seeded parts (`first` of the samples, and the rest), e.g. calibration
        and held-out evaluation from one folder. Image sets and tensors only."""
        if self._video is not None:
            raise InputError(f"{self.origin} is a video: frames next to each other are near-copies, "
                             "so a split of it is not held out", "give separate calibration data")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(round(first * len(self)))
        if not 0 < cut < len(self):
            raise InputError(f"{self.origin} has {len(self)} samples: too few to split into "
                             "calibration and evaluation", "add images, or give separate calibration data")
        return self._subset(np.sort(order[:cut]), "first part"), self._subset(np.sort(order[cut:]), "second part")

    def take(self, indices: np.ndarray) -> DataSet:
        """The samples at `indices`, in that order (e.g. the closest calls first)."""
        return self._subset(np.asarray(indices), "reordered")

    def _subset(self, indices: np.ndarray, part: str) -> DataSet:
        part_of = DataSet(f"{self.origin} ({part}, {len(indices)} of {len(self)})", self.kind, self.pre,
                          labels=None if self.labels is None else self.labels[indices],
                          class_names=self.class_names)
        if self._images is not None:
            part_of._images = ImageSet([self._images.records[i] for i in indices],
                                       self._images.class_names, self._images.origin)
        if self._tensors is not None:
            part_of._tensors = self._tensors[indices]
        if self._cache is not None:
            part_of._cache = self._cache[indices]
        return part_of

    def head(self, count: int) -> np.ndarray:
        """The first `count` samples as one array, decoding no more than needed."""
        return next(self.batches(count), np.zeros((0, 3, *self.pre.input_size), np.float32))

    def samples(self) -> Iterator[np.ndarray]:
        """One sample at a time, shaped (1, 3, H, W): what calibration tools iterate."""
        for batch in self.batches(32):
            for index in range(len(batch)):
                yield batch[index:index + 1]


def _slices(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), size):
        yield array[start:start + size]


def open_data(source: str | Path, pre: Preprocessing, *, samples: int | None = 300,
              seed: int = 0, min_samples: int = MIN_SAMPLES, role: str = "calibration") -> DataSet:
    """Open an ImageFolder, image folder, glob, video file or .npy/.npz as a DataSet."""
    text = str(source)
    path = Path(text)
    if is_video(path):
        data = _open_video(path, pre, samples)
    elif path.is_file() and path.suffix.lower() in TENSOR_SUFFIXES:
        data = _open_tensors(path, pre, samples, seed)
    elif path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{role} data {path} is not an image, video or .npy/.npz file",
                         "pass an image folder, ImageFolder, glob, video file or .npy/.npz")
    else:
        images = open_images(text).sample(samples, seed=seed)
        data = DataSet(text, "images", pre, _images=images,
                       labels=np.array([r.label for r in images.records])
                       if images.labeled else None,
                       class_names=images.class_names)
        _decode_images(data)
    if len(data) < min_samples:
        detail = f" ({len(data.skipped)} unreadable, e.g. {data.skipped[0]})" if data.skipped else ""
        raise InputError(f"{role} data {text} has {len(data)} usable samples{detail}; at least "
                         f"{min_samples} are needed", "add more images, or point at another folder")
    return data


def _decode_images(data: DataSet) -> None:
    """Decode once: count unreadable files, drop them, and cache the arrays if they are small."""
    assert data._images is not None
    height, width = data.pre.input_size
    cacheable = len(data._images.records) * 3 * height * width * 4 <= CACHE_BYTES
    stats = BatchStats()
    kept, arrays = [], []
    for batch, records in iter_batches(data._images, data.pre, 32, stats):
        kept.extend(records)
        if cacheable:
            arrays.append(batch)
    data.skipped = stats.skipped
    data._images = ImageSet(kept, data._images.class_names, data._images.origin)
    if data.labels is not None:
        data.labels = np.array([r.label for r in kept])
    if cacheable and arrays:
        data._cache = np.concatenate(arrays)


def _open_tensors(path: Path, pre: Preprocessing, samples: int | None, seed: int) -> DataSet:
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable NumPy file ({exc})") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        key = next((k for k in ("x", "input", "images", "data") if k in keys), keys[0] if keys else None)
        if key is None:
            raise InputError(f"{path} holds no arrays")
        array = loaded[key]
        label_key = next((k for k in ("y", "labels", "targets") if k in keys), None)
        labels = np.asarray(loaded[label_key]) if label_key else None
    else:
        array = loaded
    expected = (3, *pre.input_size)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise InputError(f"{path} holds an array of shape {tuple(array.shape)}, expected "
                         f"(N, {', '.join(map(str, expected))}) already preprocessed for this model",
                         "save tensors after the model's preprocessing, or pass the images instead")
    indices = np.arange(len(array))
    if samples is not None and samples < len(array):
        indices = np.sort(np.random.default_rng(seed).choice(len(array), samples, replace=False))
    return DataSet(str(path), "tensors", pre, _tensors=array[indices],
                   labels=labels[indices] if labels is not None else None)


def check_frame_size(capture: Any, uri: str) -> None:
    """Refuse a video or stream whose frames exceed the pixel limit, before reading any."""
    import cv2

    width, height = (int(capture.get(p) or 0) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        check_image_size(width, height, f"frames of {uri}")
    except UnreadableImageError as exc:
        raise InputError(exc.message, exc.hint) from None


LOST_FRAME = np.zeros((0, 0, 3), np.uint8)  # what VideoFile.read returns for a damaged frame


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


class VideoFile:
    """A video file opened by OpenCV and checked once (it opens; its frames are within the pixel
    limit), then read frame by frame in order: calibration/eval samples and the live loop's file
    source both read videos through it."""

    def __init__(self, path: str | Path) -> None:
        import cv2

        self.path = Path(path)
        self.capture = cv2.VideoCapture(str(self.path))
        if not self.capture.isOpened():
            raise InputError(f"video {self.path} cannot be opened by OpenCV",
                             "check that the file is a complete video (mp4, avi, mkv, ...), or "
                             "extract frames to a folder first")
        self.fps: float | None = self.capture.get(cv2.CAP_PROP_FPS) or None
        self.frame_count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.position = 0  # frames decoded
        self.lost = 0  # frames that could not be decoded (damaged) before the container's end
        try:
            check_frame_size(self.capture, str(self.path))
        except InputError:
            self.capture.release()
            raise

    def read(self) -> np.ndarray | None:
        """The next BGR frame; LOST_FRAME (an empty array) for a frame that could not be decoded
        before the container's end; None at the end.

        OpenCV's read fails at a damaged frame as it does at the end of the file, and reading on
        gets the frames after it: a failure while the container says frames remain is counted as
        a lost frame and reading goes on (each failure uses one of the frames the container
        counts, so this is bounded by the frame count).
        """
        ok, frame = self.capture.read()
        if ok:
            self.position += 1
            return frame
        remaining = self.frame_count - self.position - self.lost if self.frame_count > 0 else 0
        if remaining > 0:
            self.lost += 1
            return LOST_FRAME
        return None

    def rewind(self) -> None:
        """Back to the first frame: the file is opened again (seeking to 0 fails on some files,
        a one-frame video among them, and the decoder state is fresh after a damaged frame)."""
        import cv2

        self.capture.release()
        self.capture = cv2.VideoCapture(str(self.path))
        self.position = self.lost = 0

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_video(path: Path, pre: Preprocessing, samples: int | None) -> DataSet:
    with VideoFile(path) as video:
        total = video.frame_count
    if total <= 0:
        raise InputError(f"video {path} reports no frames", "re-encode it or extract frames")
    count = total if samples is None else min(samples, total)
    indices = sorted({int(i) for i in np.linspace(0, total - 1, count)})
    data = DataSet(str(path), "video", pre, _video=(path, indices))
    frames = list(_video_batches(path, indices, pre, 32))
    data._cache = np.concatenate(frames) if frames else np.zeros((0, 3, *pre.input_size), np.float32)
    return data


def _video_batches(path: Path, indices: list[int], pre: Preprocessing,
                   batch_size: int) -> Iterator[np.ndarray]:
    """Evenly spaced frames, read sequentially (seeking is unreliable in many codecs)."""
    wanted = set(indices)
    batch: list[np.ndarray] = []
    with VideoFile(path) as video:
        position = 0
        while wanted and position <= indices[-1]:
            frame = video.read()
            if frame is None:
                break
            if position in wanted and frame.size:  # a damaged frame is not a sample
                batch.append(preprocess(frame, pre, frame_channel_order="BGR"))
                if len(batch) == batch_size:
                    yield np.stack(batch)
                    batch = []
            position += 1
    if batch:
        yield np.stack(batch)


def model_labels(card: ModelCard, data: DataSet) -> np.ndarray | None:
    """Map an ImageFolder's class indices onto the model's output indices, or refuse."""
    if data.labels is None:
        return None
    names = data.class_names or []
    if card.labels:
        # ImageFolder subfolders may be named after the labels or the class ids (synsets)
        lookup = {label: index for index, label in enumerate(card.labels)}
        lookup.update({cid: index for index, cid in enumerate(card.class_ids or [])})
        missing = [n for n in names if n not in lookup]
        if missing:
            raise InputError(
                f"classes {missing[:4]} of {data.origin} are not among the model's labels "
                f"({', '.join(card.labels[:4])}, …)",
                "name the ImageFolder subfolders after the model's labels, or pass an unlabeled "
                "folder to measure agreement with FP32 only")
        mapping = np.array([lookup[n] for n in names])
        return mapping[data.labels]
    if card.num_classes is not None and len(names) > card.num_classes:
        raise InputError(f"eval data has {len(names)} classes but the model has {card.num_classes} "
                         "outputs", "pass data whose classes match the model")
    return data.labels


SAMPLE_PHOTO = "grace_hopper.jpg"  # in matplotlib's sample_data (a runtime dependency of vitedge)


def sample_photos(folder: Path, count: int, seed: int = 0) -> ImageSet:
    """`count` natural images for checks that need some (export parity): crops of matplotlib's
    sample photo at varied position, size and aspect, every second one mirrored, as PNGs in
    `folder`. The card's preprocessing brings them to the model's resolution like any photo."""
    import matplotlib
    from PIL import Image

    from vitedge.preprocess import load_image

    photo = load_image(Path(matplotlib.get_data_path()) / "sample_data" / SAMPLE_PHOTO)
    width, height = photo.size
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        w = int(rng.integers(width // 3, width + 1))
        h = min(height, max(8, int(w * rng.uniform(0.75, 1.33))))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = photo.crop((x, y, x + w, y + h))
        if index % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = Path(folder) / f"{Path(SAMPLE_PHOTO).stem}-crop{index:02d}.png"
        crop.save(path)
        records.append(ImageRecord(path))
    return ImageSet(records, None, f"{count} crops of matplotlib's sample photo {SAMPLE_PHOTO}")
