"""`vitedge optimize` on the real DeiT-Tiny with pruned candidates, measured in one run.

    .venv/bin/python benchmarks/optimize_deit.py [--prune 0,0.25] [--tome 0] [--distill-steps 150]
                                                 [--work DIR]

Calibrates, prunes and distills on fold 0 of the 500 real ImageNet images and holds out fold 1
(the seeded halves of benchmarks/realdata.py), for the x86-cpu target on this machine; prints
the candidates (MACs, agreement, top-1, p50 latency, speed-up against the r0 FP32 ONNX Runtime
bundle) and the pick. Needs ../shared/realdata.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402

from vitedge.models.load import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prune", default="0,0.25")
    parser.add_argument("--tome", default="0")
    parser.add_argument("--distill-steps", default="150")
    parser.add_argument("--work", type=Path, help="keep the folds and the optimize folder here")
    args = parser.parse_args()
    if not realdata.available():
        raise SystemExit(realdata.missing_message())
    print(realdata.machine_line())
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "fold1").is_dir():
            labels = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS).card.labels
            realdata.two_folds(work, labels)
        out = work / "optimized"
        command = [str(Path(sys.executable).with_name("vitedge")), "optimize", "timm:deit_tiny_patch16_224",
                   "-w", str(realdata.DEIT_WEIGHTS), "--target", "x86-cpu", "--data", str(work / "fold1"),
                   "--calib", str(work / "fold0"), "--samples", "250", "--prune", args.prune, "--tome", args.tome,
                   "--distill-steps", args.distill_steps, "-o", str(out), "--overwrite"]
        subprocess.run(command, check=True)
        document = json.loads((out / "optimize.json").read_text())
        measured = [c for c in document["candidates"] if c["status"] == "measured"]
        base = next(c for c in measured if c["name"] == "r0-fp32-onnxruntime")
        print(f"\nDeiT-Tiny, x86-cpu, calibrate/prune/distill on fold 0 ({document['calibration_samples']}), "
              f"held out fold 1 ({document['eval_samples']}); FP32 top-1 {100 * document['fp32_top1']:.1f}%\n")
        print("| candidate | MACs (M) | agreement | top-1 | p50 ms | speed-up |")
        print("| --- | --- | --- | --- | --- | --- |")
        for c in sorted(measured, key=lambda c: c["p50_ms"]):
            print(f"| {c['name']} | {c['macs'] / 1e6:.0f} | {100 * c['agreement']:.1f}% | {100 * c['top1']:.1f}% | "
                  f"{c['p50_ms']:.2f} | {base['p50_ms'] / c['p50_ms']:.2f}× |")
        print(f"\nchosen (within {document['max_drop']:g} points of top-1): {document['chosen']}")


if __name__ == "__main__":
    main()
