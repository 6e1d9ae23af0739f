"""vitedge optimize end to end on the shipped model: every candidate an ordinary bundle, measured
on held-out data, the fastest within the budget copied to best/, the report, --resume after a
--time-budget stop, and the refusals."""

from __future__ import annotations

import json

import pytest
from conftest import (
    HELDOUT,
    TRAIN,
    assert_user_error,
    chromium,
    native_cpu_target,
    onnxruntime_only_target,
    rendered_width,
)
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.compile.bundle import read_bundle
from vitedge.sessions import load as load_session

pytestmark = pytest.mark.slow


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "digits"
    result = cli("optimize", "builtin:digits-vit", "--target", native_cpu_target(), "--data", HELDOUT, "--calib", TRAIN,
                 "--samples", "64", "--eval-samples", "120", "--tome", "0,4", "--max-drop", "2", "-o", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_every_candidate_is_a_measured_bundle_and_the_fastest_within_budget_is_chosen(optimized):
    out, result = optimized
    document = json.loads((out / "optimize.json").read_text())
    assert document["kind"] == "optimize" and document["finished"] and document["eval_samples"] == 120
    names = [c["name"] for c in document["candidates"]]
    assert {"r0-fp32-onnxruntime", "r0-fp32-openvino", "r0-int8-onnxruntime", "r0-int8-openvino",
            "r4-fp32-onnxruntime", "r4-int8-openvino"} <= set(names)
    measured = [c for c in document["candidates"] if c["status"] == "measured"]
    assert len(measured) == len(names)  # nothing failed on the shipped model
    for c in measured:
        bundle = read_bundle(out / c["bundle"])  # an ordinary, verified bundle
        assert bundle.runtime == c["runtime"] and c["p50_ms"] > 0
        assert 0 <= c["agreement"] <= 1 and c["top1"] is not None
    base = next(c for c in measured if c["name"] == "r0-fp32-onnxruntime")
    assert base["agreement"] == 1.0 and abs(base["drop"]) < 1e-9  # the FP32 graph agrees with itself
    int8 = next(c for c in measured if c["name"] == "r0-int8-onnxruntime")
    assert 0 < int8["int8_share"] <= 1 and int8["precision_run"] == "int8"
    merged = next(c for c in measured if c["name"] == "r4-fp32-onnxruntime")
    assert merged["macs"] < base["macs"]  # token merging really removed work
    within = [c for c in measured if c["drop"] <= 2]
    chosen = next(c for c in measured if c["name"] == document["chosen"])
    assert chosen["p50_ms"] == min(c["p50_ms"] for c in within)
    assert document["chosen"] in document["pareto"]
    best = read_bundle(out / "best")
    assert best.card.files == read_bundle(out / chosen["bundle"]).card.files
    with load_session(out / "best") as session:
        assert session.backend == chosen["runtime"]
    text = " ".join(result.output.split())
    assert f"best: {out / 'best'} {chosen['name']}" in text and "candidates measured on 120 held-out" in text


def test_report_lists_every_candidate_with_its_verdict(optimized):
    out, _ = optimized
    html = (out / "report.html").read_text()
    document = json.loads((out / "optimize.json").read_text())
    for c in document["candidates"]:
        assert c["name"] in html
    assert "chosen: the fastest within the budget" in html and "data:image/png;base64," in html
    assert f"★ {document['chosen']}" in html  # the chosen row is marked
    if chromium() is not None:  # the table fits a laptop screen
        assert rendered_width(out / "report.html") <= 1280
    again = cli("report", out, "-o", out / "again.html")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "again.json").read_text())["kind"] == "optimize"


def test_time_budget_stops_and_resume_goes_on_with_pruned_candidates(tmp_path):
    out = tmp_path / "o"
    # ONNX Runtime alone: the fixture above measures OpenVINO; here the stop, the resume and pruning count
    args = ("optimize", "builtin:digits-vit", "--target", onnxruntime_only_target(tmp_path), "--data", HELDOUT,
            "--calib", TRAIN,
            "--samples", "64", "--eval-samples", "60", "--tome", "0", "--prune", "0.3,auto", "--distill-steps", "3")
    first = cli(*args, "--time-budget", "1s", "-o", out)
    assert first.exit_code == 0, first.output
    stopped = json.loads((out / "optimize.json").read_text())
    assert stopped["not_tried"] and not stopped["finished"] and "--resume" in first.output
    done = {c["name"]: (out / c["bundle"] / "card.json").stat().st_mtime_ns
            for c in stopped["candidates"] if c["status"] == "measured"}
    done["r0-onnx"] = (out / "candidates" / "r0-onnx" / "card.json").stat().st_mtime_ns  # the export
    again = cli(*args, "--resume", "-o", out)
    assert again.exit_code == 0, again.output
    finished = json.loads((out / "optimize.json").read_text())
    assert finished["finished"] and not finished["not_tried"]
    assert {c["name"] for c in finished["candidates"]} >= set(stopped["not_tried"]) | (set(done) - {"r0-onnx"})
    for name, mtime in done.items():  # what was measured before was not rebuilt
        assert (out / "candidates" / name / "card.json").stat().st_mtime_ns == mtime
    # the pruned variants: 30 % of the MACs, and the largest cut the budget allows on the calibration
    # images; compensated, distilled, then every precision and runtime
    pruned = finished["candidates"]
    assert all(c["status"] == "measured" for c in pruned)
    assert {"p30-r0-fp32-onnxruntime", "p30-r0-int8-onnxruntime", "pauto-r0-fp32-onnxruntime"} <= {
        c["name"] for c in pruned}
    card = json.loads((out / "candidates" / "p30-pruned" / "card.json").read_text())["metrics"]["prune"]
    assert card["method"] == "compensate" and card["distill"]["steps_run"] > 0 and card["mac_share"] <= 0.7
    assert all(c["prune"] == pytest.approx(1 - card["mac_share"], abs=1e-4) and c["pruning"] == "target"
               for c in pruned if c["name"].startswith("p30-"))
    assert all(c["macs"] < 0.75 * card["macs_before"] for c in pruned if c["name"].startswith("p30-"))
    budgeted = json.loads((out / "candidates" / "pauto-pruned" / "card.json").read_text())["metrics"]["prune"]
    assert budgeted["budget_search"]["max_drop"] == 1.0 and budgeted["mac_share"] < 1
    assert all(c["pruning"] == "budget" and c["prune"] > 0 for c in pruned if c["name"].startswith("pauto-"))
    assert "% pruned (budget)" in (out / "report.html").read_text()
    # a resume with other data is refused, and so is a plain rerun without --overwrite
    assert_user_error(cli(*args[:-8], "--eval-samples", "50", "--tome", "0", "--resume", "-o", out),
                      "was optimized for another source, target or data")
    assert_user_error(cli(*args[:6], "-o", out), "already exists")


def test_a_tensorrt_target_gets_prepared_bundles_and_labelled_estimates(digits_onnx, tmp_path):
    out = tmp_path / "orin"
    result = cli("optimize", digits_onnx, "--target", "jetson-orin-nano", "--data", HELDOUT, "--calib", TRAIN,
                 "--samples", "32", "--eval-samples", "60", "--tome", "0", "-o", out)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "optimize.json").read_text())
    candidates = {c["name"]: c for c in document["candidates"]}
    assert set(candidates) == {"r0-fp16-tensorrt", "r0-best-tensorrt"} and not document["measured_here"]
    for c in candidates.values():  # no engine here: the bundle's own ONNX on ONNX Runtime, and it says so
        assert c["status"] == "measured" and not c["native"] and c["p50_ms"] is None
        assert "NOT the TensorRT engine" in c["ran_on"] and "on the device" in c["precision_run"]
        assert read_bundle(out / c["bundle"]).runtime == "tensorrt"
    fp16, int8 = candidates["r0-fp16-tensorrt"], candidates["r0-best-tensorrt"]
    assert int8["int8_share"] > 0.5 and int8["precision_run"].startswith("int8")
    # unmeasured, INT8 earns nothing over FP16: the same MACs cost the same, the closer one wins
    assert int8["estimated_cost"] == pytest.approx(fp16["estimated_cost"]) == pytest.approx(0.5)
    assert document["chosen"] == max(candidates.values(), key=lambda c: (c["agreement"], c["name"] == fp16["name"]))["name"]
    assert (out / "best" / "trtexec.sh").is_file()  # what the device builds from
    report = (out / "report.md").read_text()
    assert "not measured: TensorRT engines are built and timed on the device" in report
    assert "FP16 candidates run FP32 there" in report and "lowest estimated cost" in report
    assert f"vitedge build {out / 'best'}" in " ".join(result.output.split())


def test_refusals(digits_onnx, tmp_path):
    assert_user_error(cli("optimize", digits_onnx, "--target", native_cpu_target(), "--data", HELDOUT,
                          "--tome", "0,x", "-o", tmp_path / "a"), "--tome '0,x' is not a list")
    assert_user_error(cli("optimize", digits_onnx, "--target", native_cpu_target(), "--data", HELDOUT,
                          "--prune", "0,1", "-o", tmp_path / "a"), "must be within [0, 1)")
    assert_user_error(cli("optimize", digits_onnx, "--target", native_cpu_target(), "--data", HELDOUT,
                          "--prune", "half", "-o", tmp_path / "a"), "--prune 'half' is not a list")
    assert_user_error(cli("optimize", digits_onnx, "--target", native_cpu_target(), "--data", HELDOUT,
                          "--time-budget", "soon", "-o", tmp_path / "a"), "--time-budget 'soon' is not a duration")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert_user_error(cli("optimize", digits_onnx, "--target", native_cpu_target(), "--data", HELDOUT,
                          "--overwrite", "-o", tmp_path / "mine"), "is not a vitedge output")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_a_conv_attention_hybrid_is_optimized_and_token_merging_is_skipped_with_its_reason(tmp_path):
    """A hybrid (EfficientViT-MSRA, tiny) through optimize: its FP32 and INT8 bundles are built and
    measured; the token-merging variant cannot be built for it and is skipped, said on the console
    and recorded with the reason, not attempted again for INT8."""
    out = tmp_path / "opt"
    result = cli("optimize", "timm:efficientvit_m0", "-k", "img_size=64", "-k", "num_classes=10",
                 "-k", "embed_dim=[16,32,48]", "-k", "depth=[1,1,1]", "-k", "num_heads=[2,2,2]",
                 "-k", "window_size=[2,2,2]", "--target", onnxruntime_only_target(tmp_path), "--data", HELDOUT,
                 "--calib", TRAIN, "--samples", "32", "--eval-samples", "60", "--max-drop", "100", "--tome", "0,8",
                 "-o", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "skipping every r8 candidate: token merging supports timm ViTs, not EfficientVitMsra" in text
    document = json.loads((out / "optimize.json").read_text())
    status = {c["name"]: (c["status"], c.get("reason") or "") for c in document["candidates"]}
    assert {n for n, (s, _) in status.items() if s == "measured"} == {"r0-fp32-onnxruntime", "r0-int8-onnxruntime"}
    assert all(s == "skipped" and "feature maps of stages" in r for n, (s, r) in status.items() if n.startswith("r8-"))
    assert document["chosen"] in ("r0-fp32-onnxruntime", "r0-int8-onnxruntime")
