"""The conv-attention hybrids edge users deploy (and a depthwise CNN), through vitedge on this CPU.

    .venv/bin/python benchmarks/edge_families.py [--families mobilevit_xxs,...] [--epochs 8]
                                                [--runs 30] [--skip-latency] [--skip-trained]

Two tables, one run:

1. Latency at the real size (timm's architecture as published, random weights: latency does not
   depend on them): the x86-cpu bundle compiled with `--runtime auto` (ONNX Runtime or OpenVINO,
   whichever measured faster here) from the FP32 export and from `vitedge quantize --target
   x86-cpu` (asymmetric, ViT-safe; no evaluation data, so no layer is reverted), timed by `vitedge
   bench` at batch 1 and 8. BF16 is compiled only where the CPU runs it natively (AVX512_BF16 or
   AMX); elsewhere the column says so.
2. INT8 accuracy on a trained small version of each family: the family's architecture with narrow
   stages, trained here for a few minutes on scikit-learn's handwritten digits (the split the
   shipped digits ViT uses, upscaled to 64x64), then quantized for x86-cpu with the held-out
   digits as evaluation data: FP32 and INT8 top-1, agreement with FP32, and the share of the
   weight-layer MACs left in INT8. Random-weight models make INT8 agreement a weak signal; these
   are trained.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import Results  # noqa: E402

# family label, timm architecture, narrow kwargs for the trained small version (64x64 digits)
FAMILIES = [
    ("MobileViT", "mobilevit_xxs", {"img_size": 64}),
    ("MobileViT-v2", "mobilevitv2_050", {"img_size": 64}),
    ("FastViT", "fastvit_t8", {"layers": (1, 1, 2, 1), "embed_dims": (32, 32, 64, 64),
                               "token_mixers": ("repmixer", "repmixer", "repmixer", "attention"),
                               "pos_embs": (None, None, None, None)}),
    ("TinyViT", "tiny_vit_5m_224", {"embed_dims": (32, 48, 64, 96), "depths": (1, 1, 2, 1),
                                    "num_heads": (1, 2, 2, 4), "window_sizes": (4, 4, 4, 2)}),
    ("EfficientViT (MIT)", "efficientvit_b0", {"widths": (8, 16, 32, 48, 64), "depths": (1, 1, 1, 2, 2),
                                               "head_dim": 16, "head_widths": (128, 160)}),
    ("EfficientViT (MSRA)", "efficientvit_m0", {"img_size": 64, "embed_dim": (32, 64, 96), "depth": (1, 1, 1),
                                                "num_heads": (2, 2, 2), "window_size": (4, 4, 4)}),
    ("PVTv2", "pvt_v2_b0", {"depths": (1, 1, 2, 1), "embed_dims": (32, 48, 64, 96), "num_heads": (1, 1, 2, 2)}),
    ("XCiT", "xcit_nano_12_p16_224", {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 4,
                                      "num_heads": 4, "cls_attn_layers": 1}),
    ("EfficientFormerV2", "efficientformerv2_s0", {"img_size": 64, "depths": (1, 1, 2, 2),
                                                   "embed_dims": (32, 48, 64, 96), "num_vit": 1}),
    ("RepViT", "repvit_m0_9", {"embed_dim": (32, 48, 64, 96), "depth": (1, 1, 2, 1)}),
    ("EdgeNeXt", "edgenext_xx_small", {"depths": (1, 1, 2, 1), "dims": (32, 48, 64, 96), "heads": (2, 2, 2, 2)}),
    ("Twins-PCPVT", "twins_pcpvt_small", {"img_size": 64, "depths": (1, 1, 2, 1), "embed_dims": (32, 48, 64, 96),
                                          "num_heads": (1, 1, 2, 2)}),
    ("MobileNetV3 (depthwise CNN)", "mobilenetv3_small_050", {}),
]
SIZE = 64
PRE = {"input_size": (SIZE, SIZE), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
       "interpolation": "bilinear", "crop_pct": 1.0, "resize_mode": "squash"}
DIGITS = ROOT / "calibration" / "digits"


def ms(row) -> str:
    return f"{row.p50_ms:.2f}" if row is not None and row.p50_ms is not None else "—"


def latency(results: Results, tmp: Path, families: list[tuple[str, str, dict]], runs: int) -> None:
    from vitedge.bench import bench
    from vitedge.compile.prepare import compile_bundle
    from vitedge.data import sample_photos
    from vitedge.export import export_onnx
    from vitedge.models.load import load
    from vitedge.quantize.ptq import quantize
    from vitedge.runtime.openvino.loader import bf16_here

    bf16 = bf16_here()
    rows, slower = [], []
    photos = tmp / "photos"
    photos.mkdir()
    sample_photos(photos, 32)
    for label, name, _ in families:
        started = time.perf_counter()
        folder = tmp / f"full-{name}"
        loaded = load(f"timm:{name}", model_kwargs={"num_classes": 1000})
        export_onnx(loaded, folder / "onnx", parity_samples=4)
        # no layer is reverted (--max-drop 100): the latency of INT8 as quantized; natural photos
        # calibrate (random weights: the figures are latency only)
        quantize(folder / "onnx", str(photos), folder / "int8", target="x86-cpu", samples=32, eval_data=str(photos),
                 max_drop=100.0)
        made = {"fp32": compile_bundle(folder / "onnx", "x86-cpu", folder / "fp32", runtime="auto"),
                "int8": compile_bundle(folder / "int8", "x86-cpu", folder / "int8-x86", runtime="auto")}
        if bf16:
            made["bf16"] = compile_bundle(folder / "onnx", "x86-cpu", folder / "bf16", precision="bf16",
                                          runtime="openvino")
        timed = bench([str(b.path) for b in made.values()], batches=(1, 8), runs=runs, warmup=5)
        rows_in_order = iter(timed.rows)  # one row per source and batch, in that order
        cell = {(kind, batch): next(rows_in_order) for kind in made for batch in (1, 8)}
        size = loaded.card.preprocessing.input_size
        ratio = [cell["fp32", b].p50_ms / cell["int8", b].p50_ms for b in (1, 8)]
        if min(ratio) < 1.0:
            slower.append(f"{label} (INT8 {ratio[0]:.2f}× / {ratio[1]:.2f}× the FP32 speed at batch 1 / 8)")
        share = made["int8"].passport.int8_mac_share
        rows.append([label, name, f"{size[0]}x{size[1]}", f"{loaded.card.macs / 1e6:.0f} M",
                     f"{made['fp32'].settings.runtime}", ms(cell["fp32", 1]), ms(cell["fp32", 8]),
                     f"{made['int8'].settings.runtime}", ms(cell["int8", 1]), ms(cell["int8", 8]),
                     f"{ratio[0]:.2f}× / {ratio[1]:.2f}×", f"{100 * share:.0f} %" if share is not None else "—",
                     (f"{ms(cell['bf16', 1])} / {ms(cell['bf16', 8])}" if bf16 else "no native BF16 here")])
        results.note(f"{label}: {time.perf_counter() - started:.0f} s"
                     + (f"; warning: {timed.load.warning('the rows were timed')}"
                        if timed.load is not None and timed.load.busy else ""))
    results.table("x86-cpu bundles at the published size (random weights), `--runtime auto`, p50 ms",
                  ["family", "timm", "input", "MACs", "FP32 runtime", "FP32 bs1", "FP32 bs8", "INT8 runtime",
                   "INT8 bs1", "INT8 bs8", "INT8 speed-up bs1 / bs8", "MACs in INT8", "BF16 bs1 / bs8"], rows)
    results.note("INT8 is not faster than FP32 on this CPU for: " + "; ".join(slower) if slower else
                 "INT8 is faster than FP32 for every family on this CPU")


def train(name: str, kwargs: dict, epochs: int, weights: Path) -> tuple[float, float]:
    """Train the narrow family model on the digits; return (seconds, held-out top-1)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from vitedge.data import iter_batches, open_images
    from vitedge.models.load import load

    def tensors(split: str, pre) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for batch, records in iter_batches(open_images(DIGITS / split), pre, batch_size=256):
            xs.append(torch.from_numpy(batch))
            ys.extend(r.label for r in records)
        return torch.cat(xs), torch.tensor(ys)

    torch.manual_seed(0)
    loaded = load(f"timm:{name}", model_kwargs={"num_classes": 10, **kwargs}, preprocessing=PRE, compute_macs=False)
    model = loaded.module
    x, y = tensors("train", loaded.card.preprocessing)
    xh, yh = tensors("heldout", loaded.card.preprocessing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    batch = 64
    steps = epochs * math.ceil(len(y) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            loss = F.cross_entropy(model(x[index]), y[index], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        top1 = float((torch.cat([model(xh[i:i + 256]) for i in range(0, len(yh), 256)]).argmax(1) == yh)
                     .float().mean())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return time.perf_counter() - started, top1


def trained(results: Results, tmp: Path, families: list[tuple[str, str, dict]], epochs: int) -> None:
    from vitedge.export import export_onnx
    from vitedge.models.load import load
    from vitedge.quantize.ptq import BudgetMissed, quantize

    rows = []
    for label, name, kwargs in families:
        folder = tmp / f"small-{name}"
        folder.mkdir(parents=True)
        seconds, torch_top1 = train(name, kwargs, epochs, folder / "model.safetensors")
        loaded = load(f"timm:{name}", weights=folder / "model.safetensors",
                      model_kwargs={"num_classes": 10, **kwargs}, preprocessing=PRE,
                      labels=[str(d) for d in range(10)])
        export_onnx(loaded, folder / "onnx", parity_data=str(DIGITS / "heldout"), parity_samples=8)
        try:
            report = quantize(folder / "onnx", str(DIGITS / "train"), folder / "int8", target="x86-cpu",
                              eval_data=str(DIGITS / "heldout"), samples=300).report
            met = "met"
        except BudgetMissed as missed:
            report, met = missed.result.report, "MISSED"
        accuracy, drift = report.accuracy, report.drift
        rows.append([label, f"{loaded.card.params / 1e3:.0f} k", f"{seconds:.0f} s", f"{100 * torch_top1:.2f} %",
                     f"{100 * accuracy.fp32_top1:.2f} %", f"{100 * accuracy.int8_top1:.2f} %",
                     f"{100 * drift.top1_agreement:.2f} %", f"{100 * report.int8_linear_mac_share:.0f} %",
                     f"{met} ({100 * (accuracy.int8_top1 - accuracy.fp32_top1):+.2f} pts)"])
    results.table(f"INT8 (x86-cpu, asymmetric) on small trained versions: {SIZE}x{SIZE} digits, "
                  f"{epochs} epochs, 540 held-out images",
                  ["family", "params", "training", "PyTorch top-1", "FP32 ONNX top-1", "INT8 top-1", "agreement",
                   "MACs in INT8", "budget 0.5 pts"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated timm names (default: all)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-trained", action="store_true")
    args = parser.parse_args()
    wanted = set(args.families.split(",")) if args.families else None
    families = [f for f in FAMILIES if wanted is None or f[1] in wanted]
    part = "_trained" if args.skip_latency else "_latency" if args.skip_trained else ""  # one file per part run
    results = Results("edge_families" + part, "Conv-attention hybrids and a depthwise CNN on this CPU"
                      + {"_trained": " (INT8 accuracy on trained small versions)",
                         "_latency": " (latency at the published size)"}.get(part, ""))
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_trained:
            trained(results, tmp, families, args.epochs)
        if not args.skip_latency:
            latency(results, tmp, families, args.runs)
    results.save()


if __name__ == "__main__":
    main()
