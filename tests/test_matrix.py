"""The model-support matrix: every family × every step, ✔ with numbers against FP32, or refused.

Rows and the designed refusals live in tests/support_matrix.py, which also renders the docs'
support table; `test_docs_table_matches_the_matrix` keeps the two in step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO, TRAIN, assert_user_error, int8_kernels_exact
from support_matrix import COLUMNS, ROWS, markdown, source
from typer.testing import CliRunner

from vitedge.cli.app import app

SAMPLE = REPO / "vitedge" / "assets" / "samples" / "3.png"
# rows whose timm modules have training-time branches or conv+BN pairs that fuse for inference
REPARAMETERIZED = {"fastvit", "repvit", "efficientvit-m", "tinyvit"}
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Unlabeled natural images (crops of matplotlib's sample photo) for calibration checks and eval."""
    from vitedge.data import sample_photos

    folder = tmp_path_factory.mktemp("photos")
    sample_photos(folder, 40, seed=3)
    return folder


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


class Cells:
    """Runs one row's cells; a refused cell must fail with its designed one-line message."""

    def __init__(self, key: str) -> None:
        self.key, self.row, self.ran = key, ROWS[key], set()

    def __call__(self, column: str, *args) -> bool:
        assert column in COLUMNS
        self.ran.add(column)
        result = cli(*args)
        refusal = self.row.refused.get(column)
        if refusal:
            assert_user_error(result, refusal[0])
            return False
        assert result.exit_code == 0, (self.key, column, result.output)
        assert "Traceback" not in result.output
        return True


def _floor(row) -> float:
    # INT8 kernels differ by CPU: a bound, not a count (AVX2-only: 70 % seen, see conftest)
    return row.int8_floor if row.int8_floor is not None else 0.75 if int8_kernels_exact() else 0.6


def _close_to_fp32(drift: dict, row) -> None:
    if row.features:
        assert drift["cosine"] > 0.98 and drift["top1_agreement"] is None, drift
    else:
        assert drift["top1_agreement"] >= _floor(row), drift


FULL = os.environ.get("VITEDGE_FULL_MATRIX") == "1"


@pytest.mark.slow
@pytest.mark.parametrize("key", [
    pytest.param(key, marks=pytest.mark.skipif(
        row.extended and not FULL, reason="extended matrix row: run by make test-matrix (VITEDGE_FULL_MATRIX=1); "
                                          "each takes ~30 s, kept out of make test's time budget"))
    for key, row in ROWS.items()])
def test_every_step(key, tmp_path, photos):
    row, run = ROWS[key], Cells(key)
    src = source(key, tmp_path / "src")
    out = tmp_path / "out"
    # 40 random-weight samples: a loose budget (looser where INT8 kernels saturate, see conftest)
    budget = [] if row.features else ["--max-drop", str(round(100 * (1 - _floor(row))) if row.int8_floor else
                                                        "10" if int8_kernels_exact() else "30")]

    run("inspect", "inspect", *src, "--json")
    card = json.loads(cli("inspect", *src, "--json").stdout)
    assert card["structure"]["is_vit"] == row.transformer and card["macs"] > 0
    assert (card["structure"]["token_layout"] == "none") == (not row.transformer)
    assert (card["num_classes"] is None) == row.features
    assert not any("could not be counted" in w for w in card["warnings"])

    run("export", "export", *src, "-o", out / "onnx", "--parity-samples", "4")
    exported = _json(out / "onnx" / "card.json")
    parity = exported["metrics"]["parity"]
    assert parity["passed"] and parity["max_abs_diff"] < 1e-3
    # training-time branches fused before export (parity above is against the unfused model)
    assert (exported["lineage"][-1]["params"]["reparameterized_modules"] > 0) == (key in REPARAMETERIZED)
    assert parity["top1_agreement"] == (None if row.features else 1.0)

    for column, name, extra in (("quantize", "int8", []), ("quantize x86-cpu", "int8x86", ["--target", "x86-cpu"])):
        run(column, "quantize", out / "onnx", "--calib", TRAIN, "--samples", "24", "--eval", photos,
            "--eval-samples", "40", *budget, *extra, "-q", "-o", out / name)
        report = _json(out / name / "quant_report.json")
        assert report["budget"]["met"] and report["lint"]["passed"] and report["int8_linear_mac_share"] > 0
        _close_to_fp32(report["drift"], row)

    run("compile x86-cpu", "compile", out / "int8x86", "--target", "x86-cpu", "--runtime", "onnxruntime",
        "-o", out / "x86", "-q")
    passport = _json(out / "x86" / "passport.json")
    assert passport["precision"] == "int8"
    assert passport["int8_mac_share"] == _json(out / "int8x86" / "quant_report.json")["int8_linear_mac_share"]
    run("compile jetson-orin-nano", "compile", out / "int8", "--target", "jetson-orin-nano", "-o", out / "nano", "-q")
    assert "--int8" in _json(out / "nano" / "bundle.json")["trtexec"]

    run("predict / eval", "eval", out / "onnx", out / "x86", "--data", photos, "--samples", "30", "-o", out / "eval")
    _close_to_fp32(_json(out / "eval" / "eval.json")["models"][1]["vs_first"], row)
    prediction = json.loads(cli("predict", out / "x86", SAMPLE, "--json").stdout)["predictions"][0]
    assert (prediction["embedding"] is not None) == row.features and (not prediction["top"]) == row.features

    for column, flag in (("prune --heads", ["--heads", "0.5"]), ("prune --mlp", ["--mlp", "0.5"])):
        name = column.split("--")[1]
        if run(column, "prune", *src, *flag, "--data", photos, "--samples", "20", "-q", "-o", out / name):
            metrics = _json(out / name / "card.json")["metrics"]["prune"]
            before, after = metrics["structure"]["before"], metrics["structure"]["after"]
            key_ = "num_heads" if name == "heads" else "mlp_hidden"
            assert sum(after[key_]) < sum(before[key_]) and metrics["mac_share"] < 1.0
            stage = metrics["before_distill"]
            assert 0.0 <= (stage["cosine"] if row.features else stage["top1_agreement"]) <= 1.0 + 1e-6
            assert cli("inspect", out / name, "--json").exit_code == 0  # the artifact rebuilds
    if run("prune --tome", "prune", *src, "--tome", "2", "--data", photos, "--samples", "20", "-q", "-o", out / "tome"):
        metrics = _json(out / "tome" / "card.json")["metrics"]["prune"]
        assert metrics["tome"]["tokens_out"] < metrics["tome"]["tokens_in"]
        final = metrics["final"]
        assert final["cosine"] > 0.9 if row.features else final["top1_agreement"] >= 0.6
        exported = cli("export", out / "tome", "-o", out / "tome-onnx", "--parity-samples", "4")
        assert exported.exit_code == 0, exported.output  # rebuilt with its merge schedule, parity-checked
    assert run.ran == set(COLUMNS)


def test_docs_table_matches_the_matrix():
    page = (REPO / "docs" / "support-matrix.md").read_text()
    start, end = "<!-- support-matrix: generated by `python tests/support_matrix.py` -->", "<!-- /support-matrix -->"
    assert start in page and end in page, "docs/support-matrix.md lost its support-matrix markers"
    table = page.split(start)[1].split(end)[0].strip()
    assert table == markdown(), "the docs' support table differs from tests/support_matrix.py: paste its output"


def test_every_refusal_names_a_column():
    for row in ROWS.values():
        assert set(row.refused) <= set(COLUMNS)
