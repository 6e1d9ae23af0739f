"""Train the shipped default model: a small ViT on scikit-learn's real handwritten digits.

Reproducible (fixed seeds, CPU): writes
  calibration/digits/{train,heldout}/<digit>/<index>.png   the split as ImageFolders
  vitedge/assets/digits-vit/{model.safetensors,card.json}  the trained artifact
  vitedge/assets/samples/<digit>.png                       one held-out image per class

Training reads the PNGs through vitedge's own preprocessing, so the model learns from exactly
the tensors that calibration, evaluation and the camera loop will feed it.

    .venv/bin/python scripts/train_digits_vit.py [--epochs 150]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitedge.artifact import write_card  # noqa: E402
from vitedge.card import Interpolation, Preprocessing, ResizeMode  # noqa: E402
from vitedge.data import iter_batches, open_images  # noqa: E402
from vitedge.example_data import write_digits  # noqa: E402
from vitedge.models.load import load  # noqa: E402
from vitedge.outputs import OutputKind, writing  # noqa: E402
from vitedge.versions import tool_versions  # noqa: E402

ARCH = "vit_tiny_patch16_224"
KWARGS = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4,
          "num_classes": 10}
PRE = Preprocessing(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                    interpolation=Interpolation.BILINEAR, crop_pct=1.0,
                    resize_mode=ResizeMode.SHORTER_CROP)
DATA = ROOT / "calibration" / "digits"
ASSET = ROOT / "vitedge" / "assets" / "digits-vit"
SAMPLES = ROOT / "vitedge" / "assets" / "samples"
SEED = 0


def write_split() -> None:
    """The digits as 32x32 PNG ImageFolders, split 70/30 (the same files `vitedge example-data` writes)."""
    if DATA.exists():
        shutil.rmtree(DATA)
    write_digits(DATA)


def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = open_images(DATA / split)
    xs, ys = [], []
    for batch, records in iter_batches(images, PRE, batch_size=256):
        xs.append(torch.from_numpy(batch))
        ys.extend(r.label for r in records)
    return torch.cat(xs), torch.tensor(ys)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small affine jitter, contrast/brightness change and sensor noise (camera-like)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * math.radians(20)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.25
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = -1.0  # normalized black
    x = F.grid_sample(x - background, grid, align_corners=False) + background
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)
    bright = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.4
    noise = torch.randn(x.shape, generator=generator) * 0.05
    return ((x + 1) * contrast - 1 + bright + noise).clamp(-1, 1)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    write_split()
    x_train, y_train = tensors("train")
    x_held, y_held = tensors("heldout")
    print(f"train {len(y_train)} images, held-out {len(y_held)} images")

    model = load(f"timm:{ARCH}", model_kwargs=KWARGS, compute_macs=False).module
    assert model is not None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    batch_size = 64
    steps = args.epochs * math.ceil(len(y_train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps,
                                                   pct_start=0.05)
    generator = torch.Generator().manual_seed(SEED)
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = model(augment(x_train[idx], generator))
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}  held-out top-1 "
                  f"{100 * evaluate(model, x_held, y_held):.2f}%  ({time.time() - started:.0f} s)")

    train_acc, held_acc = evaluate(model, x_train, y_train), evaluate(model, x_held, y_held)
    print(f"final: train top-1 {100 * train_acc:.2f}%, held-out top-1 {100 * held_acc:.2f}%")

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        card = load(f"timm:{ARCH}", weights=weights, model_kwargs=KWARGS).card
        card.preprocessing = PRE
        # timm's architecture name alone (vit_tiny_patch16_224) would call a 32x32, patch-4 model
        # a 224x224 ViT-Tiny, and Triton packages inherit the name
        card.architecture = "VisionTransformer (digits-vit)"
        card.labels = [str(d) for d in range(10)]
        card.warnings = []
        card.source = {"kind": "timm", "name": ARCH, "kwargs": KWARGS, "weights": "model.safetensors"}
        card.metrics = {"heldout_top1": round(held_acc, 4), "train_top1": round(train_acc, 4),
                        "heldout_images": len(y_held), "train_images": len(y_train)}
        card.lineage = [{"step": "train", "script": "scripts/train_digits_vit.py",
                         "params": {"epochs": args.epochs, "seed": SEED, "batch_size": batch_size,
                                    "data": "sklearn.datasets.load_digits, 70/30 stratified"},
                         "metrics": dict(card.metrics),
                         "tools": tool_versions("torch", "timm", "scikit-learn")}]
        with writing(ASSET, OutputKind.ARTIFACT, overwrite=True) as staging:
            shutil.copy(weights, staging / "model.safetensors")
            write_card(staging, card)
    if SAMPLES.exists():
        shutil.rmtree(SAMPLES)
    SAMPLES.mkdir(parents=True)
    for digit in range(10):
        first = sorted((DATA / "heldout" / str(digit)).glob("*.png"))[0]
        shutil.copy(first, SAMPLES / f"{digit}.png")
    print(f"wrote {ASSET} and {DATA}")


if __name__ == "__main__":
    main()
