"""Compensated pruning: exact where the removed units are redundant, never worse than removing the
same units without compensation, in every family that prunes; its refusals; the command's default."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from conftest import assert_user_error, kwargs_cli, tiny_timm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_prune_families import TV_KWARGS, _hf_folder
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.models.load import load
from vitedge.prune.compensate import compensated_prune
from vitedge.prune.layouts import layout_of, structure_of
from vitedge.prune.plan import PruneRatios
from vitedge.prune.structured import prune_model

runner = CliRunner()
TRAIN = "calibration/digits/train"


def _images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _timm(embed: int = 32, mlp: int = 64, heads: int = 4, depth: int = 2, seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=embed,
                             depth=depth, num_heads=heads, mlp_ratio=mlp / embed, num_classes=7).eval()


def _redundant(model: torch.nn.Module, twins: dict[int, int], head_twins: dict[int, int]) -> None:
    """Make MLP unit j a copy of unit i (its fc1 row) and head g a copy of head h (its q, k, v rows),
    in every block: what they write is then exactly a linear function of what stays."""
    layout = layout_of(model)
    with torch.no_grad():
        for fc1 in layout.fc1:
            for j, i in twins.items():
                fc1.weight[j] = fc1.weight[i]
                fc1.bias[j] = fc1.bias[i]
        for attention, (qkv,) in zip(layout.attentions, layout.qkv):
            dim, width = attention.head_dim, attention.num_heads * attention.head_dim
            for g, h in head_twins.items():
                for part in range(3):
                    qkv.weight[part * width + g * dim:part * width + (g + 1) * dim] = \
                        qkv.weight[part * width + h * dim:part * width + (h + 1) * dim]
                    qkv.bias[part * width + g * dim:part * width + (g + 1) * dim] = \
                        qkv.bias[part * width + h * dim:part * width + (h + 1) * dim]


def _target(model, heads: list[int] | None = None, mlp: list[int] | None = None) -> dict:
    structure = structure_of(model)
    return {**structure, "num_heads": heads or structure["num_heads"], "mlp_hidden": mlp or structure["mlp_hidden"]}


def _relative_error(original, pruned, images) -> float:
    with torch.no_grad():
        a, b = original(images), pruned(images)
    return float((a - b).norm() / a.norm())


def test_redundant_units_and_heads_are_removed_exactly():
    model = _timm()
    _redundant(model, {j: j - 32 for j in range(32, 64)}, {3: 1})
    pruned = copy.deepcopy(model)
    info = compensated_prune(pruned, _target(model, [3, 3], [32, 32]), _images(48, 16), teacher=model)
    assert structure_of(pruned)["mlp_hidden"] == [32, 32] and structure_of(pruned)["num_heads"] == [3, 3]
    assert all(block["heads"]["removed"] in ([1], [3]) for block in info["blocks"])  # one of the twins
    assert _relative_error(model, pruned, _images(16, 16, seed=9)) < 1e-4  # unseen images
    plain = copy.deepcopy(model)
    compensated_prune(plain, _target(model, [3, 3], [32, 32]), _images(48, 16), compensate=False)
    assert _relative_error(model, plain, _images(16, 16, seed=9)) > 1e-2  # the fold is what made it exact


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(embed=st.sampled_from([16, 32]), hidden=st.sampled_from([32, 48]), seed=st.integers(0, 10_000),
       data=st.data())
def test_any_redundant_units_are_removed_exactly(embed, hidden, seed, data):
    """Random models where a random set of units copies random kept ones (any number, any pairing)."""
    model = _timm(embed=embed, mlp=hidden, heads=4, depth=2, seed=seed)
    drop = data.draw(st.integers(1, hidden // 2), label="units removed")
    copies = data.draw(st.permutations(range(hidden)), label="order")
    removed, kept = copies[:drop], copies[drop:]
    twins = {j: data.draw(st.sampled_from(kept), label=f"twin of {j}") for j in removed}
    _redundant(model, twins, {})
    pruned = copy.deepcopy(model)
    compensated_prune(pruned, _target(model, mlp=[hidden - drop] * 2), _images(40, 16, seed=seed), teacher=model)
    assert _relative_error(model, pruned, _images(12, 16, seed=seed + 1)) < 1e-3


def _families(tmp_path):
    yield "timm", _timm(embed=48, mlp=96, heads=4, depth=3), 16
    hf = load(_hf_folder(tmp_path / "hf")).module.eval()
    yield "huggingface", hf, 32
    torch.manual_seed(0)
    tv = load("torchvision:vit_b_16", model_kwargs=TV_KWARGS).module.eval()
    torch.nn.init.normal_(tv.heads.head.weight)  # torchvision starts its classifier at zero
    yield "torchvision", tv, 32


def test_compensation_is_never_worse_in_any_family(tmp_path):
    """Same units removed, with and without the fold: the fold leaves less error against the
    original on held-out images, and less than Torch-Pruning's L2 choice at the same widths."""
    for family, model, size in _families(tmp_path):
        heads = family != "torchvision"
        ratios = PruneRatios(heads=0.25 if heads else 0.0, mlp=0.5)
        plain = copy.deepcopy(model)
        widths = prune_model(plain, ratios, importance="l2")["after"]
        calibration, held_out = _images(64, size, seed=1), _images(24, size, seed=2)
        errors = {}
        for name, kwargs in (("uncompensated", {"compensate": False}), ("compensated", {}),
                             ("corrected", {"teacher": model})):
            pruned = copy.deepcopy(model)
            compensated_prune(pruned, widths, calibration, **kwargs)
            assert structure_of(pruned) == widths, family
            errors[name] = _relative_error(model, pruned, held_out)
        errors["torch-pruning l2"] = _relative_error(model, plain, held_out)
        assert errors["compensated"] < errors["uncompensated"], (family, errors)
        assert errors["corrected"] <= errors["compensated"] * 1.05, (family, errors)
        assert errors["corrected"] < errors["torch-pruning l2"], (family, errors)


def test_the_command_compensates_by_default_and_the_artifact_rebuilds(tmp_path):
    out = tmp_path / "p"
    result = runner.invoke(app, ["prune", "builtin:digits-vit", "--heads", "0.25", "--mlp", "0.5", "--data", TRAIN,
                                 "--samples", "160", "-o", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "card.json").read_text())["metrics"]["prune"]
    assert metrics["method"] == "compensate" and metrics["importance"] == "compensated" and metrics["mirror"]
    assert "and their mirror images" in " ".join(result.output.split())
    assert metrics["device"] == ("cuda (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "cpu")
    assert metrics["structure"]["after"]["mlp_hidden"] == [128] * 4
    blocks = metrics["compensation"]
    assert all(b["mlp"]["error"] <= b["mlp"]["error_uncompensated"] for b in blocks)
    assert metrics["before_distill"]["top1_agreement"] >= 0.9
    report = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "r.md").read_text()
    assert "Compensation per block" in markdown and "| 3 | 1 |" in markdown and "compensated pruning" in markdown
    # the same cut without compensation is measured beside it, and compensation does better on this model
    assert "the same cut without compensation" in markdown
    assert metrics["uncompensated"]["top1_agreement"] <= metrics["before_distill"]["top1_agreement"]
    loaded = load(out)  # rebuilt from the card: the same outputs as the pruned module had
    assert structure_of(loaded.module) == metrics["structure"]["after"]
    exported = runner.invoke(app, ["export", str(out), "-o", str(tmp_path / "onnx"), "--parity-samples", "4"])
    assert exported.exit_code == 0, exported.output


def test_compensation_refusals(tmp_path):
    base = ["prune", "builtin:digits-vit", "--mlp", "0.5", "-o", str(tmp_path / "x")]
    assert_user_error(runner.invoke(app, [*base, "--method", "compensate"]), "needs --data")
    assert_user_error(runner.invoke(app, [*base, "--method", "compensate", "--data", TRAIN, "--embed", "0.25"]),
                      "keeps the embedding width")
    assert_user_error(runner.invoke(app, [*base, "--method", "compensate", "--data", TRAIN, "--importance", "l2"]),
                      "--importance ranks units for --method plain")
    assert_user_error(runner.invoke(app, [*base, "--data", TRAIN, "--device", "tpu"]), "tpu")
    assert_user_error(runner.invoke(app, [*base, "--data", TRAIN, "--distill-blocks", "1"]), "comes with --distill-steps")
    assert_user_error(runner.invoke(app, [*base, "--data", TRAIN, "--method", "plain", "--embed", "0.25",
                                          "--distill-steps", "5", "--distill-blocks", "1"]), "embedding width kept")
    if not torch.cuda.is_available():
        assert_user_error(runner.invoke(app, [*base, "--data", TRAIN, "--device", "cuda"]),
                          "--device cuda: PyTorch sees no CUDA GPU here", "pass --device cpu")
    assert not (tmp_path / "x").exists()


def test_auto_falls_back_to_plain_where_it_cannot_compensate(tmp_path):
    """A timm MLP that normalizes its hidden units cannot fold into fc2: auto prunes plainly and says so."""
    from vitedge.errors import InputError
    from vitedge.prune.compensate import check_method

    model = tiny_timm(scale_mlp_norm=True)
    with pytest.raises(InputError, match="normalizes its hidden units"):
        check_method(model, PruneRatios(mlp=0.5))
    out = tmp_path / "p"
    result = runner.invoke(app, ["prune", "timm:vit_tiny_patch16_224", *kwargs_cli(scale_mlp_norm=True), "--mlp", "0.5",
                                 "--data", TRAIN, "--samples", "24", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "plain pruning (taylor importance): block 0's MLP normalizes" in " ".join(result.output.split())
    assert json.loads((out / "card.json").read_text())["metrics"]["prune"]["method"] == "plain"
    assert_user_error(runner.invoke(app, ["prune", "timm:vit_tiny_patch16_224", *kwargs_cli(scale_mlp_norm=True),
                                          "--mlp", "0.5", "--method", "compensate", "--data", TRAIN,
                                          "-o", str(tmp_path / "q")]), "normalizes its hidden units")


def test_a_budget_finds_the_largest_cut_that_holds_it(tmp_path, monkeypatch):
    out = tmp_path / "b"
    result = runner.invoke(app, ["prune", "builtin:digits-vit", "--max-drop", "1", "--data", TRAIN, "--samples", "120",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "card.json").read_text())["metrics"]["prune"]
    search = metrics["budget_search"]
    held = [p for p in search["probes"] if p["met"]]
    assert held and search["chosen_mac_share"] == min(p["mac_share"] for p in held)  # the largest cut that held
    assert all(p["drop"] <= 1 for p in held)
    misses = [i for i, p in enumerate(search["probes"]) if not p["met"]]
    assert not misses or len(search["probes"]) <= misses[0] + 2  # stops at a miss (one probe between)
    assert metrics["mac_share"] == pytest.approx(search["chosen_mac_share"])
    assert 100 * (1 - metrics["before_distill"]["top1_agreement"]) <= 1  # the chosen model, measured again
    assert all(p["uncompensated"]["top1_agreement"] <= 1 for p in search["probes"])  # each cut also uncompensated
    report = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 0 and "Budget search" in (tmp_path / "r.md").read_text()
    assert "without compensation: drop, agreement" in (tmp_path / "r.md").read_text()
    assert "Budget search: the cut against what it costs" in (tmp_path / "r.html").read_text()
    # unreachable: only a deep cut is tried; one line with what the smallest cut tried gave, nothing written
    import vitedge.prune.pipeline as pipeline

    monkeypatch.setattr(pipeline, "BUDGET_SHARES", (0.3,))
    result = runner.invoke(app, ["prune", "builtin:digits-vit", "--min-agreement", "1.0", "--data", TRAIN,
                                 "--samples", "120", "-q", "-o", str(tmp_path / "u")])
    assert_user_error(result, "no cut holds the budget on the", "fewer MACs) left", "loosen --max-drop")
    assert not (tmp_path / "u").exists()


def test_budget_refusals(tmp_path):
    base = ["prune", "builtin:digits-vit", "-o", str(tmp_path / "x")]
    assert_user_error(runner.invoke(app, [*base, "--max-drop", "1", "--target-macs", "0.8", "--data", TRAIN]),
                      "do not go with --target-macs")
    assert_user_error(runner.invoke(app, [*base, "--min-agreement", "0.9"]), "need --data")
    assert_user_error(runner.invoke(app, [*base, "--max-drop", "-1", "--data", TRAIN]), "-1")
    assert not (tmp_path / "x").exists()


def test_distilling_into_a_folder_that_does_not_exist_yet(tmp_path):
    """The distillation checkpoint goes beside the output, whose folder the run creates (a fresh
    checkout's `make demo-prune` writes into a demo-out/ that is not there yet)."""
    out = tmp_path / "new" / "deeper" / "p"
    result = runner.invoke(app, ["prune", "builtin:digits-vit", "--mlp", "0.5", "--data", TRAIN, "--samples", "60",
                                 "--distill-steps", "2", "--distill-blocks", "1", "--no-mirror", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "card.json").is_file() and not (out.parent / "p.distill.pt").exists()
    assert json.loads((out / "card.json").read_text())["metrics"]["prune"]["mirror"] is False
    history = json.loads((out / "card.json").read_text())["metrics"]["prune"]["distill"]
    assert history["criterion"] == "kl" and history["kl_after"] <= history["kl_before"]


def test_block_wise_recovery_brings_every_block_closer_and_never_returns_a_worse_model():
    """--distill-blocks: every block's tokens matched to the unpruned model's; the held-out KL picks
    the state, starting from the compensated model's, so recovery can only keep or improve it."""
    from vitedge.prune.compensate import blocks_of
    from vitedge.prune.distill import DistillConfig, distill

    model = _timm(depth=3)
    images = _images(160, 16)
    student = copy.deepcopy(model)
    compensated_prune(student, _target(model, heads=[2, 2, 2], mlp=[16, 16, 16]), images[:96])
    train, held = images[:128].numpy(), images[128:].numpy()

    def block_errors(pruned) -> list[float]:
        outputs = {}
        hooks = [b.register_forward_hook(lambda _m, _a, out, key=(name, i): outputs.__setitem__(key, out))
                 for name, m in (("teacher", model), ("student", pruned)) for i, b in enumerate(blocks_of(m))]
        with torch.no_grad():
            model(torch.from_numpy(held)), pruned(torch.from_numpy(held))
        for hook in hooks:
            hook.remove()
        return [float((outputs["student", i] - outputs["teacher", i]).norm() / outputs["teacher", i].norm())
                for i in range(3)]

    before = block_errors(student)
    config = DistillConfig(steps=60, batch_size=16, lr=3e-3, eval_every=10, patience=6, blocks=1.0, mixup=True,
                           criterion="kl")
    history = distill(student, model, train, held, config,
                      block_pairs=list(zip(blocks_of(student), blocks_of(model))))
    after = block_errors(student)
    assert history["criterion"] == "kl" and history["kl_after"] <= history["kl_before"]
    assert sum(after) < 0.9 * sum(before), (before, after)
    # a rate that can only hurt: the compensated model comes back untouched
    ruined = copy.deepcopy(student)
    state = {k: v.clone() for k, v in ruined.state_dict().items()}
    history = distill(ruined, model, train, held, replace(config, lr=50.0, steps=20),
                      block_pairs=list(zip(blocks_of(ruined), blocks_of(model))))
    assert history["kl_after"] == history["kl_before"]
    assert all(torch.equal(v, ruined.state_dict()[k]) for k, v in state.items())
