"""OpenVINO as a Session backend: numbers against ONNX Runtime FP32, the precision it really runs,
INT8 Q/DQ graphs, bundles' plain ONNX, and the CLI's --backend openvino."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HELDOUT, TRAIN, assert_user_error, native_cpu_target
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.compile.prepare import compile_bundle
from vitedge.data import open_data
from vitedge.models.load import load
from vitedge.quantize.ptq import quantize
from vitedge.quantize.recipes import Recipe
from vitedge.quantize.search import run_onnx
from vitedge.runtime.openvino import OpenVinoSession, cpu_capabilities
from vitedge.sessions import load as load_session
from vitedge.targets import load_target

pytest.importorskip("openvino")


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def images():
    data = open_data(HELDOUT, load("builtin:digits-vit").card.preprocessing, samples=64)
    return np.concatenate(list(data.batches()))


def test_fp32_matches_onnxruntime(digits_onnx, images):
    session = load_session(digits_onnx, backend="openvino")
    assert session.backend == "openvino" and session.precision == "fp32"
    assert session.inference_precision == "fp32" and "OpenVINO" in session.description
    reference = run_onnx(digits_onnx / "model.onnx", images)
    logits = session.infer_all(images, 16)
    scale = float(np.abs(reference).max())
    assert float(np.abs(logits - reference).max()) <= 1e-4 * scale + 1e-5
    assert float(np.mean(logits.argmax(1) == reference.argmax(1))) == 1.0


def test_the_precision_reported_is_the_one_that_runs(digits_onnx, images):
    fp32 = OpenVinoSession(digits_onnx / "model.onnx", precision="fp32").infer(images)
    if "BF16" not in cpu_capabilities():
        with pytest.raises(Exception, match="no native BF16"):
            OpenVinoSession(digits_onnx / "model.onnx", precision="bf16")
        assert OpenVinoSession(digits_onnx / "model.onnx", precision=None).precision == "fp32"
        return
    session = OpenVinoSession(digits_onnx / "model.onnx", precision="bf16")
    assert session.precision == "bf16" and "bf16" in session.description
    bf16 = session.infer(images)
    # really reduced precision (FP32 would agree to ~1e-6), and still the same model
    assert float(np.abs(bf16 - fp32).max()) > 1e-4
    assert float(np.mean(bf16.argmax(1) == fp32.argmax(1))) >= 0.95
    default = OpenVinoSession(digits_onnx / "model.onnx", precision=None)
    assert default.precision in ("fp32", "bf16")  # OpenVINO's own pick, read back
    differs = float(np.abs(default.infer(images) - fp32).max()) > 1e-4
    assert differs == (default.precision == "bf16")


def test_int8_qdq_graphs_run_int8(digits_onnx, images, tmp_path):
    out = tmp_path / "int8"
    quantize(load(digits_onnx), TRAIN, out, eval_data=HELDOUT, recipe=Recipe.LINEAR_ONLY,
             samples=64, eval_samples=64)
    session = load_session(out, backend="openvino")
    assert session.precision == "int8" and "INT8" in session.description
    reference = run_onnx(digits_onnx / "model.onnx", images)
    agreement = float(np.mean(session.infer_all(images, 16).argmax(1) == reference.argmax(1)))
    assert agreement >= 0.9  # a bound: INT8 kernels differ between CPUs


def test_bundles_run_their_plain_onnx(digits_onnx, images, tmp_path):
    bundle = tmp_path / "cpu"
    compile_bundle(load(digits_onnx), load_target(native_cpu_target()), bundle)
    session = load_session(bundle, backend="openvino")
    assert session.model_path.name == "source.onnx" and "NOT its onnxruntime runtime" in session.description
    assert (session.min_batch, session.max_batch) == (1, 16)
    reference = load_session(bundle).infer(images[:8])
    difference = float(np.abs(session.infer(images[:8]) - reference).max())
    assert difference <= 1e-4 * float(np.abs(reference).max()) + 1e-5


def test_cli_backend_openvino(digits_onnx):
    sample = next(Path(HELDOUT).rglob("*.png"))
    predicted = cli("predict", digits_onnx, sample, "--backend", "openvino", "--json")
    assert predicted.exit_code == 0, predicted.output
    document = json.loads(predicted.stdout)
    assert document["backend"].startswith("OpenVINO") and "fp32" in document["backend"]
    assert document["predictions"][0]["top"]
    benched = cli("bench", digits_onnx, "--backend", "openvino", "--runs", "3", "--warmup", "1")
    assert benched.exit_code == 0 and "openvino" in benched.stdout, benched.output
    assert_user_error(cli("predict", "builtin:digits-vit", sample, "--backend", "openvino"),
                      "backend openvino runs ONNX graphs", "export it first")
