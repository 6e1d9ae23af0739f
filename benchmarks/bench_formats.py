"""`vitedge bench` across formats on this machine, measured in one run.

    .venv/bin/python benchmarks/bench_formats.py [--runs 50] [--skip-deit]

For the shipped digits ViT and, when ../shared/realdata is present, the real DeiT-Tiny:
PyTorch FP32, the ONNX artifact (ONNX Runtime, optimized at session start), the x86-cpu FP32
bundle (optimized offline), and the x86-cpu INT8 bundle from `vitedge quantize` (vit-safe,
asymmetric for the CPU target), each at batch 1 and 8, with top-1 and agreement with PyTorch
FP32 on held-out images (digits: 540 held-out; DeiT-Tiny: the 200 images not used to calibrate).
Also prints the time to open each bundle (offline optimization pays off there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402
from results import Results  # noqa: E402

from vitedge.bench import bench  # noqa: E402
from vitedge.compile.prepare import compile_bundle  # noqa: E402
from vitedge.export import export_onnx  # noqa: E402
from vitedge.models.load import load  # noqa: E402
from vitedge.quantize.ptq import quantize  # noqa: E402
from vitedge.sessions import load as load_session  # noqa: E402
from vitedge.targets import Scheme, load_target  # noqa: E402


def table(results: Results, title: str, sources: list[str], data: str, runs: int) -> None:
    result = bench(sources, batches=(1, 8), data=data, runs=runs, warmup=5)
    results.table(f"{title}: {result.rows[0].samples} images from {Path(data).name}",
                  ["model", "backend", "precision", "size MiB", "batch", "p50 ms", "p95 ms", "img/s", "top-1",
                   "agreement with the first"],
                  [[r.name, r.backend, r.precision, f"{r.size_mib:.2f}", r.batch, f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}",
                    f"{r.images_per_s:.0f}", f"{100 * r.top1:.2f} %", f"{100 * r.agreement:.2f} %"]
                   for r in result.rows])
    if result.load is not None and result.load.busy:
        results.note("warning: " + result.load.warning("the rows were timed"))
    opened = []
    for source in sources[1:]:
        start = time.perf_counter()
        load_session(source).close()
        opened.append(f"{Path(source).name} {1000 * (time.perf_counter() - start):.0f} ms")
    results.note(f"{title}, time to open: " + ", ".join(opened))


def pipeline(tmp: Path, name: str, loaded, calib: str, evaluation: str, parity) -> list[str]:
    export_onnx(loaded, tmp / f"{name}-onnx", parity_data=parity, parity_samples=8)
    onnx_art = load(tmp / f"{name}-onnx")
    quantize(onnx_art, calib, tmp / f"{name}-int8", eval_data=evaluation,
             scheme=Scheme.ASYMMETRIC)
    compile_bundle(onnx_art, load_target("x86-cpu"), tmp / f"{name}-x86-fp32")
    compile_bundle(load(tmp / f"{name}-int8"), load_target("x86-cpu"), tmp / f"{name}-x86-int8")
    return [str(tmp / f"{name}-{suffix}") for suffix in ("onnx", "x86-fp32", "x86-int8")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--skip-deit", action="store_true")
    args = parser.parse_args()
    results = Results("bench_formats", "vitedge bench across formats")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        held = str(ROOT / "calibration" / "digits" / "heldout")
        digits = pipeline(tmp, "digits", load("builtin:digits-vit"),
                          str(ROOT / "calibration" / "digits" / "train"), held, held)
        table(results, "digits-vit", ["builtin:digits-vit", *digits], held, args.runs)
        if args.skip_deit or not realdata.available():
            results.note("skipped DeiT-Tiny" + ("" if args.skip_deit else f": {realdata.missing_message()}"))
            results.save()
            return
        deit = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)
        realdata.split_image_folders(tmp, deit.card.labels)
        deit_sources = pipeline(tmp, "deit", deit, str(tmp / "calib"), str(tmp / "eval"),
                                realdata.IMAGES)
        # The PyTorch model needs --weights, which bench's sources cannot carry, so the FP32 ONNX
        # artifact is the reference here; its parity with PyTorch is 100% top-1 agreement on all
        # 500 images (benchmarks/export_parity.py).
        table(results, "DeiT-Tiny (real ImageNet weights; agreement is with the FP32 ONNX artifact)",
              deit_sources, str(tmp / "eval"), args.runs)
    results.save()


if __name__ == "__main__":
    main()
