"""Token merging on the real DeiT-Tiny, measured in one run: top-1, agreement and ONNX Runtime speed.

    .venv/bin/python benchmarks/tome_deit.py [--r 0,12,14,16,17,18] [--from 0,2] [--runs 40] [--batch 1]

For each r (tokens merged per block) and first merging block (--from; "d" = vitedge's default,
a sixth of the depth): export to ONNX (static token counts, parity-checked
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
from results import Results  # noqa: E402

from vitedge.data import open_data  # noqa: E402
from vitedge.drift import compare  # noqa: E402
from vitedge.export import export_onnx  # noqa: E402
from vitedge.models.load import load  # noqa: E402
from vitedge.models.structure import count_macs  # noqa: E402
from vitedge.prune.tome import apply_tome  # noqa: E402
from vitedge.runtime.base import interleaved_latency  # noqa: E402
from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession  # noqa: E402


def sweep(results: Results, title: str, make, data, labels, configs: list[tuple[int, int | None]], runs: int,
          batch: int, tmp: Path, parity) -> None:
    rows = []
    for r, start in [(0, 0), *configs]:
        loaded = make()
        info = apply_tome(loaded.module, r, start)
        macs = count_macs(loaded.module, loaded.card.preprocessing.input_size)
        name = f"{title}-{r}-{info['start']}"
        export_onnx(loaded, tmp / name, parity_data=parity, parity_samples=8)
        session = OnnxRuntimeSession(tmp / name / "model.onnx")
        rows.append((name, info, macs, session.infer_all(data, 16), session))
    # this machine is noisy: alternate short rounds over all models, median of the rounds
    times = interleaved_latency({row[0]: row[-1] for row in rows}, batch, rounds=8, runs=max(5, runs // 8))
    base_logits, base_ms = rows[0][3], times[rows[0][0]]
    base_right = base_logits.argmax(1) == labels
    table = []
    for name, info, macs, logits, _session in rows:
        right, ms = logits.argmax(1) == labels, times[name]
        drift = compare(base_logits, logits)
        table.append([info["r"], info["start"], info["tokens_out"], f"{macs / 1e6:.0f} M", f"{100 * right.mean():.2f} %",
                      f"{100 * (base_right.mean() - right.mean()):+.2f}",
                      f"{int((right & ~base_right).sum())} / {int((base_right & ~right).sum())}",
                      f"{100 * drift.top1_agreement:.2f} %", f"{drift.kl:.4f}", f"{ms:.2f}", f"{base_ms / ms:.2f}×"])
    results.table(f"{title}: {len(labels)} images, ONNX Runtime CPU batch {batch}",
                  ["r", "from block", "tokens after last block", "MACs", "top-1", "drop", "fixed / broken",
                   "agreement with r=0", "KL", "ORT p50 ms", "speed-up"], table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--r", default="12,14,16")
    parser.add_argument("--from", dest="starts", default="0,d", help="first merging blocks; d = default")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    starts = [None if s == "d" else int(s) for s in args.starts.split(",")]
    configs = [(int(r), start) for start in starts for r in args.r.split(",") if int(r)]
    results = Results("tome_deit", "Token merging (ToMe) by r")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        held = ROOT / "calibration" / "digits" / "heldout"
        digits = load("builtin:digits-vit")
        data = open_data(held, digits.card.preprocessing, samples=None)
        sweep(results, "digits-vit", lambda: load("builtin:digits-vit"), data, data.labels,
              [(4, None), (8, None), (12, None)], args.runs, args.batch, tmp, held)
        if not realdata.available():
            results.note(f"skipped DeiT-Tiny: {realdata.missing_message()}")
            results.save()
            return
        make = lambda: load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)  # noqa: E731
        card = make().card
        data = open_data(realdata.IMAGES, card.preprocessing, samples=None)
        by_path = realdata.labels_by_path()
        labels = np.array([by_path[p] for p in data.paths()])
        sweep(results, "DeiT-Tiny (real weights, 500 ImageNet images)", make, data, labels, configs, args.runs,
              args.batch, tmp, realdata.IMAGES)
    results.save()


if __name__ == "__main__":
    main()
