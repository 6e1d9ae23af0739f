"""Feature extractors (no classifier head) are compared as vectors everywhere: never as classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HELDOUT, TINY, TRAIN, assert_user_error
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.drift import DriftThresholds, compare

SAMPLES = Path(__file__).resolve().parents[1] / "vitedge" / "assets" / "samples"
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def mae(tmp_path_factory) -> Path:
    """A tiny MAE-style encoder (num_classes=0) exported to ONNX, with a bundle."""
    from vitedge.export import export_onnx
    from vitedge.models.load import load

    root = tmp_path_factory.mktemp("features")
    export_onnx(load("timm:vit_base_patch16_224.mae", model_kwargs={**TINY, "num_classes": 0}),
                root / "onnx", parity_samples=4)
    return root


def test_feature_drift_is_cosine_and_relative_error():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((40, 16))
    close = reference + 0.01 * rng.standard_normal((40, 16))
    result = compare(reference, close, DriftThresholds(min_cosine=0.999, min_samples=10), features=True)
    assert result and result.features and result.top1_agreement is None and result.kl is None
    assert result.cosine > 0.999 and 0.005 < result.rel_error < 0.02 and result.min_cosine <= result.cosine
    far = compare(reference, reference + 0.5 * rng.standard_normal((40, 16)),
                  DriftThresholds(min_cosine=0.999, min_samples=10), features=True)
    assert not far and far.verdict == "drift"
    assert set(far.to_dict()["thresholds"]) == {"min_samples", "min_cosine", "max_rel_error"}


def test_quantize_budgets_features_on_cosine(mae, tmp_path):
    result = cli("quantize", mae / "onnx", "--calib", TRAIN, "--samples", "32", "--eval", HELDOUT,
                 "--eval-samples", "40", "-o", tmp_path / "int8", "-q")
    assert result.exit_code == 0, result.output
    assert "feature cosine to FP32" in result.output and "agreement with FP32" not in result.output
    report = json.loads((tmp_path / "int8" / "quant_report.json").read_text())
    budget, drift = report["budget"], report["drift"]
    assert budget["features"] and budget["min_cosine"] == 0.99 and budget["met"]
    assert drift["features"] and drift["top1_agreement"] is None and drift["cosine"] > 0.99
    assert report["accuracy"] is None  # the digits' labels say nothing about features
    for option, value in (("--max-drop", "1"), ("--min-agreement", "0.9")):
        assert_user_error(cli("quantize", mae / "onnx", "--calib", TRAIN, option, value, "-o", tmp_path / "x"),
                          "outputs features", "--min-cosine")
    missed = cli("quantize", mae / "onnx", "--calib", TRAIN, "--samples", "16", "--recipe", "linear-only",
                 "--min-cosine", "1", "-q", "-o", tmp_path / "strict")
    assert missed.exit_code == 1 and "Traceback" not in missed.output  # the summary, then the verdict
    assert "error: --min-cosine 1 cannot be met" in " ".join(missed.output.split())


def test_eval_predict_bench_report_on_features(mae, tmp_path):
    assert cli("compile", mae / "onnx", "--target", "x86-cpu", "-o", tmp_path / "b", "-q").exit_code == 0
    result = cli("eval", mae / "onnx", tmp_path / "b", "--data", HELDOUT, "--samples", "30", "-o", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "vs first: cosine 1.0000" in " ".join(result.output.split())
    evaluation = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert evaluation["features"] and evaluation["models"][1]["vs_first"]["rel_error"] < 1e-4
    report = cli("report", tmp_path / "e", "-o", tmp_path / "e.html")
    assert report.exit_code == 0, report.output
    assert "cosine to first" in (tmp_path / "e.md").read_text()
    predicted = cli("predict", tmp_path / "b", SAMPLES / "3.png", "--json")
    prediction = json.loads(predicted.stdout)["predictions"][0]
    assert prediction["top"] == [] and prediction["embedding"]["size"] == TINY["embed_dim"]
    assert prediction["embedding"]["norm"] > 0
    table = cli("predict", tmp_path / "b", SAMPLES)
    assert "norm" in table.output and "confidence" not in table.output
    bench = cli("bench", mae / "onnx", tmp_path / "b", "--data", HELDOUT, "--samples", "20", "--runs", "2",
                "--out", tmp_path / "bench.json")
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert bench.exit_code == 0 and rows[1]["top1"] is None and rows[1]["cosine"] > 0.999


def test_live_shadow_watches_features_by_cosine(mae, tmp_path):
    result = cli("run", mae / "onnx", "--source", HELDOUT / "3", "--frames", "40", "--shadow-every", "1",
                 "--reference", mae / "onnx", "-o", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["drift"]["features"] and summary["drift"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    lines = [json.loads(line) for line in (tmp_path / "run" / "frames.jsonl").read_text().splitlines()]
    assert all("top" not in line and line["norm"] > 0 for line in lines)
    assert all(set(line["shadow"]) == {"cosine", "rel_error", "reference_ms"} for line in lines if "shadow" in line)
    assert "Feature cosine over time" in (tmp_path / "run" / "report.html").read_text()
    assert_user_error(cli("run", mae / "onnx", "--source", HELDOUT / "3", "--min-agreement", "0.9",
                          "-o", tmp_path / "run2"), "outputs features", "--min-cosine")


def test_budget_finer_than_the_evaluation_is_said(digits_onnx, tmp_path):
    result = cli("quantize", digits_onnx, "--calib", TRAIN, "--samples", "16", "--eval", HELDOUT,
                 "--eval-samples", "16", "--recipe", "linear-only", "-o", tmp_path / "q")
    text = " ".join(result.output.split())
    assert "--max-drop 0.5 is finer than one of the 16 evaluation samples (6.25 points each)" in text
    assert "it needs at least 200 samples" in text
