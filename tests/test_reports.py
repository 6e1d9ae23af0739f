"""Reports that scale: a 1000-class run shows its real flips as a ranked list, folds its
per-class table, puts the disagreeing frames first, and fits a 1280-px screen in a real browser;
a quantized artifact's report names its layers by the model's own module names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HELDOUT, assert_user_error, chromium, rendered_width
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
    # a flip's row shows a frame the run kept of it (a thumbnail in the page, its frame in report.md)
    kept = {f["index"]: (f["shadow"]["reference_top1"], f["top"][0][1]) for f in lines if f.get("saved")}
    section = markdown.split("Class flips (shadowed frames)")[1].split("\n## ")[0]
    examples = [row.strip("| ").split(" | ") for row in section.splitlines() if "| frame " in row]
    assert examples and all(kept[int(cells[3].split()[1])] == (cells[0], cells[1]) for cells in examples), examples
    assert page.count("<img class='thumb'") == len(examples)


@pytest.mark.skipif(chromium() is None, reason="no chromium here (make test installs Debian's when it can)")
def test_reports_fit_a_1280_px_screen(wide_run, tmp_path):
    """Rendered by headless Chromium at 1280 px: nothing wider than the window."""
    runner.invoke(app, ["report", str(wide_run), "-o", str(tmp_path / "r.html")])
    assert rendered_width(tmp_path / "r.html") <= 1280


def test_quantization_report_names_layers_by_module(digits_int8, tmp_path):
    """`vitedge report INT8_ARTIFACT`: HTML (and Markdown) with per-layer rows named as the model
    names its modules (export recorded them), the float layers listed, within 1280 px."""
    import shutil

    result = runner.invoke(app, ["report", str(digits_int8), "-o", str(tmp_path / "q.html")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "q.md").read_text()
    section = md.split("## INT8 layers")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0].lstrip("| ") for line in section.splitlines()[4:] if line.startswith("| ")]
    layers = [r for r in rows if not r.startswith("…")]
    assert layers and not [r for r in layers if r.startswith(("node", "val"))], rows
    assert {r.replace("\\", "") for r in layers} & {f"blocks.{i}.mlp.fc1" for i in range(4)}
    kept = md.split("## Kept in float")[1].split("\n## ")[0]
    assert "(attention scores)" in kept.replace("\\", "")  # linear-only: attention MatMuls stay float
    data = json.loads((tmp_path / "q.json").read_text())
    assert data["kind"] == "quantize" and data["layers"][0]["module"]
    if chromium() is not None:
        assert rendered_width(tmp_path / "q.html") <= 1280
    tampered = tmp_path / "tampered"
    shutil.copytree(digits_int8, tampered)
    report = json.loads((tampered / "quant_report.json").read_text())
    report["chosen"] = "<script>alert(1)</script>"
    (tampered / "quant_report.json").write_text(json.dumps(report))
    assert_user_error(runner.invoke(app, ["report", str(tampered), "-o", str(tmp_path / "t.html")]),
                      "quant_report.json")
    assert not (tmp_path / "t.html").exists()
