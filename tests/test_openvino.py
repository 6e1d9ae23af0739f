"""OpenVINO as a Session backend and a bundle runtime: numbers against ONNX Runtime FP32, the
precision it really runs, INT8 Q/DQ graphs, bundles' plain ONNX, the CLI's --backend openvino,
OpenVINO bundles (files, passport, refusal and rebuild, predict / bench / eval / run) and
compile --runtime auto (every candidate timed, the fastest kept)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    HELDOUT,
    TRAIN,
    assert_user_error,
    make_digits_video,
    native_cpu_target,
    onnxruntime_only_target,
)
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.compile.prepare import compile_bundle
from vitedge.data import open_data
from vitedge.models.load import load
from vitedge.quantize.ptq import quantize
from vitedge.quantize.recipes import Recipe
from vitedge.quantize.search import run_onnx
from vitedge.runtime.openvino.runner import OpenVinoSession, cpu_capabilities
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
    compile_bundle(load(digits_onnx), load_target(native_cpu_target()), bundle, runtime="onnxruntime")
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


# ----------------------------------------------------------------------------- OpenVINO bundles
@pytest.fixture(scope="module")
def ov_bundle(digits_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ov") / "bundle"
    compile_bundle(load(digits_onnx), load_target(native_cpu_target()), out, runtime="openvino")
    return out


def test_openvino_bundle_files_passport_and_numbers(ov_bundle, digits_onnx, images):
    from vitedge.compile.bundle import read_bundle
    from vitedge.runtime.openvino.runner import openvino_version

    assert {p.name for p in ov_bundle.iterdir()} == {
        "model.xml", "model.bin", "source.onnx", "bundle.json", "passport.json", "card.json"}
    bundle = read_bundle(ov_bundle)
    passport = bundle.passport.to_dict()
    assert passport["runtime"] == {"name": "openvino"} and passport["precision"] == "fp32"
    built = passport["built"]
    assert built["openvino"]["version"] == openvino_version() and built["compiled_here"] is True
    assert built["openvino"]["inference_precision"] == "fp32"  # asked for and read back
    assert "FP32" in built["openvino"]["capabilities"]
    assert built["parity_vs_source"]["max_abs_diff"] < 1e-3 * built["parity_vs_source"]["largest_logit"]
    assert set(passport["files"]) == {"model.xml", "model.bin", "source.onnx", "bundle.json"}
    assert bundle.settings.to_dict()["openvino"] == {"precision": "fp32", "performance_hint": "LATENCY",
                                                     "threads": 0}
    assert bundle.card.lineage[-1]["params"]["runtime"] == "openvino"
    with load_session(ov_bundle) as session:
        assert session.backend == "openvino" and session.precision == "fp32"
        assert session.model_path.name == "model.xml" and (session.min_batch, session.max_batch) == (1, 16)
        logits = session.infer_all(images, 16)
    reference = run_onnx(digits_onnx / "model.onnx", images)
    assert float(np.abs(logits - reference).max()) <= 1e-4 * float(np.abs(reference).max()) + 1e-5
    # the same bundle's source graph on ONNX Runtime, labelled as not the bundle's runtime
    with load_session(ov_bundle, backend="onnxruntime") as other:
        assert other.model_path.name == "source.onnx" and "NOT the OpenVINO IR" in other.description
        np.testing.assert_allclose(other.infer(images[:4]), reference[:4], atol=1e-4)


def test_openvino_bundle_is_refused_when_changed_or_for_another_openvino(ov_bundle, tmp_path, monkeypatch):
    import shutil

    import vitedge.compile.passport as passport_module
    from vitedge.compile.bundle import read_bundle
    from vitedge.errors import InputError

    copy = tmp_path / "copy"
    shutil.copytree(ov_bundle, copy)
    weights = bytearray((copy / "model.bin").read_bytes())
    weights[100] ^= 0xFF
    (copy / "model.bin").write_bytes(bytes(weights))
    with pytest.raises(InputError, match=r"model.bin does not match the hash"):
        load_session(copy)
    shutil.rmtree(copy)
    shutil.copytree(ov_bundle, copy)
    real = passport_module.machine_facts
    monkeypatch.setattr(passport_module, "machine_facts", lambda **kw: {**real(**kw), "openvino": "2024.6.0"})
    with pytest.raises(InputError, match=r"IR converted by OpenVINO 20\d\d\.\d+\.\d+, this machine has "
                                         r"2024\.6\.0 .*--rebuild"):
        load_session(copy)
    monkeypatch.setattr(passport_module, "machine_facts",
                        lambda **kw: {**real(**kw), "arch": "arm64"})
    with pytest.raises(InputError, match=r"compiled and timed by OpenVINO on x86-64, this machine is arm64"):
        load_session(copy)
    monkeypatch.setattr(passport_module, "machine_facts", real)
    before = read_bundle(copy).passport.to_dict()["built"]
    with load_session(copy, rebuild=True) as session:  # nothing to rebuild: it matches
        assert session.precision == "fp32"
    assert "rebuilt" not in read_bundle(copy).passport.to_dict()["built"] and before


def test_rebuild_converts_the_source_again(digits_onnx, tmp_path, monkeypatch):
    import vitedge.compile.passport as passport_module
    from vitedge.compile.bundle import read_bundle
    from vitedge.runtime.openvino.runner import openvino_version

    out = tmp_path / "b"
    compile_bundle(load(digits_onnx), load_target(native_cpu_target()), out, runtime="openvino")
    data = json.loads((out / "passport.json").read_text())
    real = passport_module.machine_facts
    monkeypatch.setattr(passport_module, "machine_facts", lambda **kw: {**real(**kw), "openvino": "2099.1.0"})
    from vitedge.errors import InputError

    with pytest.raises(InputError, match=r"this machine has 2099\.1\.0"):
        load_session(out)
    monkeypatch.setattr(passport_module, "machine_facts", real)
    from vitedge.compile.rebuild import reoptimize_bundle

    reoptimize_bundle(out)
    rebuilt = read_bundle(out).passport.to_dict()
    assert rebuilt["built"]["openvino"]["version"] == openvino_version() and "rebuilt" in rebuilt["built"]
    assert rebuilt["source_artifact_hash"] == data["source_artifact_hash"]
    with load_session(out) as session:
        assert session.infer(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


def test_bf16_mismatch_is_named():
    from vitedge.compile.passport import mismatches
    from vitedge.schemas.bundle import Passport

    passport = Passport.from_dict({
        "passport_version": 1, "vitedge": "0", "source_artifact_hash": "0" * 64,
        "target": {"name": "x86-cpu", "runtime": "onnxruntime"}, "precision": "bf16",
        "input": {"name": "input", "shape": [3, 32, 32], "batch": [1, 1, 16]},
        "runtime": {"name": "openvino"}, "files": {},
        "built": {"arch": "x86-64", "compiled_here": True,
                  "openvino": {"version": "2026.4.1", "inference_precision": "bf16"}}})
    facts = {"arch": "x86-64", "openvino": "2026.4.1", "cpu_features": ["AVX2", "AVX-512F"]}
    assert mismatches(passport, facts) == [
        "the bundle runs bf16 (BF16 float layers), this CPU has no native BF16 (AVX512_BF16, AMX or Arm BF16)"]
    assert mismatches(passport, {**facts, "cpu_features": ["AVX2", "AMX-BF16"]}) == []


def test_bf16_bundle_says_bf16_everywhere(digits_onnx, images, tmp_path):
    if "BF16" not in cpu_capabilities():
        assert_user_error(cli("compile", digits_onnx, "--target", native_cpu_target(), "--precision",
                              "bf16", "-o", tmp_path / "b"), "this CPU has no native BF16")
        assert not (tmp_path / "b").exists()
        return
    result = cli("compile", digits_onnx, "--target", native_cpu_target(), "--precision", "bf16",
                 "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "runtime openvino" in result.stdout and "precision bf16" in result.stdout
    assert "float layers run bf16 (read back from OpenVINO)" in result.stdout
    passport = json.loads((tmp_path / "b" / "passport.json").read_text())
    assert passport["precision"] == "bf16" and passport["built"]["openvino"]["inference_precision"] == "bf16"
    with load_session(tmp_path / "b") as session:
        assert session.precision == "bf16" and "bf16" in session.description
        bf16 = session.infer(images[:16])
    fp32 = run_onnx(digits_onnx / "model.onnx", images[:16])
    assert float(np.abs(bf16 - fp32).max()) > 1e-4  # it really is reduced precision
    benched = cli("bench", tmp_path / "b", "--runs", "3", "--warmup", "1")
    assert benched.exit_code == 0 and "bf16" in benched.stdout, benched.output
    # best on a float graph is bf16 here; ONNX Runtime cannot run it
    assert_user_error(cli("compile", digits_onnx, "--target", native_cpu_target(), "--precision", "bf16",
                          "--runtime", "onnxruntime", "-o", tmp_path / "c"),
                      "ONNX Runtime's CPU provider runs fp32 and int8 here, not bf16")


def test_best_keeps_bf16_float_layers_only_where_they_measure_faster(digits_int8, tmp_path):
    """--precision best on a CPU with native BF16: OpenVINO's BF16 and FP32 float layers are both
    timed (BF16 was 1.7x slower on a Xeon without AMX), the faster is kept and says what it runs."""
    out = tmp_path / "best"
    result = cli("compile", digits_int8, "--target", native_cpu_target(), "--precision", "best", "-o", out)
    assert result.exit_code == 0, result.output
    passport = json.loads((out / "passport.json").read_text())
    choice = passport["built"].get("runtime_choice")
    if "BF16" not in cpu_capabilities():  # best is INT8 with FP32 float layers: nothing to weigh
        assert passport["precision"] == "int8"
        assert not choice or all("bf16" not in c["variant"] for c in choice["candidates"])
        return
    variants = {c["variant"]: c for c in choice["candidates"] if c["runtime"] == "openvino"}
    assert set(variants) == {"int8, bf16 float layers", "int8, fp32 float layers"}
    assert all(c["p50_ms"] > 0 for c in variants.values())
    chosen = choice["candidates"][choice["chosen"]]
    assert chosen["p50_ms"] == min(c["p50_ms"] for c in choice["candidates"] if c["p50_ms"] is not None)
    runs_bf16 = chosen["variant"] == "int8, bf16 float layers"
    assert passport["precision"] == ("best" if runs_bf16 else "int8")
    if chosen["runtime"] == "openvino":
        assert passport["built"]["openvino"]["inference_precision"] == ("bf16" if runs_bf16 else "fp32")
        with load_session(out) as session:
            assert session.precision == ("int8+bf16" if runs_bf16 else "int8")
    assert "runtime chosen by measurement" in result.stdout


def test_int8_openvino_bundle(digits_int8, digits_onnx, images, tmp_path):
    out = tmp_path / "i8"
    compile_bundle(load(digits_int8), load_target(native_cpu_target()), out, runtime="openvino")
    passport = json.loads((out / "passport.json").read_text())
    assert passport["precision"] == "int8" and passport["built"]["openvino"]["inference_precision"] == "fp32"
    with load_session(out) as session:
        assert session.precision == "int8" and "INT8" in session.description
        logits = session.infer_all(images, 16)
    reference = run_onnx(digits_int8 / "model.onnx", images)
    assert float(np.mean(logits.argmax(1) == reference.argmax(1))) >= 0.95  # a bound, not a figure


def test_openvino_bundle_in_predict_bench_eval_and_run(ov_bundle, tmp_path):
    sample = next(Path(HELDOUT).rglob("*.png"))
    predicted = cli("predict", ov_bundle, sample, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["backend"].startswith("OpenVINO")
    benched = cli("bench", ov_bundle, "--runs", "3", "--warmup", "1", "--batch", "1,4")
    assert benched.exit_code == 0 and "openvino" in benched.stdout, benched.output
    sized = cli("bench", ov_bundle, "--runs", "1", "--warmup", "0", "--json")
    ir = sum((Path(ov_bundle) / f).stat().st_size for f in ("model.xml", "model.bin")) / 2**20
    assert json.loads(sized.stdout)["rows"][0]["size_mib"] == pytest.approx(ir)  # the weights too
    evaluated = cli("eval", ov_bundle, "--data", HELDOUT, "--samples", "40", "-o", tmp_path / "ev")
    assert evaluated.exit_code == 0, evaluated.output
    video = make_digits_video(tmp_path / "clip.mp4", frames=20, hold=5)
    ran = cli("run", ov_bundle, "--source", video, "--frames", "20", "-o", tmp_path / "run")
    assert ran.exit_code == 0, ran.output
    frames = (tmp_path / "run" / "frames.jsonl").read_text().splitlines()
    assert len(frames) == 20


# ----------------------------------------------------------------------------- --runtime auto
def test_auto_times_every_runtime_and_keeps_the_fastest(digits_onnx, tmp_path):
    from vitedge.compile.bundle import read_bundle

    result = cli("compile", digits_onnx, "--target", native_cpu_target(), "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "runtime chosen by measurement" in result.stdout
    bundle = read_bundle(tmp_path / "b")
    choice = bundle.passport.built.runtime_choice
    assert choice is not None and choice.batch == 1 and choice.rounds >= 2
    timed = [(c.runtime, c.variant) for c in choice.candidates]
    assert timed == [("onnxruntime", "offline-optimized graph"), ("onnxruntime", "session-optimized graph"),
                     ("openvino", "fp32")]
    times = [c.p50_ms for c in choice.candidates]
    assert all(t is not None and t > 0 for t in times)
    chosen = choice.candidates[choice.chosen]
    assert chosen.p50_ms == min(times) and bundle.runtime == chosen.runtime
    # how busy the cores were while timing is recorded beside the figures, and said when busy
    assert choice.load is not None and 0 <= choice.load.others <= 1 and choice.load.cpus >= 1
    assert ("the machine was busy" in " ".join(result.output.split())) is choice.load.busy
    names = {p.name for p in (tmp_path / "b").iterdir()}
    if chosen.runtime == "openvino":
        assert "model.onnx" not in names and {"model.xml", "model.bin"} <= names
    else:
        assert not names & {"model.xml", "model.bin"}
        assert bundle.passport.built.optimized_offline is (chosen.variant == "offline-optimized graph")
    with load_session(tmp_path / "b") as session:
        assert session.backend == chosen.runtime


def test_auto_timing_rounds_feed_a_progress_bar(digits_onnx, tmp_path, monkeypatch):
    """compile's progress bar: one tick per alternating round of timing the runtimes."""
    from vitedge.compile.prepare import compile_bundle

    monkeypatch.setattr("vitedge.compile.cpu.TIMING_ROUNDS", 3)  # the rounds, not their figures
    ticks: list[tuple[int, int, str]] = []
    bundle = compile_bundle(digits_onnx, native_cpu_target(), tmp_path / "b", tick=lambda *t: ticks.append(t))
    rounds = bundle.passport.built.runtime_choice.rounds
    assert rounds == 3 and [t[:2] for t in ticks] == [(i, rounds) for i in range(rounds)]
    assert ticks[0][2] == "timing 3 runtimes (alternating rounds)"


def test_auto_on_another_isa_keeps_the_profiles_runtime(digits_onnx, tmp_path):
    foreign = "x86-cpu" if native_cpu_target() == "arm64-cpu" else "arm64-cpu"
    compile_bundle(load(digits_onnx), load_target(foreign), tmp_path / "b")
    from vitedge.compile.bundle import read_bundle

    bundle = read_bundle(tmp_path / "b")
    assert bundle.runtime == "onnxruntime" and bundle.passport.built.runtime_choice is None
    assert "only measured on the target's ISA" in bundle.passport.built.note
    # asked for explicitly, OpenVINO IR is portable: converted here, compiled on the device
    compile_bundle(load(digits_onnx), load_target(foreign), tmp_path / "ov", runtime="openvino")
    ov = read_bundle(tmp_path / "ov")
    assert ov.runtime == "openvino" and ov.passport.built.compiled_here is False
    assert ov.passport.built.openvino.inference_precision is None and "on the device" in ov.passport.built.note


def test_runtime_refusals(digits_onnx, tmp_path):
    assert_user_error(cli("compile", digits_onnx, "--target", "jetson-orin-nano", "--runtime", "openvino",
                          "-o", tmp_path / "a"), "runs TensorRT engines, not openvino")
    assert_user_error(cli("compile", digits_onnx, "--target", native_cpu_target(), "--runtime", "tensorrt",
                          "-o", tmp_path / "a"), "is a CPU target; TensorRT runs on NVIDIA GPUs")
    profile = onnxruntime_only_target(tmp_path)
    assert_user_error(cli("compile", digits_onnx, "--target", profile, "--runtime", "openvino", "-o",
                          tmp_path / "a"), "lists runtimes onnxruntime, not openvino")
    result = cli("compile", digits_onnx, "--target", "x86-cpu", "--runtime", "tflite", "-o", tmp_path / "a")
    assert result.exit_code == 1 and "'tflite' is not one of 'auto', 'onnxruntime', 'openvino', 'tensorrt'" in \
        " ".join(result.output.split())
    assert not (tmp_path / "a").exists()
