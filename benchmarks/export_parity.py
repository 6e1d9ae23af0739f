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
from results import Results  # noqa: E402

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


def measure(name: str, loaded, data, labeled: ImageSet | None, workdir: Path) -> list[str]:
    images = data if isinstance(data, ImageSet) else open_images(data)
    start = time.perf_counter()
    result = export_onnx(loaded, workdir / name, parity_data=images.origin,
                         parity_samples=len(images.records))
    seconds = time.perf_counter() - start
    p = result.parity
    row = [name, f"{seconds:.1f}", result.exporter, str(p.samples), f"{p.max_abs_diff:.2e}",
           f"{p.max_rel_diff:.2e}", f"{100 * p.top1_agreement:.2f} %"]
    if labeled is None:
        return row + ["", ""]
    acc_torch, acc_onnx = top1(workdir / name / "model.onnx", loaded.module, labeled, loaded.card)
    return row + [f"{100 * acc_torch:.2f} %", f"{100 * acc_onnx:.2f} %"]


def main() -> None:
    results = Results("export_parity", "Export parity and start-up time")
    results.note(f"`vitedge --help`: {1000 * help_time():.0f} ms (median of 7)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        heldout = open_images(ROOT / "calibration" / "digits" / "heldout")
        rows.append(measure("digits-vit", load("builtin:digits-vit"), heldout, heldout, Path(tmp)))
        if realdata.available():
            labels = realdata.labels_by_path()
            labeled = ImageSet([ImageRecord(p, c) for p, c in labels.items()], ["imagenet"] * 1000,
                               str(realdata.IMAGES))
            deit = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)
            rows.append(measure("deit-tiny (real weights, 500 ImageNet images)", deit, labeled, labeled, Path(tmp)))
        else:
            results.note(f"skipped DeiT-Tiny: {realdata.missing_message()}")
    results.table("Export + parity check: ONNX Runtime against PyTorch on every image",
                  ["model", "export + parity s", "exporter", "images", "max abs diff", "max rel diff",
                   "top-1 agreement", "top-1 PyTorch", "top-1 ONNX Runtime"], rows)
    results.save()


if __name__ == "__main__":
    main()
