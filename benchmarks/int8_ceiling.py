"""How much FP32 agreement can INT8 activations keep at all? Fake-quantized DeiT-Tiny in PyTorch.

    .venv/bin/python benchmarks/int8_ceiling.py

Every Linear layer gets per-channel symmetric INT8 weights and INT8 inputs at one of four
granularities, calibrated by plain min/max on 300 real images, evaluated on the other 200
(the split of benchmarks/quantize_vit.py):
  tensor   one static scale per tensor   (what TensorRT's explicit QDQ runs)
  channel  one static scale per channel  (what SmoothQuant-style scale migration approximates)
  image    one dynamic scale per image   (dynamic quantization)
  token    one dynamic scale per token   (not expressible as static QDQ)
plus weights-only INT8. It says where the INT8 error of a ViT lives, so the quantizer's
targets can be judged against what is reachable.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402

from vitedge.data import ImageRecord, ImageSet, iter_batches  # noqa: E402
from vitedge.drift import compare  # noqa: E402
from vitedge.models.load import load  # noqa: E402


def fake_quantize(model, calibration, granularity):
    import torch

    quantized = copy.deepcopy(model)
    linears = [(n, m) for n, m in quantized.named_modules() if isinstance(m, torch.nn.Linear)]
    ranges: dict[str, torch.Tensor] = {}

    def observe(name):
        def hook(_module, inputs):
            x = inputs[0].detach().abs()
            value = x.amax(dim=tuple(range(x.ndim - 1))) if granularity == "channel" else x.max()
            ranges[name] = torch.maximum(ranges[name], value) if name in ranges else value
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in linears]
    with torch.no_grad():
        for start in range(0, len(calibration), 50):
            quantized(calibration[start:start + 50])
    for handle in handles:
        handle.remove()

    def quantize_input(name):
        def hook(_module, inputs):
            x = inputs[0]
            if granularity == "image":
                peak = x.abs().amax(dim=tuple(range(1, x.ndim)), keepdim=True)
            elif granularity == "token":
                peak = x.abs().amax(dim=-1, keepdim=True)
            else:
                peak = ranges[name]
            scale = (peak / 127).clamp_min(1e-8)
            return (torch.clamp(torch.round(x / scale), -128, 127) * scale,)
        return hook

    for name, module in linears:
        weight = module.weight.data
        scale = (weight.abs().amax(1, keepdim=True) / 127).clamp_min(1e-8)
        module.weight.data = torch.clamp(torch.round(weight / scale), -127, 127) * scale
        if granularity != "weights-only":
            module.register_forward_pre_hook(quantize_input(name))
    return quantized


def main() -> None:
    import torch

    if not realdata.available():
        print(f"skipped: {realdata.missing_message()}")
        return
    torch.set_num_threads(2)
    model = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS).module.eval()
    pre = load("timm:deit_tiny_patch16_224", compute_macs=False).card.preprocessing
    items = sorted(realdata.labels_by_path().items())
    order = np.random.default_rng(0).permutation(len(items))

    def tensors(indices):
        records = [ImageRecord(items[i][0], items[i][1]) for i in sorted(indices)]
        return torch.from_numpy(np.concatenate([b for b, _ in iter_batches(ImageSet(records), pre, 50)]))

    calibration, evaluation = tensors(order[:300]), tensors(order[300:])
    with torch.no_grad():
        reference = torch.cat([model(evaluation[i:i + 50]) for i in range(0, len(evaluation), 50)])
    print("| INT8 inputs of every Linear | agreement with FP32 | KL |\n| --- | --- | --- |")
    for granularity in ("weights-only", "tensor", "channel", "image", "token"):
        quantized = fake_quantize(model, calibration, granularity)
        with torch.no_grad():
            logits = torch.cat([quantized(evaluation[i:i + 50]) for i in range(0, len(evaluation), 50)])
        drift = compare(reference.numpy(), logits.numpy())
        print(f"| {granularity} | {100 * drift.top1_agreement:.1f} % | {drift.kl:.4f} |", flush=True)


if __name__ == "__main__":
    main()
