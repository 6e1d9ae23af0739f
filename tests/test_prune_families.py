"""Structured pruning of Hugging Face ViT/DeiT and torchvision ViTs: shapes, attributes, exact
rebuild from the artifact, ONNX export with parity, and the refusals each family needs."""

from __future__ import annotations

import copy
import json
import shutil

import onnx
import pytest
import torch
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.errors import InputError
from vitedge.models.load import load
from vitedge.models.structure import count_macs, onnx_summary
from vitedge.prune.layouts import structure_of
from vitedge.prune.plan import PruneRatios
from vitedge.prune.structured import prune_model

TV_KWARGS = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 4, "hidden_dim": 64,
             "mlp_dim": 128, "num_classes": 10}
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _hf_folder(path, kind="vit"):
    """A tiny Hugging Face folder (save_pretrained); weights large enough that pruning shows."""
    import transformers

    torch.manual_seed(0)
    common = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 128, "initializer_range": 0.2}
    if kind == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**common, num_labels=10))
    elif kind == "deit":
        model = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**common, num_labels=10))
    else:
        model = transformers.ViTModel(transformers.ViTConfig(**common), add_pooling_layer=False)
    model.save_pretrained(path)
    return path


def _tv():
    torch.manual_seed(0)
    return load("torchvision:vit_b_16", model_kwargs=TV_KWARGS)


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of `original` the pruned weight kept (rows are copied, never changed)."""
    return [int(torch.cdist(row[None], original).argmin()) for row in pruned]


def _outputs(module):
    with torch.no_grad():
        return module.eval()(X)


# ------------------------------------------------------------------------------ Hugging Face
def test_hf_heads_mlp_embed_shapes_attributes_and_macs(tmp_path):
    loaded = load(_hf_folder(tmp_path / "hf"))
    model = loaded.module
    macs = count_macs(model, (32, 32))
    info = prune_model(model, PruneRatios(heads=0.5, mlp=0.5, embed=0.25), importance="l2")
    assert info["after"] == {"embed_dim": 48, "num_heads": [2, 2], "head_dim": [16, 16], "mlp_hidden": [64, 64]}
    vit = model.inner.vit
    for layer in vit.layers:
        attention = layer.attention
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            assert projection.weight.shape == (2 * 16, 48)
        assert attention.o_proj.weight.shape == (48, 32)
        assert (attention.num_attention_heads, attention.head_dim, attention.scaling) == (2, 16, 16 ** -0.5)
        assert layer.mlp.fc1.weight.shape == (64, 48) and layer.mlp.fc2.weight.shape == (48, 64)
        assert layer.layernorm_before.normalized_shape == (48,)
    embeddings = vit.embeddings
    assert embeddings.cls_token.shape == (1, 1, 48) and embeddings.position_embeddings.shape == (1, 17, 48)
    assert model.inner.classifier.weight.shape == (10, 48)
    config = model.inner.config
    assert (config.hidden_size, config.num_attention_heads, config.head_dim, config.intermediate_size) == (48, 2, 16, 64)
    assert count_macs(model, (32, 32)) < 0.5 * macs
    out = _outputs(model)
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_hf_pruning_removes_whole_heads_and_units_consistently(tmp_path):
    """Without --embed, the pruned model computes exactly what the original computes with the
    removed heads' o_proj columns and the removed units' fc2 columns zeroed."""
    loaded = load(_hf_folder(tmp_path / "hf"))
    original = copy.deepcopy(loaded.module)
    prune_model(loaded.module, PruneRatios(heads=0.5, mlp=0.25), importance="l2")
    for before, after in zip(original.inner.vit.layers, loaded.module.inner.vit.layers):
        kept = _kept_rows(before.attention.q_proj.weight, after.attention.q_proj.weight)
        assert len(kept) == 32 and all(kept[i:i + 16] == list(range(kept[i], kept[i] + 16)) for i in (0, 16))
        assert kept[0] % 16 == 0 and kept[16] % 16 == 0  # two whole heads
        assert _kept_rows(before.attention.k_proj.weight, after.attention.k_proj.weight) == kept
        assert _kept_rows(before.attention.v_proj.weight, after.attention.v_proj.weight) == kept
        mask = torch.zeros(64)
        mask[kept] = 1
        before.attention.o_proj.weight.data *= mask
        units = _kept_rows(before.mlp.fc1.weight, after.mlp.fc1.weight)
        assert len(units) == 96
        mask = torch.zeros(128)
        mask[units] = 1
        before.mlp.fc2.weight.data *= mask
    torch.testing.assert_close(_outputs(loaded.module), _outputs(original), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_hf_artifact_rebuilds_exactly_without_the_folder_and_exports(tmp_path, kind):
    import transformers

    from vitedge.export import export_onnx
    from vitedge.prune.pipeline import PrunePlan, prune

    folder = _hf_folder(tmp_path / "hf", kind)
    ratios = PruneRatios(heads=0.5, mlp=0.5, embed=0.25)
    expected = load(folder).module
    prune_model(expected, ratios, importance="l2")
    metrics = prune(load(folder), tmp_path / "pruned", PrunePlan(ratios=ratios))
    assert metrics["mac_share"] < 0.5
    shutil.rmtree(folder)  # the card's recorded config is enough to rebuild it
    loaded = load(tmp_path / "pruned")
    assert (_outputs(loaded.module) - _outputs(expected)).abs().max() == 0
    assert structure_of(loaded.module) == metrics["structure"]["after"]
    source = loaded.card.source
    assert source["kind"] == "huggingface" and source["pruned"]["num_heads"] == [2, 2]
    assert loaded.card.structure.embed_dim == 48 and loaded.card.structure.num_heads == 2
    # an ordinary Hugging Face model: its class built from the recorded config takes the weights as they are
    config = transformers.CONFIG_MAPPING[kind].from_dict(source["config"])
    plain = getattr(transformers, source["class"])(config).eval()
    plain.load_state_dict({k.removeprefix("inner."): v for k, v in loaded.module.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(plain(pixel_values=X).logits, _outputs(loaded.module), rtol=0, atol=0)
    export = export_onnx(loaded, tmp_path / "onnx", parity_samples=4)
    assert export.parity and export.parity.max_abs_diff < 1e-4
    graph = onnx.load(tmp_path / "onnx" / "model.onnx")
    shapes = {tuple(t.dims) for t in graph.graph.initializer}
    assert (48, 32) in shapes or (32, 48) in shapes  # q/k/v of 2 heads x 16 on a 48-wide embedding
    assert onnx_summary(graph)["structure"].embed_dim == 48


def test_hf_encoder_prunes_heads_and_mlp_but_refuses_embed(tmp_path):
    loaded = load(_hf_folder(tmp_path / "hf", "encoder"))
    with pytest.raises(InputError, match="outputs embedding-width features"):
        prune_model(copy.deepcopy(loaded.module), PruneRatios(embed=0.25), importance="l2")
    info = prune_model(loaded.module, PruneRatios(heads=0.25, mlp=0.5), importance="l2")
    assert info["after"]["num_heads"] == [3, 3] and info["after"]["mlp_hidden"] == [64, 64]
    assert _outputs(loaded.module).shape == (3, 64)  # features keep their width


# ------------------------------------------------------------------------------- torchvision
def test_torchvision_mlp_embed_shapes_attributes_and_macs():
    model = _tv().module
    original = copy.deepcopy(model)
    info = prune_model(model, PruneRatios(mlp=0.5, embed=0.25), importance="l2")
    assert info["after"] == {"embed_dim": 48, "num_heads": [4, 4], "head_dim": [12, 12], "mlp_hidden": [64, 64]}
    for layer in model.encoder.layers:
        attention = layer.self_attention
        assert attention.in_proj_weight.shape == (3 * 48, 48) and attention.in_proj_bias.shape == (144,)
        assert attention.out_proj.weight.shape == (48, 48)
        assert (attention.embed_dim, attention.num_heads, attention.head_dim, attention.kdim) == (48, 4, 12, 48)
        assert layer.mlp[0].weight.shape == (64, 48) and layer.mlp[3].weight.shape == (48, 64)
        assert layer.ln_1.normalized_shape == (48,)
    assert (model.hidden_dim, model.mlp_dim) == (48, 64)
    assert model.class_token.shape == (1, 1, 48) and model.encoder.pos_embedding.shape == (1, 17, 48)
    assert model.heads.head.weight.shape == (10, 48)
    # every head lost the same channels, so the heads keep their boundaries (12 of each 16)
    kept = _kept_rows(original.conv_proj.weight.flatten(1), model.conv_proj.weight.flatten(1))
    offsets = [[k % 16 for k in kept if k // 16 == head] for head in range(4)]
    assert all(len(o) == 12 and o == offsets[0] for o in offsets)
    assert count_macs(model, (32, 32)) < 0.6 * count_macs(original, (32, 32))
    assert _outputs(model).shape == (3, 10)
    rounded = _tv().module
    after = prune_model(rounded, PruneRatios(mlp=0.3, embed=0.1), importance="l2", round_to=16)["after"]
    assert after["mlp_hidden"] == [80, 80] and after["embed_dim"] == 48  # 89 -> 80; 57 -> 48 (16 | 4 heads)
    with pytest.raises(InputError, match="would remove every MLP unit"):
        prune_model(_tv().module, PruneRatios(mlp=0.9), importance="l2", round_to=16)


def test_torchvision_mlp_pruning_keeps_the_rest_exact():
    model = _tv().module
    original = copy.deepcopy(model)
    prune_model(model, PruneRatios(mlp=0.5), importance="l2")
    for before, after in zip(original.encoder.layers, model.encoder.layers):
        units = _kept_rows(before.mlp[0].weight, after.mlp[0].weight)
        mask = torch.zeros(128)
        mask[units] = 1
        before.mlp[3].weight.data *= mask
    torch.testing.assert_close(_outputs(model), _outputs(original), rtol=1e-5, atol=1e-5)


def test_torchvision_artifact_rebuilds_exactly_and_exports(tmp_path):
    from torchvision.models import VisionTransformer

    from vitedge.export import export_onnx
    from vitedge.prune.pipeline import PrunePlan, prune

    ratios = PruneRatios(mlp=0.5, embed=0.25)
    expected = _tv().module
    prune_model(expected, ratios, importance="l2")
    metrics = prune(_tv(), tmp_path / "pruned", PrunePlan(ratios=ratios))
    loaded = load(tmp_path / "pruned")
    assert (_outputs(loaded.module) - _outputs(expected)).abs().max() == 0
    card = json.loads((tmp_path / "pruned" / "card.json").read_text())
    assert card["source"]["pruned"] == metrics["structure"]["after"] == structure_of(loaded.module)
    assert "torchvision" in card["lineage"][-1]["tools"]
    # uniform widths: torchvision's own constructor makes the same model
    plain = VisionTransformer(**{**TV_KWARGS, "hidden_dim": 48, "mlp_dim": 64}).eval()
    plain.load_state_dict(loaded.module.state_dict())
    torch.testing.assert_close(_outputs(plain), _outputs(loaded.module), rtol=0, atol=0)
    export = export_onnx(loaded, tmp_path / "onnx", parity_samples=4)
    assert export.parity and export.parity.max_abs_diff < 1e-4
    graph = onnx.load(tmp_path / "onnx" / "model.onnx")
    assert onnx_summary(graph)["structure"].embed_dim == 48
    assert any(set(t.dims) == {48, 64} for t in graph.graph.initializer)  # fc1 / fc2


def test_torchvision_target_macs_searches_the_mlp_only(tmp_path):
    from vitedge.prune.pipeline import PrunePlan, prune

    metrics = prune(_tv(), tmp_path / "p", PrunePlan(target_macs=0.8))
    assert metrics["mac_share"] <= 0.8
    assert metrics["ratios"]["heads"] == 0 and metrics["ratios"]["mlp"] > 0


@pytest.mark.parametrize("family", ["huggingface", "torchvision"])
def test_taylor_importance_prunes_each_family(tmp_path, family):
    loaded = load(_hf_folder(tmp_path / "hf")) if family == "huggingface" else _tv()
    teacher = copy.deepcopy(loaded.module)
    batches = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    ratios = PruneRatios(heads=0.5 if family == "huggingface" else 0.0, mlp=0.5, embed=0.25)
    after = prune_model(loaded.module, ratios, importance="taylor", batches=batches, teacher=teacher)["after"]
    assert after["embed_dim"] == 48 and after["mlp_hidden"] == [64, 64]
    assert all(p.grad is None for p in loaded.module.parameters())  # gradients are not left behind
    assert torch.isfinite(_outputs(loaded.module)).all()


# ---------------------------------------------------------------------------------- refusals
def test_family_refusals_are_one_line_and_write_nothing(tmp_path):
    from vitedge.prune.pipeline import PrunePlan, prune

    out = tmp_path / "out"
    for kwargs, message in [
        ({"ratios": PruneRatios(heads=0.5)}, ("--heads cannot prune a torchvision ViT: its nn.MultiheadAttention "
                                             "ties the head width to the embedding width")),
        ({"ratios": PruneRatios(mlp=0.5), "tome": 4}, "--tome (token merging) supports timm ViTs"),
        ({"ratios": PruneRatios(mlp=0.5), "allocation": "global"},
         "--allocation global needs timm models (per-block widths); this is a torchvision model"),
    ]:
        with pytest.raises(InputError) as error:
            prune(_tv(), out, PrunePlan(**kwargs))
        assert message in str(error.value) and "\n" not in str(error.value)
    folder = _hf_folder(tmp_path / "hf", "vit")
    encoder = _hf_folder(tmp_path / "enc", "encoder")
    runner = CliRunner()  # the CLI has no --model-kwargs for a tiny torchvision model: HF folders here
    for args, message in [([str(folder), "--tome", "4"], "--tome (token merging) supports timm ViTs"),
                          ([str(encoder), "--embed", "0.25"], "--embed cannot prune ViTModel")]:
        result = runner.invoke(app, ["prune", *args, "-o", str(out)])
        assert result.exit_code == 1, (args, result.output)
        text = " ".join(result.output.split())
        assert message in text and "Traceback" not in text, (args, result.output)
    assert not out.exists()
