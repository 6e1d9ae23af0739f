"""Block-wise reconstruction (BRECQ / QDrop style) of DeiT-Tiny's INT8 model: does it take
agreement with FP32 past what post-training quantization reaches, in the TensorRT scheme?

    .venv/bin/python benchmarks/block_reconstruction.py [--iterations 300] [--batch 16]

Fake quantization in PyTorch on the real DeiT-Tiny, the two folds of benchmarks/quantize_vit.py
(calibrate on one seeded half of the 500 images, evaluate on the other, swap). Every Linear layer
and the patch convolution take per-channel symmetric INT8 weights and per-tensor symmetric INT8
inputs (zero-point 0: what TensorRT runs); residual adds, LayerNorm, Softmax and GELU stay float
(vitedge's linear-only recipe). Activation ranges: the mean over calibration images of each
image's largest |value| (NNCF's mean-minmax, symmetric).

  PTQ             weights rounded to nearest, ranges as calibrated.
  reconstructed   then, block by block, each transformer block's weight rounding (AdaRound: a
                  learned up/down per weight, annealed to hard) and its activation step sizes
                  (LSQ) are fitted so that the block, fed the quantized model's own input,
                  reproduces the FP32 block's output on the calibration images (MSE), with QDrop
                  (every activation quantizer skipped at random per element with p = 0.5 while
                  fitting). The papers fit 20,000 iterations per block on a GPU; this runs
                  `--iterations` per block on the CPU.

Prints agreement with FP32 top-1 and KL over all 500 images (both folds), the time, the CPU.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402
from results import machine_line  # noqa: E402

from vitedge.data import ImageRecord, ImageSet, iter_batches  # noqa: E402
from vitedge.drift import compare  # noqa: E402
from vitedge.models.load import load  # noqa: E402

ZETA, GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch


@functools.cache
def quantizers():
    """The fake-quantizer module class (built on first use: torch is imported inside)."""
    import torch
    from torch import nn

    def round_ste(x):
        return (x.round() - x).detach() + x

    class Quantized(nn.Module):
        """A Linear or Conv2d with fake-quantized weights (per output channel) and input (per tensor)."""

        def __init__(self, layer: nn.Module, input_peak: float):
            super().__init__()
            self.layer = layer
            weight = layer.weight.detach()
            flat = weight.reshape(weight.shape[0], -1)
            self.register_buffer("w_scale", (flat.abs().amax(1) / 127).clamp_min(1e-8)
                                 .reshape(-1, *[1] * (weight.ndim - 1)))
            scaled = weight / self.w_scale
            self.register_buffer("w_floor", scaled.floor())
            rest = (scaled - scaled.floor()).clamp(1e-4, 1 - 1e-4)
            self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))  # h(alpha) = rest
            self.a_scale = nn.Parameter(torch.tensor(max(input_peak, 1e-8) / 127))
            self.rounding = "nearest"  # nearest | soft | hard
            self.drop = 0.0  # QDrop: probability of skipping the input quantizer per element

        def soft(self):
            return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

        def weight(self):
            if self.rounding == "nearest":
                steps = (self.layer.weight.detach() / self.w_scale).round()
            elif self.rounding == "soft":
                steps = self.w_floor + self.soft()
            else:
                steps = self.w_floor + (self.alpha.detach() >= 0).float()
            return torch.clamp(steps, -127, 127) * self.w_scale

        def forward(self, x):
            quantized = torch.clamp(round_ste(x / self.a_scale), -128, 127) * self.a_scale
            if self.drop > 0:
                quantized = torch.where(torch.rand_like(x) < self.drop, x, quantized)
            if isinstance(self.layer, nn.Linear):
                return nn.functional.linear(quantized, self.weight(), self.layer.bias)
            return self.layer._conv_forward(quantized, self.weight(), self.layer.bias)

    return Quantized


def quantize_model(model, calibration):
    """A copy of `model` with every Linear and Conv2d wrapped in a fake quantizer, input ranges
    calibrated as the mean over images of each image's largest |input|."""
    import torch
    from torch import nn

    Quantized = quantizers()
    quantized = copy.deepcopy(model)
    layers = [(n, m) for n, m in quantized.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    peaks: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
    handles = [m.register_forward_pre_hook(
        lambda _m, inputs, name=n: peaks[name].append(inputs[0].detach().abs().flatten(1).amax(1)))
        for n, m in layers]
    with torch.no_grad():
        for start in range(0, len(calibration), 25):
            quantized(calibration[start:start + 25])
    for handle in handles:
        handle.remove()
    for name, layer in layers:
        parent = quantized.get_submodule(name.rsplit(".", 1)[0]) if "." in name else quantized
        setattr(parent, name.rsplit(".", 1)[-1], Quantized(layer, float(torch.cat(peaks[name]).mean())))
    return quantized


def block_inputs(model, images, blocks):
    """The inputs of the transformer blocks numbered in `blocks` for `images`, in one pass."""
    import torch

    captured: dict[int, list] = {index: [] for index in blocks}
    handles = [model.blocks[index].register_forward_pre_hook(
        lambda _m, inputs, index=index: captured[index].append(inputs[0].detach())) for index in blocks]
    with torch.no_grad():
        for start in range(0, len(images), 25):
            model(images[start:start + 25])
    for handle in handles:
        handle.remove()
    return {index: torch.cat(parts) for index, parts in captured.items()}


def in_batches(block, inputs):
    import torch

    with torch.no_grad():
        return torch.cat([block(inputs[i:i + 25]) for i in range(0, len(inputs), 25)])


def reconstruct(fp32_model, quantized, calibration, iterations, batch, say):
    """Fit each block's weight rounding and activation steps to the FP32 block's output; each
    block is fed the output of the blocks before it as fitted (hard rounding)."""
    import torch

    Quantized = quantizers()
    generator = torch.Generator().manual_seed(0)
    count = len(quantized.blocks)
    fp32_in = block_inputs(fp32_model, calibration, range(count))
    own_in = block_inputs(quantized, calibration, [0])[0]
    for index, block in enumerate(quantized.blocks):
        started = time.perf_counter()
        target = fp32_in[index + 1] if index + 1 < count else in_batches(fp32_model.blocks[index], fp32_in[index])
        layers = [m for m in block.modules() if isinstance(m, Quantized)]
        for layer in layers:
            layer.rounding, layer.drop = "soft", 0.5
        optimizer = torch.optim.Adam([
            {"params": [layer.alpha for layer in layers], "lr": 1e-3},
            {"params": [layer.a_scale for layer in layers], "lr": 4e-5}])
        warmup = int(0.2 * iterations)
        reconstruction = torch.zeros(())
        for step in range(iterations):
            picks = torch.randint(0, len(own_in), (batch,), generator=generator)
            reconstruction = torch.nn.functional.mse_loss(block(own_in[picks]), target[picks])
            rounding = torch.zeros(())
            if step >= warmup:  # AdaRound: push every weight to up or down, harder as it goes
                beta = 20 + (2 - 20) * (step - warmup) / max(1, iterations - warmup)
                rounding = 0.01 * sum((1 - (2 * layer.soft() - 1).abs().pow(beta)).sum() for layer in layers)
            optimizer.zero_grad()
            (reconstruction + rounding).backward()
            optimizer.step()
        for layer in layers:
            layer.rounding, layer.drop = "hard", 0.0
        own_out = in_batches(block, own_in)
        error = torch.nn.functional.mse_loss(own_out, target).item()
        own_in = own_out  # the next block's input, as the quantized model computes it
        say(f"  block {index}: {time.perf_counter() - started:.0f} s, output MSE to FP32 {error:.3g} "
            f"(last fit loss {reconstruction.item():.3g})")
    return quantized


def logits_of(model, images):
    import torch

    with torch.no_grad():
        return torch.cat([model(images[i:i + 25]) for i in range(0, len(images), 25)]).numpy()


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=300, help="fitting steps per block")
    parser.add_argument("--batch", type=int, default=16, help="images per fitting step")
    args = parser.parse_args()
    print(f"{machine_line()}; torch {torch.__version__}")
    if not realdata.available():
        print(f"skipped: {realdata.missing_message()}")
        return
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS).module.eval()
    pre = load("timm:deit_tiny_patch16_224", compute_macs=False).card.preprocessing
    items = sorted(realdata.labels_by_path().items())
    order = np.random.default_rng(0).permutation(len(items))  # the folds of realdata.two_folds
    half = len(items) // 2

    def tensors(indices):
        records = [ImageRecord(items[i][0], items[i][1]) for i in indices]
        return torch.from_numpy(np.concatenate([b for b, _ in iter_batches(ImageSet(records), pre, 50)]))

    folds = [tensors(order[:half]), tensors(order[half:])]
    results: dict[str, list[np.ndarray]] = {"PTQ": [], "reconstructed": []}
    references = []
    seconds = []
    for k in (0, 1):
        calibration, evaluation = folds[k], folds[1 - k]
        references.append(logits_of(model, evaluation))
        quantized = quantize_model(model, calibration)
        results["PTQ"].append(logits_of(quantized, evaluation))
        started = time.perf_counter()
        print(f"fold {k}: reconstructing {len(quantized.blocks)} blocks, {args.iterations} iterations of "
              f"{args.batch} images each", flush=True)
        reconstruct(model, quantized, calibration, args.iterations, args.batch,
                    lambda message: print(message, flush=True))
        seconds.append(time.perf_counter() - started)
        results["reconstructed"].append(logits_of(quantized, evaluation))
    reference = np.concatenate(references)
    print(f"\nDeiT-Tiny, symmetric per-tensor INT8 inputs of every Linear, two folds of {half}; "
          f"agreement and KL over all {len(reference)} images\n")
    print("| method | agreement with FP32 | KL | time / fold |\n| --- | --- | --- | --- |")
    for name, parts in results.items():
        drift = compare(reference, np.concatenate(parts))
        spent = f"{np.mean(seconds):.0f} s" if name == "reconstructed" else "—"
        print(f"| {name} | {100 * drift.top1_agreement:.1f} % | {drift.kl:.4f} | {spent} |")
    print(f"\n(reconstruction: {args.iterations} iterations per block, batch {args.batch}; "
          f"{math.ceil(args.iterations * args.batch / half)} passes over the calibration half)")


if __name__ == "__main__":
    main()
