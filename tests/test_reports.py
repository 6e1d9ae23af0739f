"""Reports that scale: a 1000-class run shows its real flips as a ranked list, folds its
per-class table, puts the disagreeing frames first, and fits a 1280-px screen in a real browser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HELDOUT, chromium, rendered_width
from typer.testing import CliRunner

from vitedge.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory) -> Path:
    """A real run of a 1000-class model (a tiny random ViT, ImageNet's class count) shadowed by
    the same model without the noise added to its head: flips spread over many classes."""
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import save_file

    from vitedge.live.camera import FrameSource
    from vitedge.live.loop import run_loop
    from vitedge.live.options import RunOptions
    from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession
    from vitedge.sessions import load

    work = tmp_path_factory.mktemp("k1000")
    import timm
    import torch
    from safetensors.torch import load_file

    # the shipped digits ViT's trunk (features that differ from image to image) under a random
    # 1000-class head: ImageNet's class count and names, predictions spread over many classes
    digits = Path(__file__).resolve().parents[1] / "vitedge" / "assets" / "digits-vit"
    arch = json.loads((digits / "card.json").read_text())["source"]["kwargs"]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**arch, "num_classes": 1000})
    trunk = {k: v for k, v in load_file(str(digits / "model.safetensors")).items() if not k.startswith("head.")}
    model.load_state_dict(trunk, strict=False)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    save_file(model.state_dict(), str(work / "w.safetensors"))
    kwargs = [a for k, v in {**arch, "num_classes": 1000}.items() for a in ("-k", f"{k}={v}")]
    exported = runner.invoke(app, ["export", "timm:vit_tiny_patch16_224", "-w", str(work / "w.safetensors"),
                                   *kwargs, "--parity-samples", "2", "-o", str(work / "ref")])
    assert exported.exit_code == 0, exported.output
    model = onnx.load(work / "ref" / "model.onnx")
    head = next(i for i in model.graph.initializer if i.name == "head.weight")
    values = numpy_helper.to_array(head).copy()
    values += np.random.default_rng(0).standard_normal(values.shape).astype(np.float32) * values.std()
    head.CopyFrom(numpy_helper.from_array(values, "head.weight"))
    onnx.save(model, work / "noisy.onnx")
    reference = load(work / "ref")
    deployed = OnnxRuntimeSession(work / "noisy.onnx", card=reference.card)
    frames = work / "frames"  # 20 of each digit, interleaved
    frames.mkdir()
    for i, digit in enumerate(sorted(HELDOUT.iterdir())):
        for j, image in enumerate(sorted(digit.glob("*.png"))[:20]):
            (frames / f"{j:03d}-{i}.png").symlink_to(image)
    run_loop(deployed, FrameSource.open(str(frames)), work / "run", reference=reference,
             options=RunOptions(shadow_every=1, frames=200))
    return work / "run"


def test_a_1000_class_run_lists_its_real_flips(wide_run, tmp_path):
    result = runner.invoke(app, ["report", str(wide_run), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (wide_run / "frames.jsonl").read_text().splitlines()]
    flips = [(f["shadow"]["reference_top1"], f["top"][0][1]) for f in lines if f.get("shadow")]
    flips = [pair for pair in flips if pair[0] != pair[1]]
    assert len(flips) > 20 and len({c for pair in flips for c in pair}) > 20  # many classes
    most = max(set(flips), key=flips.count)
    markdown = (tmp_path / "r.md").read_text()
    assert f"| {most[0]} | {most[1]} | {flips.count(most)} |" in markdown  # ranked, in report.md too
    assert "more classes |" in markdown  # the per-class table is folded
    page = (tmp_path / "r.html").read_text()
    assert "alt='Class flips" not in page  # no matrix that could show only a corner of 1000 classes
    assert page.index("Where they disagree") < page.index("Agreement by reference class")


@pytest.mark.skipif(chromium() is None, reason="no chromium here (make test installs Debian's when it can)")
def test_reports_fit_a_1280_px_screen(wide_run, tmp_path):
    """Rendered by headless Chromium at 1280 px: nothing wider than the window."""
    runner.invoke(app, ["report", str(wide_run), "-o", str(tmp_path / "r.html")])
    assert rendered_width(tmp_path / "r.html") <= 1280
