"""Structured pruning (Torch-Pruning) and distillation: shapes, attributes, MACs, export, recovery."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import HELDOUT, TRAIN, int8_kernels_exact, tiny_timm
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.errors import InputError
from vitedge.models.load import load
from vitedge.models.structure import count_macs
from vitedge.prune.layouts import structure_of
from vitedge.prune.plan import PruneRatios
from vitedge.prune.structured import prune_model, rebuild


def _pruned(ratios: PruneRatios, **kwargs):
    model = tiny_timm(embed_dim=64, num_heads=4, depth=2)
    teacher = copy.deepcopy(model)
    info = prune_model(model, ratios, importance="l2", **kwargs)
    return teacher, model, info


def test_heads_mlp_and_embed_shapes_and_attributes():
    teacher, model, info = _pruned(PruneRatios(heads=0.5, mlp=0.5, embed=0.25))
    after = info["after"]
    assert after == {"embed_dim": 48, "num_heads": [2, 2], "head_dim": [16, 16], "mlp_hidden": [128, 128]}
    for block in model.blocks:
        attention = block.attn
        assert attention.qkv.weight.shape == (3 * 2 * 16, 48)
        assert attention.proj.weight.shape == (48, 32)
        assert (attention.num_heads, attention.head_dim, attention.attn_dim) == (2, 16, 32)
        assert block.mlp.fc1.weight.shape == (128, 48) and block.mlp.fc2.weight.shape == (48, 128)
    assert model.pos_embed.shape[-1] == 48 and model.cls_token.shape[-1] == 48 and model.embed_dim == 48
    assert model.head.weight.shape == (10, 48)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_macs_fall_by_the_requested_share_and_widths_are_rounded():
    teacher, model, _ = _pruned(PruneRatios(mlp=0.5))
    macs = count_macs(model, (32, 32)) / count_macs(teacher, (32, 32))
    # MLP is 2 * 64 * 256 of each token's ~ (3 + 1) * 64 * 64 + 2 * 64 * 256 linear MACs
    assert 0.6 < macs < 0.75
    _, rounded, info = _pruned(PruneRatios(mlp=0.3), round_to=16)
    assert all(width % 16 == 0 for width in info["after"]["mlp_hidden"])
    with pytest.raises(InputError, match=r"--heads 1.0 is outside \[0, 1\)"):
        _pruned(PruneRatios(heads=1.0))
    with pytest.raises(InputError, match="cannot prune Sequential: it has no attention layers"):
        prune_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), PruneRatios(mlp=0.5))


def test_rebuild_reproduces_the_pruned_model_exactly():
    import timm
    from conftest import TINY

    _, model, info = _pruned(PruneRatios(heads=0.5, mlp=0.25, embed=0.25))
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, "embed_dim": 64,
                                                                           "num_heads": 4, "depth": 2})
    rebuilt = rebuild(fresh, model.state_dict(), info["after"]).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))
    assert structure_of(rebuilt) == info["after"]


def test_global_allocation_ranks_heads_and_units_across_blocks(tmp_path):
    import timm
    from conftest import TINY

    model = tiny_timm(embed_dim=64, num_heads=4, depth=4)
    info = prune_model(model, PruneRatios(heads=0.5, mlp=0.5), importance="l2", allocation="global")
    after = info["after"]
    assert sum(after["num_heads"]) == 8 and min(after["num_heads"]) >= 1  # half of 16, not 2 per block
    assert len(set(after["num_heads"])) > 1 and len(set(after["mlp_hidden"])) > 1
    assert abs(sum(after["mlp_hidden"]) - 512) <= 4 * 8 and all(w % 8 == 0 for w in after["mlp_hidden"])
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, "embed_dim": 64,
                                                                           "num_heads": 4, "depth": 4})
    rebuilt = rebuild(fresh, model.state_dict(), after).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))
    with pytest.raises(InputError, match="--allocation 'layer' is not one of uniform, global"):
        prune_model(tiny_timm(), PruneRatios(mlp=0.5), importance="l2", allocation="layer")


def test_distillation_recovers_agreement_and_resumes(tmp_path):
    from vitedge.data import open_data
    from vitedge.prune.distill import DistillConfig, distill

    loaded = load("builtin:digits-vit")
    teacher = loaded.module.eval()
    data = np.concatenate(list(open_data(TRAIN, loaded.card.preprocessing, samples=400).batches()))
    student = copy.deepcopy(teacher)
    batches = [torch.from_numpy(data[i:i + 16]) for i in range(100, 228, 16)]
    prune_model(student, PruneRatios(heads=0.5, mlp=0.5), importance="taylor", batches=batches,
                teacher=teacher)
    config = DistillConfig(steps=300, eval_every=100, patience=10)
    checkpoint = tmp_path / "ckpt.pt"
    resumed = copy.deepcopy(student)
    history = distill(student, teacher, data[100:], data[:100], config, checkpoint=checkpoint)
    assert history["agreement_after"] > history["agreement_before"] + 0.05
    assert checkpoint.is_file()
    # an interrupted run: the checkpoint holds step 300 of a 300-step run, so a resume does no work
    again = distill(resumed, teacher, data[100:], data[:100], config, checkpoint=checkpoint)
    assert again["resumed_from"] == 300 and again["agreement_after"] == history["agreement_after"]
    other = DistillConfig(steps=40, eval_every=40)
    fresh = distill(copy.deepcopy(student), teacher, data[100:], data[:100], other, checkpoint=checkpoint)
    assert fresh["resumed_from"] is None  # another config does not pick up a stale checkpoint
    for steps in (1, 2, 19):  # too short for one-cycle's warm-up phase (it divided by zero)
        short = distill(copy.deepcopy(student), teacher, data[100:], data[:100], DistillConfig(steps=steps))
        assert short["steps_run"] == steps


def test_feature_distillation_pulls_the_final_tokens_together():
    from vitedge.data import open_data
    from vitedge.prune.distill import DistillConfig, distill
    from vitedge.prune.layouts import final_norm

    loaded = load("builtin:digits-vit")
    teacher = loaded.module.eval()
    data = np.concatenate(list(open_data(TRAIN, loaded.card.preprocessing, samples=300).batches()))
    data = data[np.random.default_rng(0).permutation(len(data))]  # files come sorted by class
    held = torch.from_numpy(data[:64])
    pruned = copy.deepcopy(teacher)
    prune_model(pruned, PruneRatios(heads=0.5, mlp=0.5), importance="l2")

    def token_gap(student):
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(student.forward_features(held), teacher.forward_features(held)))

    gaps = {}
    for weight in (0.0, 5.0):
        student = copy.deepcopy(pruned)
        norms = (final_norm(student), final_norm(teacher)) if weight else None
        distill(student, teacher, data[64:], data[:64], DistillConfig(steps=200, eval_every=50, patience=10,
                                                                       features=weight), feature_norms=norms)
        gaps[weight] = token_gap(student)
        assert not student.norm._forward_hooks and not teacher.norm._forward_hooks  # hooks removed
    assert gaps[5.0] < 0.8 * gaps[0.0], gaps  # measured 0.26 vs 0.45
    narrow = copy.deepcopy(teacher)  # --embed: a learned map bridges 48 -> 64 channels
    prune_model(narrow, PruneRatios(embed=0.25), importance="l2")
    history = distill(narrow, teacher, data[64:], data[:64], DistillConfig(steps=20, eval_every=20, features=1.0),
                      feature_norms=(final_norm(narrow), final_norm(teacher)))
    assert history["steps_run"] == 20 and narrow.norm.weight.shape == (48,)


@pytest.mark.slow
def test_prune_cli_distill_export_and_quantize(tmp_path):
    from vitedge.export import export_onnx
    from vitedge.quantize.ptq import quantize
    from vitedge.quantize.recipes import Recipe

    runner = CliRunner()
    result = runner.invoke(app, ["prune", "builtin:digits-vit", "--heads", "0.5", "--mlp", "0.5",
                                 "--data", str(TRAIN), "--samples", "500", "--distill-steps", "200",
                                 "-o", str(tmp_path / "pruned"), "-q"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "pruned" / "card.json").read_text())
    metrics = card["metrics"]["prune"]
    assert card["source"]["pruned"]["num_heads"] == [2, 2, 2, 2]
    assert metrics["mac_share"] < 0.6 and metrics["method"] == "compensate"  # the default with --data
    assert metrics["before_distill"]["top1_agreement"] >= 0.95  # compensated (Taylor alone: 94 %)
    assert metrics["after_distill"]["top1_agreement"] >= metrics["before_distill"]["top1_agreement"]
    assert not (tmp_path / "pruned.distill.pt").exists()  # finished runs leave no checkpoint
    result = runner.invoke(app, ["report", str(tmp_path / "pruned"), "-o", str(tmp_path / "r" / "prune.html")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "r" / "prune.md").read_text()
    assert "| 0 | 4 → 2 | 16 → 16 | 256 → 128 |" in markdown and "| 3 | 4 → 2 |" in markdown
    before, after = metrics["before_distill"], metrics["after_distill"]
    assert f"| after pruning | {100 * before['top1_agreement']:.2f}% |" in markdown
    assert f"| after distillation | {100 * after['top1_agreement']:.2f}% |" in markdown
    assert (tmp_path / "r" / "prune.html").read_text().count("data:image/png") == 2  # widths + distillation
    loaded = load(tmp_path / "pruned")
    assert loaded.module.blocks[0].attn.num_heads == 2 and loaded.card.structure.num_heads == 2
    export = export_onnx(loaded, tmp_path / "onnx", parity_data=HELDOUT, parity_samples=16)
    assert export.parity.within_tolerance and export.parity.top1_agreement == 1.0
    graph = onnx.load(tmp_path / "onnx" / "model.onnx")
    weights = {tuple(t.dims) for t in graph.graph.initializer}
    assert (64, 96) in weights or (96, 64) in weights  # qkv of 2 heads x 16 x 3
    exact = int8_kernels_exact()
    result = quantize(load(tmp_path / "onnx"), TRAIN, tmp_path / "int8", eval_data=HELDOUT,
                      recipe=Recipe.LINEAR_ONLY, samples=64, eval_samples=200, max_drop=0.5 if exact else 30)
    assert result.report.drift.top1_agreement >= (0.98 if exact else 0.75)


def test_prune_bad_inputs(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["prune", "builtin:digits-vit", "--heads", "1.2", "-o", str(tmp_path / "a")], "Invalid value for '--heads': 1.2 is outside [0, 1)"),
        (["prune", "builtin:digits-vit", "--mlp", "0.5", "--distill-steps", "10", "-o", str(tmp_path / "b")],
         "--distill-steps needs --data"),
        (["prune", "builtin:digits-vit", "--mlp", "0.5", "--data", str(empty), "-o", str(tmp_path / "c")],
         "contains no image files"),
        (["prune", "builtin:digits-vit", "-o", str(tmp_path / "d")], "nothing to prune"),
        (["prune", "torchvision:resnet18", "--mlp", "0.5", "-o", str(tmp_path / "e")],
         "structured pruning cannot prune ResNet: it has no attention layers (not a transformer)"),
        (["prune", "builtin:digits-vit", "--target-macs", "1.5", "-o", str(tmp_path / "f")], "1.5 is outside (0, 1)"),
        (["prune", "builtin:digits-vit", "--mlp", "0.5", "--distill-features", "1", "-o", str(tmp_path / "g")],
         "--distill-features 1.0 needs to be >= 0 and comes with --distill-steps"),
        (["prune", "builtin:digits-vit", "--mlp", "0.5", "--allocation", "even", "-o", str(tmp_path / "h")],
         "'--allocation': 'even' is not one of 'uniform', 'global'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_target_macs_search(tmp_path):
    from vitedge.prune.pipeline import PrunePlan, prune

    metrics = prune(load("builtin:digits-vit"), tmp_path / "p", PrunePlan(target_macs=0.6))
    assert metrics["mac_share"] <= 0.6 and metrics["ratios"]["heads"] == metrics["ratios"]["mlp"] > 0
