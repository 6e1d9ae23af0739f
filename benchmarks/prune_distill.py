"""Structured pruning + distillation of the shipped model (and a short look at the real DeiT-Tiny), in one run.

    .venv/bin/python benchmarks/prune_distill.py [--steps 1500] [--deit-steps 150] [--skip-deit]

1. Shipped digits ViT: heads 50 % + MLP 75 % (the default method: compensated, or Taylor with
   --embed; --digits H,M,E for other ratios), distilled on calibration/digits/train
   (labels unused), evaluated on the 540 held-out digits: MACs, top-1 before/after, ONNX Runtime
   CPU latency of the pruned vs the unpruned FP32 ONNX (batch 1 and 16), then INT8 (vit-safe) of
   the pruned model and its agreement with the pruned FP32.
2. Real DeiT-Tiny (../shared/realdata): heads 25 % + MLP 25 % (compensated), distilled on 300 of the 500
   images, evaluated on the other 200 — a handful of images cannot retrain a 5.7 M-parameter
   model; this shows what short distillation recovers and what it does not.
Token merging on DeiT-Tiny is in benchmarks/tome_deit.py; compensated pruning against its
baselines by MAC target in benchmarks/prune_vit.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402

from vitedge.data import model_labels, open_data  # noqa: E402
from vitedge.drift import compare, topk_accuracy  # noqa: E402
from vitedge.export import export_onnx  # noqa: E402
from vitedge.models.load import load  # noqa: E402
from vitedge.prune.distill import DistillConfig  # noqa: E402
from vitedge.prune.pipeline import PrunePlan, prune  # noqa: E402
from vitedge.prune.plan import PruneRatios  # noqa: E402
from vitedge.quantize.ptq import quantize  # noqa: E402
from vitedge.runtime.base import interleaved_latency  # noqa: E402
from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession  # noqa: E402


def evaluate(onnx_dir: Path, data) -> np.ndarray:
    return OnnxRuntimeSession(onnx_dir / "model.onnx").infer_all(data)


def report(title: str, original: Path, pruned: Path, data, labels, metrics: dict, seconds: float) -> None:
    base, small = evaluate(original, data), evaluate(pruned, data)
    print(f"\n### {title}\n")
    print(f"- MACs {metrics['macs_before'] / 1e6:.1f} M -> {metrics['macs_after'] / 1e6:.1f} M "
          f"({100 * (1 - metrics['mac_share']):.0f}% fewer); parameters {metrics['params_before'] / 1e6:.2f} M "
          f"-> {metrics['params_after'] / 1e6:.2f} M; kept {metrics['structure']['after']}")
    before, after = metrics["before_distill"], metrics["after_distill"]
    print(f"- distillation held-out slice ({before['samples']} of the training images): agreement "
          f"{100 * before['top1_agreement']:.2f}% after pruning -> {100 * after['top1_agreement']:.2f}% "
          f"after {metrics['distill']['steps_run']} steps ({seconds:.0f} s for prune + distill)")
    print(f"- evaluation ({len(labels)} images): top-1 {100 * topk_accuracy(base, labels):.2f}% -> "
          f"{100 * topk_accuracy(small, labels):.2f}%, agreement {100 * compare(base, small).top1_agreement:.2f}%")
    sessions = {"original": OnnxRuntimeSession(original / "model.onnx"),
                "pruned": OnnxRuntimeSession(pruned / "model.onnx")}
    for batch in (1, 16):
        ms = interleaved_latency(sessions, batch, rounds=8, runs=20 if batch == 1 else 8)
        print(f"- ONNX Runtime CPU batch {batch} (alternating rounds): {ms['original']:.2f} ms -> "
              f"{ms['pruned']:.2f} ms ({ms['original'] / ms['pruned']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--deit-steps", type=int, default=150)
    parser.add_argument("--skip-deit", action="store_true")
    parser.add_argument("--digits", default="0.5,0.75,0", help="digits heads,mlp,embed ratios")
    parser.add_argument("--features", type=float, default=0.0, help="--distill-features weight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        train, held = ROOT / "calibration/digits/train", ROOT / "calibration/digits/heldout"
        digits = load("builtin:digits-vit")
        start = time.perf_counter()
        heads, mlp, embed = (float(v) for v in args.digits.split(","))
        metrics = prune(digits, tmp / "digits-pruned", PrunePlan(PruneRatios(heads=heads, mlp=mlp, embed=embed)),
                        data=train, distill=DistillConfig(steps=args.steps, features=args.features))
        seconds = time.perf_counter() - start
        export_onnx(digits, tmp / "digits-onnx", parity_data=held, parity_samples=8)
        export_onnx(load(tmp / "digits-pruned"), tmp / "pruned-onnx", parity_data=held, parity_samples=8)
        data = open_data(held, digits.card.preprocessing, samples=None)
        report(f"digits-vit: heads {heads:.0%} + MLP {mlp:.0%} + embedding {embed:.0%}, {metrics['importance']}, "
               "distilled",
               tmp / "digits-onnx",
               tmp / "pruned-onnx", data, data.labels, metrics, seconds)
        result = quantize(load(tmp / "pruned-onnx"), str(train), tmp / "pruned-int8", eval_data=str(held))
        drift = result.report.drift
        print(f"- pruned + INT8 (vit-safe, symmetric): agreement with the pruned FP32 "
              f"{100 * drift.top1_agreement:.2f}% on {drift.samples}, KL {drift.kl:.4f}, "
              f"{100 * result.report.int8_linear_mac_share:.0f}% of Linear MACs INT8, budget "
              f"{'met' if result.within_budget else 'missed'}")
        if args.skip_deit or not realdata.available():
            print("\nskipped DeiT-Tiny" + ("" if args.skip_deit else f": {realdata.missing_message()}"))
            return
        deit = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)
        realdata.split_image_folders(tmp, deit.card.labels)
        start = time.perf_counter()
        metrics = prune(deit, tmp / "deit-pruned", PrunePlan(PruneRatios(heads=0.25, mlp=0.25)),
                        data=tmp / "calib", distill=DistillConfig(steps=args.deit_steps, batch_size=16,
                                                                  lr=1e-4, features=args.features))
        seconds = time.perf_counter() - start
        export_onnx(deit, tmp / "deit-onnx", parity_data=tmp / "eval", parity_samples=8)
        export_onnx(load(tmp / "deit-pruned"), tmp / "deit-pruned-onnx", parity_data=tmp / "eval",
                    parity_samples=8)
        data = open_data(tmp / "eval", deit.card.preprocessing, samples=None)
        report(f"DeiT-Tiny: heads 25 % + MLP 25 %, {metrics['importance']}, distilled on 300 real images",
               tmp / "deit-onnx", tmp / "deit-pruned-onnx", data, model_labels(deit.card, data),
               metrics, seconds)


if __name__ == "__main__":
    main()
