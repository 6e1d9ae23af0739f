"""Token merging on the real DeiT-Tiny, measured in one run: top-1, agreement and ONNX Runtime speed.

    .venv/bin/python benchmarks/tome_deit.py [--r 0,4,8,12,16] [--runs 40]

For each r (tokens merged per block): export to ONNX (static token counts, parity-checked
against PyTorch), top-1 on the 500 real ImageNet images and agreement with r=0, and ONNX Runtime
CPU latency at batch 1 (interleaved rounds, median) — with the speed-up over r=0 from the same run.
Also the shipped digits model. Needs ../shared/realdata for DeiT-Tiny.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402

from vitedge.bench import interleaved_latency  # noqa: E402
from vitedge.calibration import open_data  # noqa: E402
from vitedge.drift import compare, topk_accuracy  # noqa: E402
from vitedge.export import export_onnx  # noqa: E402
from vitedge.models import load  # noqa: E402
from vitedge.runtime.onnxrt import OnnxRuntimeSession  # noqa: E402
from vitedge.structure import count_macs  # noqa: E402
from vitedge.tome import apply_tome  # noqa: E402


def sweep(title: str, make, data, labels, rs: list[int], runs: int, tmp: Path, parity) -> None:
    print(f"\n### {title}: {len(labels)} images\n")
    print("| r | tokens after last block | MACs | top-1 | drop | agreement with r=0 | ORT p50 ms | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for r in rs:
        loaded = make()
        info = apply_tome(loaded.module, r)
        macs = count_macs(loaded.module, loaded.card.preprocessing.input_size)
        export_onnx(loaded, tmp / f"{title}-{r}", parity_data=parity, parity_samples=8)
        session = OnnxRuntimeSession(tmp / f"{title}-{r}" / "model.onnx")
        logits = session.infer_all(data, 16)
        rows.append((r, info, macs, logits, session))
    # this machine is noisy: alternate short rounds over all models, median of the rounds
    times = interleaved_latency({str(r): row[-1] for r, row in zip(rs, rows)}, 1, runs=max(5, runs // 6))
    base_logits, base_top1, base_ms = rows[0][3], topk_accuracy(rows[0][3], labels), times[str(rs[0])]
    for r, info, macs, logits, _session in rows:
        top1, ms = topk_accuracy(logits, labels), times[str(r)]
        agreement = compare(base_logits, logits).top1_agreement
        print(f"| {r} | {info['tokens_out']} | {macs / 1e6:.0f} M | {100 * top1:.2f}% | "
              f"{100 * (base_top1 - top1):+.2f} | {100 * agreement:.2f}% | {ms:.2f} | {base_ms / ms:.2f}x |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--r", default="0,6,8,10,12,16")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    rs = [int(r) for r in args.r.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        held = ROOT / "calibration" / "digits" / "heldout"
        digits = load("builtin:digits-vit")
        data = open_data(held, digits.card.preprocessing, samples=None)
        sweep("digits-vit", lambda: load("builtin:digits-vit"), data, data.labels, [0, 4, 8, 12],
              args.runs, tmp, held)
        if not realdata.available():
            print(f"\nskipped DeiT-Tiny: {realdata.missing_message()}")
            return
        make = lambda: load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)  # noqa: E731
        card = make().card
        data = open_data(realdata.IMAGES, card.preprocessing, samples=None)
        by_path = realdata.labels_by_path()
        labels = np.array([by_path[p] for p in data.paths()])
        sweep("DeiT-Tiny", make, data, labels, rs, args.runs, tmp, realdata.IMAGES)


if __name__ == "__main__":
    main()
