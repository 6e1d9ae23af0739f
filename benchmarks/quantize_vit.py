"""INT8 PTQ on real models, vitedge next to its peers, measured in one run.

    .venv/bin/python benchmarks/quantize_vit.py [--samples 300] [--skip-peers]

Models: the shipped digits ViT (calibrate on calibration/digits/train, evaluate on heldout) and,
when ../shared/realdata is present, the real DeiT-Tiny (calibrate on 300 of the 500 ImageNet
images, evaluate on the other 200; the split is seeded). For each method: top-1 FP32 -> INT8,
agreement with FP32 top-1, KL, share of Linear MACs in INT8, wall time; for vitedge also the
peak resident memory of the `vitedge quantize` process and ONNX Runtime CPU latency.
Peers: NNCF defaults, NNCF ModelType.TRANSFORMER, ONNX Runtime quantize_static defaults and
quantize_static on MatMul/Gemm with symmetric INT8 activations.
"""

from __future__ import annotations

import argparse
import json
import resource
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

from vitedge.data import open_data  # noqa: E402
from vitedge.drift import compare, topk_accuracy  # noqa: E402
from vitedge.export import export_onnx  # noqa: E402
from vitedge.models.load import load  # noqa: E402
from vitedge.quantize.qdq import compute_nodes, int8_mac_share  # noqa: E402
from vitedge.quantize.search import run_onnx  # noqa: E402

VITEDGE = Path(sys.executable).with_name("vitedge")


def row(name, fp32, int8, labels, share, seconds, extra=""):
    drift = compare(fp32, int8)
    top1_fp32, top1_int8 = topk_accuracy(fp32, labels), topk_accuracy(int8, labels)
    print(f"| {name} | {100 * top1_fp32:.2f} → {100 * top1_int8:.2f} | "
          f"{100 * (top1_fp32 - top1_int8):+.2f} | {100 * drift.top1_agreement:.2f}% | "
          f"{drift.kl:.4f} | {100 * share:.0f}% | {seconds:.0f} s | {extra} |", flush=True)


def peers(float_path: Path, calib: np.ndarray, evaluation: np.ndarray, fp32, labels, nodes, tmp: Path):
    import nncf
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(float_path))
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda x: {"input": x})
    for name, kwargs in (("NNCF defaults", {}),
                         ("NNCF ModelType.TRANSFORMER", {"model_type": nncf.ModelType.TRANSFORMER})):
        start = time.perf_counter()
        quantized = nncf.quantize(model, dataset, subset_size=len(calib), **kwargs)
        seconds = time.perf_counter() - start
        row(name, fp32, run_onnx(quantized, evaluation), labels, int8_mac_share(quantized, nodes), seconds)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    for name, kwargs in (("ORT quantize_static defaults", {}),
                         ("ORT quantize_static MatMul/Gemm, symmetric", {
                             "op_types_to_quantize": ["MatMul", "Gemm"], "per_channel": True,
                             "activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                             "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True}})):
        out = tmp / f"ort-{len(kwargs)}.onnx"
        start = time.perf_counter()
        quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, **kwargs)
        seconds = time.perf_counter() - start
        quantized = onnx.load(str(out))
        row(name, fp32, run_onnx(quantized, evaluation), labels, int8_mac_share(quantized, nodes), seconds)


def vitedge_quantize(float_dir: Path, calib: str, evaluation: str, out: Path, *extra: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    completed = subprocess.run([str(VITEDGE), "quantize", str(float_dir), "--calib", calib,
                                "--eval", evaluation, "-o", str(out), "-q", "--overwrite", *extra],
                               capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if completed.returncode not in (0, 1) or not (out / "quant_report.json").is_file():
        raise SystemExit(f"vitedge quantize failed: {completed.stderr[-2000:]}")
    report = json.loads((out / "quant_report.json").read_text())
    return {"report": report, "seconds": seconds, "peak_mib": max(peak, before) / 1024,
            "status": completed.returncode}


def bench(title: str, float_dir: Path, calib_dir: str, eval_dir: str, calib_arr, eval_arr, labels,
          tmp: Path, with_peers: bool) -> None:
    import onnx

    float_path = float_dir / "model.onnx"
    nodes = compute_nodes(onnx.load(str(float_path)))
    fp32 = run_onnx(float_path, eval_arr)
    print(f"\n### {title}: calibration {len(calib_arr)} images, evaluation {len(eval_arr)} images\n")
    print("| method | top-1 FP32 → INT8 | drop | agreement | KL | Linear MACs INT8 | time | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    if with_peers:
        peers(float_path, calib_arr, eval_arr, fp32, labels, nodes, tmp)
    for name, extra in (("vitedge vit-safe (symmetric, TensorRT)", ()),
                        ("vitedge vit-safe (asymmetric, CPU)", ("--scheme", "asymmetric"))):
        result = vitedge_quantize(float_dir, calib_dir, eval_dir, tmp / "vq", *extra)
        report = result["report"]
        int8 = run_onnx(tmp / "vq" / "model.onnx", eval_arr)
        lat = report["latency_ms"]
        row(name, fp32, int8, labels, report["int8_linear_mac_share"], result["seconds"],
            f"peak RSS {result['peak_mib']:.0f} MiB; ORT CPU p50 FP32 {lat['fp32']['p50']:.2f} ms vs "
            f"INT8 {lat['int8']['p50']:.2f} ms; {report['chosen']}; budget "
            f"{'met' if report['budget']['met'] else 'missed'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-peers", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        digits = load("builtin:digits-vit")
        export_onnx(digits, tmp / "digits", parity_samples=4)
        pre = digits.card.preprocessing
        train = ROOT / "calibration" / "digits" / "train"
        held = ROOT / "calibration" / "digits" / "heldout"
        calib = open_data(train, pre, samples=300)
        evaluation = open_data(held, pre, samples=None)
        bench("digits-vit", tmp / "digits", str(train), str(held),
              np.concatenate(list(calib.batches())), np.concatenate(list(evaluation.batches())),
              evaluation.labels, tmp, not args.skip_peers)
        if not realdata.available():
            print(f"\nskipped DeiT-Tiny: {realdata.missing_message()}")
            return
        deit = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)
        export_onnx(deit, tmp / "deit", parity_data=realdata.IMAGES, parity_samples=8)
        realdata.split_image_folders(tmp, deit.card.labels)
        splits = ("calib", "eval")
        card = load(tmp / "deit").card
        label_lookup = {name.replace("/", "_"): i for i, name in enumerate(card.labels)}
        arrays = {}
        for split in splits:
            data = open_data(tmp / split, card.preprocessing, samples=None)
            arrays[split] = (np.concatenate(list(data.batches())),
                             np.array([label_lookup[data.class_names[c]] for c in data.labels]))
        bench("DeiT-Tiny (real ImageNet weights)", tmp / "deit", str(tmp / "calib"), str(tmp / "eval"),
              arrays["calib"][0], arrays["eval"][0], arrays["eval"][1], tmp, not args.skip_peers)


if __name__ == "__main__":
    main()
