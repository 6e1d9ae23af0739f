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
