"""A camera-like video made from the shipped held-out digits, for the demo, tests and benchmarks.

Each held-out digit is shown for `hold` frames, scaled to fill the centre of a 640x480 frame,
drifting slowly, on a noisy dark background whose light changes slowly (and dips once, like a
cloud over a window). The ground-truth digit of every frame goes to `<video>.labels.json`.

    python scripts/make_digits_video.py demo-out/digits-camera.mp4 --frames 300
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from vitedge.errors import InputError

HELDOUT = Path(__file__).resolve().parents[1] / "calibration" / "digits" / "heldout"


def make_digits_video(out: str | Path, *, frames: int = 300, fps: float = 30.0,
                      size: tuple[int, int] = (640, 480), hold: int = 15, seed: int = 0,
                      images: Path = HELDOUT) -> Path:
    import cv2

    from vitedge.data import open_images

    out = Path(out)
    if frames < 1:
        raise InputError(f"--frames {frames} must be at least 1")
    records = open_images(images).records
    if not records or records[0].label is None:
        raise InputError(f"{images} is not a labeled image folder")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    width, height = size
    side = int(min(width, height) * 0.9)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial{out.suffix}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"OpenCV cannot write {out}", "use a .mp4 or .avi path")
    labels: list[int] = []
    try:
        digit = None
        for index in range(frames):
            if index % hold == 0:
                record = records[order[(index // hold) % len(records)]]
                gray = cv2.imread(str(record.path), cv2.IMREAD_GRAYSCALE)
                digit = cv2.resize(gray, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
                label = int(record.label)
            t = index / fps
            light = 0.9 + 0.1 * math.sin(2 * math.pi * t / 8.0)
            light *= 1.0 - 0.35 * math.exp(-((t - frames / fps * 0.6) ** 2) / 2.0)  # a passing cloud
            frame = np.full((height, width), 25.0, np.float32)
            dx = int(12 * math.sin(2 * math.pi * t / 3.0))
            dy = int(8 * math.cos(2 * math.pi * t / 4.0))
            x0, y0 = (width - side) // 2 + dx, (height - side) // 2 + dy
            region = frame[y0:y0 + side, x0:x0 + side]
            np.maximum(region, digit, out=region)
            frame = frame * light + rng.normal(0, 10, frame.shape)
            bgr = np.repeat(np.clip(frame, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
            bgr[:, :, 2] = np.clip(bgr[:, :, 2].astype(np.int16) + 12, 0, 255)  # warm light
            writer.write(bgr)
            labels.append(label)
    except BaseException:
        writer.release()
        partial.unlink(missing_ok=True)
        raise
    writer.release()
    partial.replace(out)
    out.with_name(out.name + ".labels.json").write_text(json.dumps(
        {"fps": fps, "size": [width, height], "hold": hold, "labels": labels}) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = make_digits_video(args.out, frames=args.frames, fps=args.fps, seed=args.seed)
    print(f"wrote {path} ({args.frames} frames at {args.fps:g} fps) and {path.name}.labels.json")


if __name__ == "__main__":
    main()
