"""`vitedge capture`: evenly spaced frames from any source, saved as an image folder.

So users calibrate and evaluate on frames from the camera they deploy on. Near-duplicates (a
static scene) are dropped by a 64-bit difference hash; brightness and sharpness (variance of
the Laplacian) are summarized so a dark or blurred capture is noticed before it is used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.documents import write_document
from vitedge.errors import InputError
from vitedge.live.camera import FrameSource, VideoFileSource
from vitedge.locks import releasing
from vitedge.outputs import OutputKind, check_output, input_paths, writing


def dhash(gray: np.ndarray) -> int:
    import cv2

    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


@releasing
def capture(uri: str, count: int, out: str | Path, *, every_s: float = 0.2,
            duplicate_bits: int = 3, overwrite: bool = False, timeout_s: float = 600.0,
            **open_options: Any) -> dict[str, Any]:
    """Save up to `count` frames; files: evenly spaced over the video; live: one per `every_s`."""
    import cv2

    if count < 1:
        raise InputError(f"-n {count} must be at least 1")
    inputs = input_paths(uri)
    check_output(out, OutputKind.CAPTURE, overwrite=overwrite, inputs=inputs)
    source = FrameSource.open(uri, **open_options)
    total = source.frame_count if isinstance(source, VideoFileSource) else (
        len(source.paths) if not source.live and hasattr(source, "paths") else 0)
    wanted = set(np.linspace(0, total - 1, min(count, total)).round().astype(int)) if total else None
    kept: list[dict[str, Any]] = []
    hashes: list[int] = []
    duplicates = unreadable = 0
    started = time.monotonic()
    last_kept = -1e9
    with writing(out, OutputKind.CAPTURE, overwrite=overwrite, inputs=inputs) as staging, source:
        for frame in source:
            if len(kept) >= count or time.monotonic() - started > timeout_s:
                break
            if wanted is not None and frame.index not in wanted:
                continue
            if wanted is None and frame.time - last_kept < every_s:
                continue
            if frame.image is None:
                unreadable += 1
                continue
            gray = frame.image if frame.image.ndim == 2 else cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
            fingerprint = dhash(gray)
            if any(bin(fingerprint ^ h).count("1") <= duplicate_bits for h in hashes[-50:]):
                duplicates += 1
                continue
            hashes.append(fingerprint)
            name = f"frame{frame.index:07d}.png"
            cv2.imwrite(str(staging / name), frame.image)
            last_kept = frame.time
            kept.append({"file": name, "frame": frame.index, "brightness": float(gray.mean()),
                         "sharpness": float(cv2.Laplacian(gray, cv2.CV_64F).var())})
        if not kept:
            raise InputError(f"no usable frame could be read from {uri}",
                             "check the source with vitedge run --source, or another -n")

        def spread(key: str) -> dict[str, float]:
            values = np.array([k[key] for k in kept])
            return {"min": float(values.min()), "median": float(np.median(values)),
                    "max": float(values.max())}

        summary = {"kind": "capture", "source": uri, "kept": len(kept), "near_duplicates_dropped": duplicates,
                   "unreadable": unreadable, "brightness": spread("brightness"),
                   "sharpness": spread("sharpness"), "frames": kept}
        write_document(staging / "capture.json", summary)
    return summary
