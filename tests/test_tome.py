"""Token merging: exactness at r=0, merge arithmetic, static-shape ONNX export, the prune artifact."""

from __future__ import annotations

import copy
import json
from collections import Counter

import onnx
import pytest
import torch
from conftest import HELDOUT, tiny_timm
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.errors import InputError
from vitedge.models.load import load
from vitedge.prune.tome import (
    apply_tome,
    bipartite_merge,
    merge_weighted,
    token_schedule,
)


def test_r0_is_exact_and_schedule_caps_at_available_tokens():
    model = load("builtin:digits-vit").module
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        merged = copy.deepcopy(model)
        assert apply_tome(merged, 0)["schedule"] == [0, 0, 0, 0]
        torch.testing.assert_close(merged(x), reference, atol=1e-5, rtol=1e-5)
    assert token_schedule(65, 4, 16, 1) == [16, 16, 16, 8]  # 65 -> 49 -> 33 -> 17 -> 9
    assert token_schedule(197, 12, 8, 1) == [8] * 12
    assert token_schedule(197, 12, 16, 1, start=2) == [0, 0] + [16] * 10
    twelve = tiny_timm(depth=12)
    assert apply_tome(twelve, 4)["schedule"][:3] == [0, 0, 4]  # default: a sixth of the blocks keep all


def test_merge_is_a_size_weighted_average():
    # tokens: cls, then pairs whose a/b members are identical directions -> merge
    x = torch.tensor([[[9.0, 0], [1, 0], [0, 1], [1, 0.1], [0, 2]]])  # a = 0,2,4  b = 1,3
    metric = x.clone()
    size = torch.tensor([[[1.0], [1], [1], [3], [1]]])
    indices = bipartite_merge(metric[:, 1:], 1)
    merged, new_size = merge_weighted(x, size, indices, protected=1)
    assert merged.shape == (1, 4, 2) and new_size.sum() == size.sum()
    assert torch.equal(merged[0, 0], x[0, 0])  # the class token is never merged, stays first
    # token 2 ([0,1]) merged into token 3 ([1,0.1], size 3) or token 4 merged into 3: check totals
    torch.testing.assert_close((merged * new_size).sum(1), (x * size).sum(1))


def test_refuses_models_it_cannot_merge():
    with pytest.raises(InputError, match="global_pool='map'"):  # SigLIP's attention pool
        apply_tome(tiny_timm("vit_base_patch16_siglip_224", patch_size=8), 4)
    with pytest.raises(InputError, match="rotary position embeddings"):
        apply_tome(tiny_timm("eva02_tiny_patch14_224", img_size=28, patch_size=14), 2)
    with pytest.raises(InputError, match="relative position bias"):
        apply_tome(tiny_timm("beit_base_patch16_224", patch_size=8), 2)
    with pytest.raises(InputError, match="normalizes its tokens before pooling"):
        apply_tome(tiny_timm(class_token=False, global_pool="avg", fc_norm=False), 4)
    with pytest.raises(InputError, match="negative"):
        apply_tome(tiny_timm(), -1)
    with pytest.raises(InputError, match="timm ViTs, not Linear"):
        apply_tome(torch.nn.Linear(2, 2), 2)


@pytest.mark.parametrize("name, overrides, protected", [
    ("deit_tiny_distilled_patch16_224", {}, 2),  # class + distillation token
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "patch_size": 7}, 5),  # class + 4 registers
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}, 0),  # average pool
    ("deit3_small_patch16_224", {}, 1),  # layer scale
])
def test_merging_keeps_every_prefix_token_and_weights_average_pools(name, overrides, protected):
    model = tiny_timm(name, **overrides)
    size = overrides.get("img_size", 32)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        info = apply_tome(model, 0)
        assert torch.equal(model(x), reference) and info["protected"] == protected  # exact at r = 0
        model.blocks.r = [2] * len(model.blocks.r)
        captured = {}
        model.blocks.register_forward_hook(lambda _m, _i, out: captured.setdefault("x", out))
        merged = model(x)
    tokens = captured["x"]
    assert tokens.shape[1] == info["tokens_in"] - 2 * len(model.blocks.r)
    assert merged.shape == reference.shape and torch.isfinite(merged).all()
    cosine = torch.nn.functional.cosine_similarity(merged, reference, dim=1)
    assert cosine.min() > 0.5  # two tokens per block merged away: the output moves, but not far


def test_prune_artifact_exports_with_static_shapes_and_parity(tmp_path):
    from vitedge.export import export_onnx

    runner = CliRunner()
    result = runner.invoke(app, ["prune", "builtin:digits-vit", "--tome", "8", "--data", str(HELDOUT),
                                 "--samples", "120", "-o", str(tmp_path / "tome")])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "tome" / "card.json").read_text())
    metrics = card["metrics"]["prune"]
    assert card["source"]["tome"] == {"r": 8, "start": 0} and card["lineage"][-1]["step"] == "prune"
    assert metrics["tome"]["tokens_out"] == 33 and metrics["macs_after"] < 0.9 * metrics["macs_before"]
    assert metrics["final"]["top1_agreement"] >= 0.9 and metrics["final"]["samples"] == 24  # 20% held out
    loaded = load(tmp_path / "tome")  # rebuilt merged, from the card
    plain = load("builtin:digits-vit").module
    apply_tome(plain, 8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), plain(x))
    export = export_onnx(loaded, tmp_path / "onnx", parity_data=HELDOUT, parity_samples=16)
    assert export.parity.within_tolerance and export.parity.top1_agreement == 1.0
    graph = onnx.load(tmp_path / "onnx" / "model.onnx")
    ops = Counter(n.op_type for n in graph.graph.node)
    assert ops["ScatterND"] == 4 and ops["TopK"] >= 4  # one scatter-add per block (tokens + sizes together)
    inferred = onnx.shape_inference.infer_shapes(graph)
    token_dims = {tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:])
                  for v in inferred.graph.value_info if len(v.type.tensor_type.shape.dim) == 3}
    assert {(65, 64), (57, 64), (49, 64), (41, 64)} <= token_dims  # tokens fall 8 per block, statically


def test_structured_pruning_and_merging_together(tmp_path):
    from vitedge.export import export_onnx

    runner = CliRunner()
    result = runner.invoke(app, ["prune", "builtin:digits-vit", "--heads", "0.5", "--mlp", "0.5", "--tome", "6",
                                 "--tome-from", "1", "-o", str(tmp_path / "both"), "-q"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "both" / "card.json").read_text())
    assert card["source"]["tome"] == {"r": 6, "start": 1} and card["source"]["pruned"]["num_heads"] == [2, 2, 2, 2]
    loaded = load(tmp_path / "both")  # shrunk to the pruned shapes, then merged from block 1
    assert loaded.module.blocks.r == [0, 6, 6, 6] and loaded.module.blocks.blocks[0].attn.num_heads == 2
    export = export_onnx(loaded, tmp_path / "onnx", parity_data=HELDOUT, parity_samples=16)
    assert export.parity.within_tolerance
    metrics = card["metrics"]["prune"]
    assert metrics["tome"]["tokens_out"] == 65 - 18 and metrics["mac_share"] < 0.5


def test_prune_bad_inputs(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["prune", "builtin:digits-vit", "--tome", "-2", "-o", str(tmp_path / "a")], "Invalid value for '--tome'"),
        (["prune", "builtin:digits-vit", "--tome", "4", "--data", str(empty), "-o", str(tmp_path / "b")],
         "contains no image files"),
        (["prune", "builtin:digits-vit", "--tome", "4", "--data", str(tmp_path), "-o", str(tmp_path / "b")],
         "lies inside the input"),
        (["prune", "builtin:digits-vit", "--tome", "4", "--tome-from", "4", "-o", str(tmp_path / "c")],
         "--tome-from 4 is not a block of this model (4 blocks"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
