"""Export parity and start-up time, measured in one run.

    .venv/bin/python benchmarks/export_parity.py

Prints: `vitedge --help` wall time; for the shipped digits ViT and (when ../shared/realdata is
present) the real DeiT-Tiny: export time, ONNX Runtime vs PyTorch max-abs / max-rel logit
difference and top-1 agreement on every image, and top-1 accuracy of both on labeled images.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402

from vitedge.data import ImageRecord, ImageSet, iter_batches, open_images  # noqa: E402
from vitedge.export import export_onnx  # noqa: E402
from vitedge.models.load import load  # noqa: E402


def help_time(runs: int = 7) -> float:
    exe = Path(sys.executable).with_name("vitedge")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(exe), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def top1(onnx_path: Path, module, images: ImageSet, card) -> tuple[float, float]:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    hits_torch = hits_onnx = total = 0
    for batch, records in iter_batches(images, card.preprocessing, 50):
        labels = np.array([r.label for r in records])
        with torch.no_grad():
            hits_torch += int((module(torch.from_numpy(batch)).argmax(1).numpy() == labels).sum())
        hits_onnx += int((session.run(None, {"input": batch})[0].argmax(1) == labels).sum())
        total += len(records)
    return hits_torch / total, hits_onnx / total


def report(name: str, loaded, data, labeled: ImageSet | None, workdir: Path) -> None:
    images = data if isinstance(data, ImageSet) else open_images(data)
    start = time.perf_counter()
    result = export_onnx(loaded, workdir / name, parity_data=images.origin,
                         parity_samples=len(images.records))
    seconds = time.perf_counter() - start
    p = result.parity
    print(f"{name}: export+parity {seconds:.1f} s ({result.exporter} exporter), "
          f"{p.samples} images: max abs diff {p.max_abs_diff:.2e}, max rel diff "
          f"{p.max_rel_diff:.2e}, top-1 agreement {100 * p.top1_agreement:.2f}%")
    if labeled is not None:
        acc_torch, acc_onnx = top1(workdir / name / "model.onnx", loaded.module, labeled, loaded.card)
        print(f"{name}: top-1 PyTorch {100 * acc_torch:.2f}% vs ONNX Runtime {100 * acc_onnx:.2f}% "
              f"on {len(labeled.records)} labeled images")


def main() -> None:
    print(f"vitedge --help: {1000 * help_time():.0f} ms (median of 7)")
    with tempfile.TemporaryDirectory() as tmp:
        heldout = open_images(ROOT / "calibration" / "digits" / "heldout")
        report("digits-vit", load("builtin:digits-vit"), heldout, heldout, Path(tmp))
        if not realdata.available():
            print(f"skipped DeiT-Tiny: {realdata.missing_message()}")
            return
        labels = realdata.labels_by_path()
        labeled = ImageSet([ImageRecord(p, c) for p, c in labels.items()], ["imagenet"] * 1000,
                           str(realdata.IMAGES))
        deit = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)
        report("deit-tiny", deit, labeled, labeled, Path(tmp))


if __name__ == "__main__":
    main()
