"""ONNX export: graph structure, dynamic batch, parity numbers, atomic output."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import HELDOUT, TINY, tiny_timm

from vitedge.data import open_images
from vitedge.errors import ExportError, InputError
from vitedge.export import check_parity, export_onnx
from vitedge.models.load import load


def test_export_graph_and_parity(tiny_onnx_artifact, tiny_ckpt):
    model = onnx.load(tiny_onnx_artifact / "model.onnx")
    ops = Counter(node.op_type for node in model.graph.node)
    # one LayerNormalization per norm (2 per block + final), never a decomposed Pow
    assert ops["LayerNormalization"] == 2 * TINY["depth"] + 1
    assert ops["Pow"] == 0
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value

    card = load(tiny_onnx_artifact).card
    parity = card.metrics["parity"]
    assert parity["passed"] and parity["samples"] == 16  # default: 16 crops of a real photo
    assert "grace_hopper.jpg" in parity["data"]
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0
    assert card.lineage[-1]["params"]["opset"] == 18
    assert card.lineage[-1]["tools"]["onnxruntime"]

    # dynamic batch really works, and matches torch at batch 5
    session = ort.InferenceSession(str(tiny_onnx_artifact / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    reference = load("timm:vit_tiny_patch16_224", weights=tiny_ckpt, model_kwargs=TINY).module
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"input": x})[0] - expected).max() < 1e-4


def test_static_batch_and_no_simplify(tmp_path):
    loaded = load("timm:vit_tiny_patch16_224", model_kwargs=TINY)
    result = export_onnx(loaded, tmp_path / "static", dynamic_batch=False, simplify=False,
                         parity_data=HELDOUT, parity_samples=4, opset=17)
    model = onnx.load(tmp_path / "static" / "model.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert model.opset_import[0].version == 17
    assert result.parity and result.parity.samples == 4


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [
    ("deit_tiny_distilled_patch16_224", {}),
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    ("vit_base_patch16_224.mae", {"num_classes": 0}),
    ("vit_tiny_r_s16_p8_224", {"img_size": 64, "patch_size": 1}),
])
def test_variants_export_with_parity(tmp_path, name, kwargs):
    loaded = load(f"timm:{name}", model_kwargs={**TINY, **kwargs})
    result = export_onnx(loaded, tmp_path / "out", parity_samples=4)
    assert result.parity and result.parity.max_abs_diff < 1e-3


def test_torchscript_source_uses_fallback_exporter(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(tiny_timm(), torch.randn(1, 3, 32, 32)), path)
    loaded = load(path, preprocessing={"input_size": [32, 32]}, trust_pickle=True)
    result = export_onnx(loaded, tmp_path / "out", parity_samples=4)
    assert result.exporter == "torchscript" and result.parity


def test_parity_detects_a_different_model(tiny_onnx_artifact):
    other = load("timm:vit_tiny_patch16_224", model_kwargs=TINY)  # different random weights
    torch.manual_seed(123)
    for parameter in other.module.parameters():
        parameter.data.normal_()
    parity = check_parity(other.module, tiny_onnx_artifact / "model.onnx",
                          open_images(HELDOUT).sample(8), other.card, atol=1e-3, rtol=1e-3)
    assert not parity and parity.samples == 8 and parity.max_abs_diff > 1e-2


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    import vitedge.export as export_module

    def corrupt(model):
        for init in model.graph.initializer:
            if init.name.endswith("head.weight") or "head" in init.name:
                array = onnx.numpy_helper.to_array(init) * 3.0
                init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
        return model

    monkeypatch.setattr(export_module, "_simplify", corrupt)
    loaded = load("timm:vit_tiny_patch16_224", model_kwargs=TINY)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(loaded, tmp_path / "out", parity_samples=4)
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_output_and_low_opset(tmp_path, tiny_onnx_artifact):
    loaded = load("timm:vit_tiny_patch16_224", model_kwargs=TINY)
    with pytest.raises(InputError, match="already exists"):
        export_onnx(loaded, tiny_onnx_artifact)
    with pytest.raises(InputError, match="opset 16"):
        export_onnx(loaded, tmp_path / "x", opset=16)


def test_builtin_export_parity_on_heldout(tmp_path):
    result = export_onnx(load("builtin:digits-vit"), tmp_path / "digits", parity_data=HELDOUT,
                         parity_samples=64)
    assert result.parity.samples == 64 and result.parity.top1_agreement == 1.0
    assert result.parity.max_abs_diff < 1e-4
    card = load(tmp_path / "digits").card
    assert card.labels == [str(d) for d in range(10)] and card.format == "onnx"
    assert [step["step"] for step in card.lineage] == ["train", "export"]


def test_fixed_batch_program_exports_static(tmp_path):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_timm(), (torch.randn(1, 3, 32, 32),)), path)
    result = export_onnx(load(path, trust_pickle=True), tmp_path / "out", parity_samples=3)
    model = onnx.load(tmp_path / "out" / "model.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert result.card.source["onnx"]["dynamic_batch"] is False and result.parity


def test_external_data_for_large_models(tmp_path, monkeypatch):
    import vitedge.export as export_module

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)  # treat the tiny model as >2 GB
    result = export_onnx(load("timm:vit_tiny_patch16_224", model_kwargs=TINY), tmp_path / "big",
                         parity_samples=2)
    assert (tmp_path / "big" / "model.onnx.data").is_file()
    assert set(result.card.files) == {"model.onnx", "model.onnx.data"} and result.parity
    assert load(tmp_path / "big").card.format == "onnx"  # hashes of both files verify


@pytest.mark.slow
def test_huggingface_folder_exports(tmp_path):
    from test_models import _save_hf

    _save_hf(tmp_path / "hf", "vit")
    result = export_onnx(load(tmp_path / "hf"), tmp_path / "out", parity_samples=4)
    assert result.parity and result.card.labels == ["a", "b", "c"]
