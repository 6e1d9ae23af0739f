"""vitedge package --for triton: the model repository, validated with Triton's own schema."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from conftest import HELDOUT, assert_user_error, native_cpu_target, tree
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.compile.prepare import compile_bundle
from vitedge.models.load import load
from vitedge.package.triton import parse_config
from vitedge.preprocess import preprocess
from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession
from vitedge.sessions import load as load_session
from vitedge.targets import load_target

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] ships Triton's model_config_pb2")
runner = CliRunner()


@pytest.fixture(scope="module")
def ort_bundle(digits_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "ort"
    compile_bundle(load(digits_onnx), load_target(native_cpu_target()), out, runtime="onnxruntime")
    return out


def _package(bundle: Path, out: Path, *extra: str):
    return runner.invoke(app, ["package", str(bundle), "--for", "triton", "-o", str(out), *extra])


def test_onnxruntime_bundle_to_triton_repository(ort_bundle, tmp_path):
    out = tmp_path / "triton"
    result = _package(ort_bundle, out, "--name", "digits", "--instances", "2", "--max-queue-delay-us", "500")
    assert result.exit_code == 0, result.output
    assert "same outputs as the bundle" in result.output
    model_dir = out / "model_repository" / "digits"
    assert sorted(p.name for p in (out / "model_repository").iterdir()) == ["digits"]  # only models there
    config = parse_config((model_dir / "config.pbtxt").read_text())  # Triton's schema
    bundle_settings = json.loads((ort_bundle / "bundle.json").read_text())
    _low, _opt, high = bundle_settings["batch"]
    assert config.platform == "onnxruntime_onnx" and config.name == "digits"
    assert config.max_batch_size == high
    assert list(config.input[0].dims) == list(bundle_settings["input"]["shape"])
    assert config.input[0].name == bundle_settings["input"]["name"]
    assert list(config.output[0].dims) == [10] and config.output[0].label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().split() == load(ort_bundle).card.labels
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    if high > 1:
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert max(config.dynamic_batching.preferred_batch_size) <= high
    # the packaged file is the bundle's plain graph, and it computes what the bundle computes
    packaged = model_dir / "1" / "model.onnx"
    assert packaged.read_bytes() == (ort_bundle / "source.onnx").read_bytes()
    image = preprocess(next(p for p in sorted(HELDOUT.rglob("*.png"))),
                       load(ort_bundle).card.preprocessing)[None].astype(np.float32)
    np.testing.assert_allclose(OnnxRuntimeSession(packaged).infer(image), load_session(ort_bundle).infer(image),
                               atol=1e-4)
    manifest = json.loads((out / "package.json").read_text())
    assert manifest["kind"] == "package" and manifest["parity"]["checked"] is True
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                      if p.is_file() and p.name != "package.json"}
    readme = (out / "README.md").read_text()
    assert "tritonserver --model-repository=/models" in readme and "ONNX Runtime" in readme
    # the client preprocesses as the card says (vitedge's own preprocessing, not a copy of it)
    client = runpy.run_path(str(out / "client.py"), run_name="not_main")
    assert client["MODEL"] == "digits" and client["PREPROCESSING"] == load(ort_bundle).card.preprocessing
    photo = next(p for p in sorted(HELDOUT.rglob("*.png")))
    np.testing.assert_array_equal(client["batch_of"](str(photo)), image)


def test_openvino_bundle_and_overwrite_rules(digits_onnx, tmp_path):
    pytest.importorskip("openvino")
    bundle = tmp_path / "ov"
    compile_bundle(load(digits_onnx), load_target(native_cpu_target()), bundle, runtime="openvino")
    out = tmp_path / "triton"
    assert _package(bundle, out, "-q").exit_code == 0
    name = next((out / "model_repository").iterdir()).name
    config = parse_config((out / "model_repository" / name / "config.pbtxt").read_text())
    assert config.backend == "openvino" and not config.platform
    version = out / "model_repository" / name / "1"
    assert (version / "model.bin").read_bytes() == (bundle / "model.bin").read_bytes()
    assert json.loads((out / "package.json").read_text())["parity"]["max_abs_diff"] <= 1e-5
    # again: refused without --overwrite, replaced with it; a foreign file blocks the overwrite
    assert_user_error(_package(bundle, out), "already exists", "--overwrite")
    assert _package(bundle, out, "--overwrite", "--instances", "3").exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    assert_user_error(_package(bundle, out, "--overwrite"), "notes.txt", "did not write")
    assert tree(out) == before
    assert_user_error(_package(bundle, tmp_path / "gpu", "--kind", "gpu"), "--kind gpu", "CPU")
    assert not (tmp_path / "gpu").exists()


def test_bad_inputs(digits_onnx, ort_bundle, tmp_path):
    assert_user_error(_package(ort_bundle, tmp_path / "a", "--kind", "gpu"), "--kind gpu", "CPU provider only")
    assert_user_error(_package(digits_onnx, tmp_path / "a"), "not a vitedge bundle", "vitedge compile")
    assert_user_error(_package(ort_bundle, tmp_path / "b", "--name", "../escape"), "not a usable Triton model name")
    engine_less = tmp_path / "trt"
    compile_bundle(load(digits_onnx), load_target("jetson-orin-nano"), engine_less)
    assert_user_error(_package(engine_less, tmp_path / "c"), "no TensorRT engine yet", "then package it")
    assert_user_error(_package(ort_bundle, tmp_path / "d", "--for", "deepstream"), "deepstream")
    for name in "abcd":
        assert not (tmp_path / name).exists()


def test_kserve_inference_service_checked_against_the_crd(ort_bundle, tmp_path):
    import yaml

    from vitedge.errors import InputError
    from vitedge.package.kserve import STORAGE_PLACEHOLDER, validate

    out = tmp_path / "kserve"
    result = runner.invoke(app, ["package", str(ort_bundle), "--for", "kserve", "-o", str(out), "--instances", "2"])
    assert result.exit_code == 0, result.output
    assert (out / "model_repository").is_dir() and "kubectl apply" in (out / "README.md").read_text()
    service = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    validate(service)
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == "kserve-tritonserver" and model["modelFormat"] == {"name": "triton"}
    assert model["storageUri"] == STORAGE_PLACEHOLDER and model["protocolVersion"] == "v2"
    assert model["resources"]["limits"]["memory"].endswith("Mi") and "nvidia.com/gpu" not in model["resources"]["limits"]
    assert json.loads((out / "package.json").read_text())["for"] == "kserve"
    # what the CRD refuses is refused: an unknown field, a bad quantity, a missing model format,
    # a name Kubernetes would not take
    bad = [("spec.predictor.model.storageUrl", "not a field of the CRD"),
           ("quantity", "does not match"), ("format", "modelFormat.name is required"),
           ("name", "DNS-1035")]
    for case, fragment in bad:
        broken = json.loads(json.dumps(service))
        target = broken["spec"]["predictor"]["model"]
        if case == "quantity":
            target["resources"]["limits"]["memory"] = "1 GB"
        elif case == "format":
            target["modelFormat"] = {"version": "2"}
        elif case == "name":
            broken["metadata"]["name"] = "Digits_Model"
        else:
            target["storageUrl"] = "s3://x"
        with pytest.raises(InputError, match=fragment):
            validate(broken)


@pytest.fixture(scope="module")
def orin_bundle(digits_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "orin"
    compile_bundle(load(digits_onnx), load_target("jetson-orin-nano"), out)
    return out


def test_deepstream_configs_for_a_tensorrt_bundle(orin_bundle, digits_onnx, tmp_path):
    import onnx

    from vitedge.package.deepstream import known_keys, parse_config

    out = tmp_path / "ds"
    result = runner.invoke(app, ["package", str(orin_bundle), "--for", "deepstream", "-o", str(out),
                                 "--camera-size", "480x640", "--classifier-threshold", "0.3"])
    assert result.exit_code == 0, result.output
    infer = parse_config((out / "config_infer_primary.txt").read_text())["property"]
    app_config = parse_config((out / "deepstream_app_config.txt").read_text())
    table = known_keys()
    assert set(infer) <= set(table["nvinfer"]["property"])
    for section, values in app_config.items():
        assert set(values) <= set(table["deepstream_app"][section.rstrip("0123456789")]), section
    settings = json.loads((orin_bundle / "bundle.json").read_text())
    assert infer["network-type"] == "1" and infer["batch-size"] == str(settings["batch"][2])
    assert infer["network-mode"] == {"fp16": "2", "fp32": "0"}[settings["precision"]]
    assert infer["classifier-threshold"] == "0.3" and infer["output-blob-names"] == "probabilities"
    assert app_config["source0"]["camera-width"] == "640" and app_config["streammux"]["height"] == "480"
    assert (out / "labels.txt").read_text().strip() == ";".join(load(orin_bundle).card.labels)
    # nvinfer's y = net-scale-factor * (x - offset) is vitedge's normalization
    card = load(orin_bundle).card.preprocessing
    pixels = np.arange(256, dtype=np.float32)
    offsets = [float(v) for v in infer["offsets"].split(";")]
    for channel in range(3):
        ours = (pixels * card.scale - card.mean[channel]) / card.std[channel]
        theirs = float(infer["net-scale-factor"]) * (pixels - offsets[channel])
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
    # the packaged graph ends in the probabilities nvinfer's classifier parser reads
    graph = onnx.load(str(out / "model.onnx"))
    assert graph.graph.output[0].name == "probabilities" and graph.graph.node[-1].op_type == "Softmax"
    probabilities = OnnxRuntimeSession(out / "model.onnx").infer(
        preprocess(HELDOUT / "3" / "0045.png", card)[None])
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5) and probabilities.argmax() == 3
    script = (out / "build_engine.sh").read_text()
    assert "--onnx=model.onnx" in script and "--saveEngine=model.engine" in script
    assert "vitedge/softmax:fp32" in script or "--fp16" not in script


def test_deepstream_normalization_refusals(digits_onnx, orin_bundle, ort_bundle, tmp_path):
    imagenet = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
    made = {}
    for name, extra in (("imagenet", imagenet),
                        ("uint8", ["--preprocess-in-graph"]),
                        ("float", [*imagenet, "--preprocess-in-graph", "--input-dtype", "float32",
                                   "--input-layout", "NCHW"])):
        made[name] = tmp_path / name
        result = runner.invoke(app, ["compile", str(digits_onnx), "--target", "jetson-orin-nano",
                                     "-o", str(made[name]), *extra])
        assert result.exit_code == 0, result.output
    for bundle, fragment in ((made["imagenet"], "std [0.229, 0.224, 0.225] differs per channel"),
                             (made["uint8"], "--input-dtype float32"),
                             (ort_bundle, "needs a TensorRT bundle")):
        out = tmp_path / f"ds-{bundle.name}"
        assert_user_error(runner.invoke(app, ["package", str(bundle), "--for", "deepstream", "-o", str(out)]),
                          fragment)
        assert not out.exists()
    out = tmp_path / "ds-float"
    result = runner.invoke(app, ["package", str(made["float"]), "--for", "deepstream", "-o", str(out)])
    assert result.exit_code == 0, result.output
    from vitedge.package.deepstream import parse_config

    infer = parse_config((out / "config_infer_primary.txt").read_text())["property"]
    assert infer["net-scale-factor"] == "1.0" and infer["offsets"] == "0;0;0"  # the graph normalizes
    assert infer["network-input-order"] == "0"
    assert_user_error(runner.invoke(app, ["package", str(orin_bundle), "--for", "deepstream", "-o",
                                          str(tmp_path / "x"), "--camera-size", "720"]), "HEIGHTxWIDTH")
