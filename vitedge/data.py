"""Image sources: ImageFolder, flat folder or glob -> (path, label) records, streamed.

Nothing here loads a data set into memory: records are paths, and `iter_batches` decodes and
preprocesses one batch at a time through the shared `preprocess`. Unreadable files are
skipped and counted, so a caller can say how many were dropped and refuse when too few remain.
"""

from __future__ import annotations

import glob as globlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitedge.card import Preprocessing
from vitedge.errors import InputError
from vitedge.preprocess import UnreadableImageError, preprocess

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".jfif"})


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


def open_images(source: str | Path) -> ImageSet:
    """Resolve a folder, ImageFolder or glob pattern into an ImageSet."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        paths = sorted(Path(p) for p in globlib.glob(text, recursive=True) if _is_image(Path(p)))
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
                 stats: BatchStats | None = None
                 ) -> Iterator[tuple[np.ndarray, list[ImageRecord]]]:
    """Yield (NCHW float32 batch, records in it), skipping and counting unreadable files."""
    records = images.records if isinstance(images, ImageSet) else list(images)
    stats = stats if stats is not None else BatchStats()
    arrays: list[np.ndarray] = []
    kept: list[ImageRecord] = []
    for record in records:
        try:
            arrays.append(preprocess(record.path, pre))
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
