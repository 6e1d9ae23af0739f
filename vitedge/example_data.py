"""The example data the docs, `make demo` and the help examples use: scikit-learn's real
handwritten digits (`sklearn.datasets.load_digits`, a dependency, so nothing is downloaded) as
two ImageFolders, `train/` (1257 images) and `heldout/` (540), one subfolder per digit.

8x8 scans (0-16 ink) become 32x32 8-bit grayscale PNGs, split 70/30 stratified with seed 0: the
split `scripts/train_digits_vit.py` trained the shipped `builtin:digits-vit` on (it never saw
`heldout/`). A checkout has them in calibration/digits; `vitedge example-data` writes the same
files anywhere, so the documented commands also work from an installed vitedge.
"""

from __future__ import annotations

from pathlib import Path

from vitedge.documents import write_document
from vitedge.outputs import MANIFEST_FILES, OutputKind, writing

DEFAULT_OUT = Path("calibration") / "digits"
HELDOUT_FRACTION = 0.3
SEED = 0


def write_digits(folder: Path) -> dict[str, int]:
    """The digits as folder/{train,heldout}/<digit>/<index>.png; images per split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, heldout = train_test_split(indices, test_size=HELDOUT_FRACTION, random_state=SEED,
                                      stratify=digits.target)
    for split, chosen in (("train", train), ("heldout", heldout)):
        for index in chosen:
            pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.BILINEAR)
            class_folder = folder / split / str(digits.target[index])
            class_folder.mkdir(parents=True, exist_ok=True)
            image.save(class_folder / f"{index:04d}.png", optimize=True)
    return {"train": len(train), "heldout": len(heldout)}


def example_data(out: str | Path = DEFAULT_OUT, *, overwrite: bool = False) -> dict[str, int]:
    """Write the digits' train/ and heldout/ ImageFolders at `out` (atomically, through the one
    output writer: an existing folder is replaced only when vitedge wrote it)."""
    with writing(out, OutputKind.EXAMPLES, overwrite=overwrite) as staging:
        counts = write_digits(staging)
        write_document(staging / MANIFEST_FILES[OutputKind.EXAMPLES],
                       {"kind": str(OutputKind.EXAMPLES), "source": "sklearn.datasets.load_digits",
                        "split": f"{1 - HELDOUT_FRACTION:.0%}/{HELDOUT_FRACTION:.0%} stratified, seed {SEED}",
                        "images": counts})
    return counts
