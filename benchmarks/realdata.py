"""Shared access to ../shared/realdata (real DeiT-Tiny + 500 labeled ImageNet images).

Benchmarks and optional tests use it when present and skip with a message when absent.
Nothing from it is ever copied into the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
DEIT_WEIGHTS = REALDATA / "deit_tiny_patch16_224.safetensors"
IMAGES = REALDATA / "imagenet-sample-even"
CLASSES = REALDATA / "imagenet_classes.json"


def available() -> bool:
    return DEIT_WEIGHTS.is_file() and IMAGES.is_dir() and CLASSES.is_file()


def missing_message() -> str:
    return f"real data not found at {REALDATA} (expected the DeiT-Tiny checkpoint and images)"


def labels_by_path() -> dict[Path, int]:
    """Image path -> ImageNet class index, from the synset prefix of each file name."""
    index = {entry["synset"]: entry["index"] for entry in json.loads(CLASSES.read_text())}
    return {path: index[path.name.split("_")[0]] for path in sorted(IMAGES.iterdir())
            if path.name.split("_")[0] in index}


def split_image_folders(root: Path, labels: list[str], calibration: int = 300) -> tuple[Path, Path]:
    """Copy the images into root/calib and root/eval ImageFolders named after the model's labels.

    The split is seeded (the same in every benchmark): `calibration` images to calibrate, prune
    or distill on, the rest to evaluate. Folder names are the labels ('/' replaced by '_'), so
    vitedge reads the labels as it would from a user's data.
    """
    return _split(root, labels, {"calib": slice(None, calibration), "eval": slice(calibration, None)})


def two_folds(root: Path, labels: list[str]) -> tuple[Path, Path]:
    """Copy the images into root/fold0 and root/fold1 ImageFolders (a seeded half each), for
    two-fold cross-validation: calibrate on one, evaluate on the other, swap."""
    half = len(labels_by_path()) // 2
    return _split(root, labels, {"fold0": slice(None, half), "fold1": slice(half, None)})


def _split(root: Path, labels: list[str], parts: dict[str, slice]) -> tuple[Path, ...]:
    """Copy the images, in one seeded order, into root/<part> ImageFolders named after the labels."""
    import shutil

    import numpy as np

    items = sorted(labels_by_path().items())
    order = np.random.default_rng(0).permutation(len(items))
    for split, part in parts.items():
        for index in order[part]:
            path, label = items[index]
            folder = root / split / labels[label].replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
    return tuple(root / split for split in parts)
