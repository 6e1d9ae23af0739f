"""`vitedge package BUNDLE --for triton`: a Triton Inference Server model repository.

The config is built as Triton's own `ModelConfig` protobuf message (tritonclient ships
`model_config_pb2`), so every field name and type is checked by Triton's schema when it is made,
and written in protobuf text format as `config.pbtxt`. What goes in it comes from the bundle:
the platform or backend from its runtime, input and output names, dtypes and dims from its
graph, `max_batch_size` and dynamic batching from its batch profile, the thread settings it was
compiled and timed with, and the labels as the classification extension's `label_filename`.

Layout (Triton reads only model folders from a repository, so the rest sits beside it):

    OUT/model_repository/NAME/config.pbtxt
    OUT/model_repository/NAME/labels.txt
    OUT/model_repository/NAME/VERSION/model.onnx | model.xml + model.bin | model.plan
    OUT/README.md   the tritonserver command, the versions the model needs, a client call
    OUT/client.py   a client that preprocesses as the bundle's card says (with vitedge)
    OUT/package.json

Which model file each runtime gets:
- ONNX Runtime bundles: the bundle's plain graph (source.onnx). Its offline-optimized model.onnx
  holds fused kernels tied to the ONNX Runtime version and CPU it was made on, which Triton's
  ONNX Runtime backend (another version) may not load; Triton optimizes the plain graph at load.
- OpenVINO bundles: the IR (model.xml + model.bin) for Triton's OpenVINO backend.
- TensorRT bundles: the engine as model.plan, for Triton's TensorRT platform; an engine runs
  only with the TensorRT version it was built with, which the README and config state.
The packaged model is run with the bundle's own runtime next to the bundle and must give the
same outputs (bit for bit where the files are the same; the bundle's parity tolerance where
Triton will optimize the plain graph itself).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vitedge.errors import InputError, VitedgeError
from vitedge.outputs import OutputKind
from vitedge.package import write_manifest

if TYPE_CHECKING:
    from vitedge.compile.bundle import Bundle

REPOSITORY = "model_repository"
LABELS = "labels.txt"
TRITON_FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin"),
                "tensorrt": ("model.plan",)}
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 11: "TYPE_FP64", 7: "TYPE_INT64",
               6: "TYPE_INT32", 3: "TYPE_INT8", 2: "TYPE_UINT8"}


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None  # the model's name in the repository (default: from the card)
    version: int = 1
    instances: int = 1
    kind: str | None = None  # "cpu" | "gpu"; default: gpu for TensorRT, cpu otherwise
    max_queue_delay_us: int = 100


@dataclass(frozen=True)
class PackageResult:
    out_dir: Path
    model_name: str
    repository: Path
    config: Path
    parity: dict[str, Any]


def model_name(bundle: Bundle, name: str | None) -> str:
    """A repository folder name: the given one (checked) or the card's architecture, cleaned."""
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
            raise InputError(f"--name {name!r} is not a usable Triton model name",
                             "use letters, digits, '_', '-' and '.', starting with a letter or digit")
        return name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", bundle.card.architecture or "model").strip("_.-") or "model"
    return f"{base[:100]}_{bundle.passport.target.name}"


def _graph_io(bundle: Bundle) -> tuple[Any, Any, bool]:
    """(input, output, batch dim is dynamic) of the bundle's ONNX graph, as ONNX value infos."""
    import onnx

    from vitedge.compile.bundle import MODEL, SOURCE

    plain = bundle.member(SOURCE if bundle.runtime in ("onnxruntime", "openvino") else MODEL)
    graph = onnx.load(str(plain), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InputError(f"{bundle.path}: Triton packaging takes a model with one input and one output "
                         f"(this one has {len(inputs)} and {len(graph.output)})",
                         "package a classifier or feature extractor bundle")
    first = inputs[0].type.tensor_type.shape.dim[0]
    return inputs[0], graph.output[0], not first.HasField("dim_value")


def _dims(value: Any) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def triton_config(bundle: Bundle, name: str, options: TritonOptions) -> Any:
    """The bundle's Triton ModelConfig (a model_config_pb2.ModelConfig message)."""
    model_config_pb2 = _model_config_pb2()
    runtime, settings = bundle.runtime, bundle.settings
    graph_input, graph_output, batched = _graph_io(bundle)
    if graph_input.name != settings.input.name:
        raise InputError(f"{bundle.path}: bundle.json names the input {settings.input.name!r}, the graph "
                         f"{graph_input.name!r}", "re-create the bundle with vitedge compile")
    kind = options.kind or ("gpu" if runtime == "tensorrt" else "cpu")
    if runtime == "tensorrt" and kind != "gpu":
        raise InputError("--kind cpu: a TensorRT engine runs on the GPU only",
                         "drop --kind, or package a CPU bundle (compile --target x86-cpu)")
    if runtime == "openvino" and kind != "cpu":
        raise InputError(f"--kind {kind}: this OpenVINO bundle was compiled for the CPU",
                         "drop --kind, or package a TensorRT bundle for GPUs")
    providers = settings.session.providers if settings.session else []
    if runtime == "onnxruntime" and kind == "gpu" and "CUDAExecutionProvider" not in providers:
        raise InputError(f"--kind gpu: this ONNX Runtime bundle was compiled for {bundle.passport.target.name} "
                         "(CPU provider only)", "drop --kind, or compile for a GPU target and package that")
    config = model_config_pb2.ModelConfig(name=name)
    if runtime == "onnxruntime":
        config.platform = "onnxruntime_onnx"
    elif runtime == "tensorrt":
        config.platform = "tensorrt_plan"
    else:
        config.backend = "openvino"
    _low, opt, high = settings.batch
    input_dims, output_dims = _dims(graph_input), _dims(graph_output)
    config.max_batch_size = high if batched else 0
    dtype = _ONNX_TYPES.get(graph_input.type.tensor_type.elem_type)
    out_dtype = _ONNX_TYPES.get(graph_output.type.tensor_type.elem_type)
    if dtype is None or out_dtype is None:
        raise InputError(f"{bundle.path}: the graph's input/output types have no Triton equivalent here",
                         "package a bundle whose input and output are float32")
    tensor_in = config.input.add(name=graph_input.name, data_type=getattr(model_config_pb2, dtype))
    tensor_in.dims.extend(input_dims[1:] if batched else input_dims)  # fixed batch: the graph's own
    tensor_out = config.output.add(name=graph_output.name, data_type=getattr(model_config_pb2, out_dtype))
    tensor_out.dims.extend(output_dims[1:] if batched else output_dims)
    labels = bundle.card.labels or []
    if labels and output_dims[1:] == [len(labels)]:
        tensor_out.label_filename = LABELS
    if batched and high > 1:
        preferred = sorted({b for b in (opt, high) if b > 1})
        config.dynamic_batching.preferred_batch_size.extend(preferred)
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = config.instance_group.add(count=options.instances)
    group.kind = (model_config_pb2.ModelInstanceGroup.KIND_GPU if kind == "gpu"
                  else model_config_pb2.ModelInstanceGroup.KIND_CPU)
    parameters: dict[str, str] = {}
    if runtime == "onnxruntime" and settings.session and settings.session.intra_op_threads:
        parameters["intra_op_thread_count"] = str(settings.session.intra_op_threads)
    if runtime == "openvino" and settings.openvino:
        if settings.openvino.threads:
            parameters["INFERENCE_NUM_THREADS"] = str(settings.openvino.threads)
        if settings.openvino.precision == "bf16":
            parameters["HINT_BF16"] = "YES"
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def config_text(bundle: Bundle, config: Any) -> str:
    """config.pbtxt: the message in protobuf text format, after comments on what it needs."""
    from google.protobuf import text_format

    header = [f"# Written by vitedge package from the {bundle.runtime} bundle for "
              f"{bundle.passport.target.name} ({bundle.passport.precision}).", *[
                  f"# {line}" for line in requirements(bundle)]]
    return "\n".join(header) + "\n" + text_format.MessageToString(config)


def parse_config(text: str) -> Any:
    """A config.pbtxt read back with Triton's schema (raises on any unknown field or bad value)."""
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_pb2().ModelConfig())


def requirements(bundle: Bundle) -> list[str]:
    """What the serving side must have for this model, from the passport."""
    built = bundle.passport.built
    if bundle.runtime == "tensorrt":
        engine = built.engine
        version = engine.tensorrt if engine else None
        sm = engine.sm if engine else None
        return [f"The engine was built with TensorRT {version or '?'} for compute capability {sm or '?'}: "
                "Triton loads it only in a container whose TensorRT is that same version, on that GPU "
                "architecture (see NVIDIA's Triton release notes / framework support matrix)."]
    if bundle.runtime == "openvino":
        version = built.openvino.version if built.openvino else None
        precision = bundle.settings.openvino.precision if bundle.settings.openvino else None
        lines = [f"OpenVINO IR made with OpenVINO {version or '?'}; use a Triton release whose OpenVINO "
                 "backend is that version or newer."]
        if precision != "bf16":
            lines.append("Triton's OpenVINO backend has no FP32 precision hint: on a CPU with AMX or "
                         "AVX512-BF16 OpenVINO may run the float layers in BF16 there.")
        return lines
    return [f"Plain ONNX graph (the bundle was compiled and timed with ONNX Runtime "
            f"{built.onnxruntime or '?'}); Triton's ONNX Runtime backend optimizes it at load."]


def _model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise InputError(f"tritonclient is not importable ({exc})",
                         "pip install 'tritonclient[grpc]' (vitedge's dependencies include it)") from None
    return model_config_pb2


def package_triton(bundle_path: str | Path, out: str | Path, *, options: TritonOptions | None = None,
                   overwrite: bool = False, say: Callable[[str], None] | None = None,
                   kserve: bool = False) -> PackageResult:
    """Write a Triton model repository for the bundle at `bundle_path` to `out` (see the module);
    with `kserve`, also the InferenceService that serves it on KServe (vitedge.package.kserve)."""
    from vitedge.compile.bundle import read_bundle
    from vitedge.locks import atomic_write_text
    from vitedge.outputs import check_output, writing

    say = say or (lambda _message: None)
    options = options or TritonOptions()
    if options.version < 1 or options.instances < 1 or options.max_queue_delay_us < 0:
        raise InputError("--model-version and --instances must be at least 1, --max-queue-delay-us "
                         "at least 0")
    bundle = read_bundle(bundle_path)
    check_output(out, OutputKind.PACKAGE, overwrite=overwrite, inputs=[Path(bundle_path)])
    name = model_name(bundle, options.name)
    config = triton_config(bundle, name, options)
    sources = _model_files(bundle)
    with writing(out, OutputKind.PACKAGE, overwrite=overwrite, inputs=[Path(bundle_path)]) as staging:
        model_dir = staging / REPOSITORY / name
        version_dir = model_dir / str(options.version)
        version_dir.mkdir(parents=True)
        for target_name, source in sources.items():
            shutil.copyfile(source, version_dir / target_name)
        text = config_text(bundle, config)
        parse_config(text)  # what Triton will read must parse with its schema
        atomic_write_text(model_dir / "config.pbtxt", text)
        if config.output[0].label_filename:
            atomic_write_text(model_dir / LABELS, "\n".join(bundle.card.labels or []) + "\n")
        say("checking the packaged model against the bundle")
        parity = same_model(bundle, version_dir)
        service = None
        if kserve:
            import yaml

            from vitedge.package import kserve as kserve_manifest

            service = kserve_manifest.inference_service(bundle, name, staging / REPOSITORY, options.instances)
            text = kserve_manifest.manifest_text(service, bundle)
            kserve_manifest.validate(yaml.safe_load(text))  # what kubectl will read, against KServe's CRD
            atomic_write_text(staging / kserve_manifest.MANIFEST_NAME, text)
        atomic_write_text(staging / "client.py", _client(bundle, name, config))
        atomic_write_text(staging / "README.md", _readme(bundle, name, config, options, parity, service))
        write_manifest(staging, bundle, "kserve" if kserve else "triton", model_name=name,
                       version=options.version, requirements=requirements(bundle), parity=parity)
    out_dir = Path(out)
    return PackageResult(out_dir, name, out_dir / REPOSITORY, out_dir / REPOSITORY / name / "config.pbtxt",
                         parity)


def _model_files(bundle: Bundle) -> dict[str, Path]:
    """The repository file name -> the bundle file it is copied from."""
    from vitedge.compile.bundle import SOURCE

    if bundle.runtime == "onnxruntime":
        return {"model.onnx": bundle.member(SOURCE)}
    if bundle.runtime == "openvino":
        return {"model.xml": bundle.file("model"), "model.bin": bundle.file("weights")}
    if not bundle.settings.engine:
        raise InputError(f"bundle {bundle.path} has no TensorRT engine yet "
                         f"({bundle.passport.built.not_built_because or 'not built'})",
                         f"build it on the {bundle.passport.target.name} first (vitedge build "
                         f"{bundle.path}, or its trtexec.sh), then package it")
    return {"model.plan": bundle.file("engine")}


def same_model(bundle: Bundle, version_dir: Path) -> dict[str, Any]:
    """Run the packaged model file with the bundle's runtime and the bundle itself on the same
    seeded inputs; refuse the package when they differ (see the module docstring)."""
    import numpy as np

    from vitedge.runtime.parity import max_abs_diff
    from vitedge.sessions import load as load_session

    if bundle.runtime == "tensorrt":
        return {"checked": False, "how": "the engine file is a byte copy (hash checked); TensorRT "
                "runs it only on the device, not here"}
    try:
        reference = load_session(bundle.path)
    except InputError as exc:
        return {"checked": False, "how": f"the bundle cannot run here ({exc.message})"}
    low, opt, _high = bundle.settings.batch
    batch = reference.random_batch(opt)  # of what the graph takes (raw pixels when it preprocesses)
    expected = reference.infer_native(batch)
    reference.close()
    int8 = bundle.passport.precision in ("int8", "best")
    if bundle.runtime == "openvino":
        from vitedge.runtime.openvino.runner import OpenVinoSession

        openvino = bundle.settings.openvino
        assert openvino is not None  # an OpenVINO bundle's settings have it (schema)
        packaged = OpenVinoSession(version_dir / "model.xml", weights=version_dir / "model.bin",
                                   precision=openvino.precision, threads=openvino.threads,
                                   performance_hint=openvino.performance_hint, int8=int8,
                                   min_batch=low, max_batch=opt)
        how, relative = "OpenVINO ran the packaged IR and the bundle with the same settings", 1e-6
    else:
        from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession

        packaged = OnnxRuntimeSession(version_dir / "model.onnx", optimization="all")
        # Triton optimizes the plain graph itself; an INT8 graph's float kernels may round
        # differently from the bundle's saved optimization (see compile's parity check)
        how = "ONNX Runtime ran the packaged plain graph (optimized at load, as Triton does) and the bundle"
        relative = 0.5 if int8 else 1e-3
    got = packaged.infer(batch)
    packaged.close()
    scale = float(np.abs(expected).max()) or 1.0
    diff = max_abs_diff(got, expected)
    if not np.isfinite(got).all() or diff > relative * scale + 1e-6:
        raise VitedgeError(f"the packaged model differs from the bundle (max |diff| {diff:.3g}, largest "
                           f"output {scale:.3g})", "report this with the bundle; re-create the bundle")
    return {"checked": True, "how": how, "max_abs_diff": diff, "largest_output": scale, "samples": opt}


def _client(bundle: Bundle, name: str, config: Any) -> str:
    pre = repr(bundle.card.preprocessing.to_dict())  # a Python literal (None, not null)
    dims = list(config.input[0].dims)
    pixels = bundle.pixels
    if pixels is None:
        takes = (f"preprocessed float32 {dims} tensors; this client preprocesses exactly as the\n"
                 "bundle's card says, with vitedge's own preprocessing")
        prepare = "preprocess(path, PREPROCESSING)[None].astype(np.float32)"
        imports, datatype = "from vitedge.preprocess import preprocess", "FP32"
    else:
        takes = (f"raw {pixels.describe()} and normalizes inside;\nthis client "
                 + ("sends images resized to that size" if pixels.resize else
                    "resizes and crops them with vitedge's own preprocessing") + " (a camera frame of that size goes as it is)")
        prepare = "PIXELS.from_image(path, PREPROCESSING)[None]"
        imports = f"from vitedge.preprocess import PixelInput\n\nPIXELS = PixelInput.from_dict({pixels.to_dict()!r})"
        datatype = "UINT8" if pixels.dtype == "uint8" else "FP32"
    return f'''"""Classify images with the Triton model {name!r} (written by vitedge package).

    python client.py IMAGE [IMAGE ...] [--url localhost:8000] [--top 5]

The model takes {takes}. Needs tritonclient[http] and vitedge (its preprocessing), installed from
vitedge's wheel or checkout: pip install /path/to/vitedge 'tritonclient[http]'.
"""

import argparse

import numpy as np

from vitedge.card import Preprocessing
{imports}

PREPROCESSING = Preprocessing.from_dict({pre})
MODEL, INPUT, OUTPUT = {name!r}, {config.input[0].name!r}, {config.output[0].name!r}


def batch_of(path: str) -> np.ndarray:
    """One image as the model's input, a batch of one."""
    return {prepare}


def main() -> None:
    import tritonclient.http as httpclient

    parser = argparse.ArgumentParser()
    parser.add_argument("images", nargs="+")
    parser.add_argument("--url", default="localhost:8000")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    client = httpclient.InferenceServerClient(url=args.url)
    for path in args.images:
        batch = batch_of(path)
        tensor = httpclient.InferInput(INPUT, list(batch.shape), "{datatype}")
        tensor.set_data_from_numpy(batch)
        wanted = httpclient.InferRequestedOutput(OUTPUT, class_count=args.top)
        result = client.infer(MODEL, [tensor], outputs=[wanted])
        print(path, [entry.decode() if isinstance(entry, bytes) else entry
                     for entry in result.as_numpy(OUTPUT).reshape(-1)])


if __name__ == "__main__":
    main()
'''


def _readme(bundle: Bundle, name: str, config: Any, options: TritonOptions, parity: dict[str, Any],
            service: dict[str, Any] | None = None) -> str:
    pre = bundle.card.preprocessing
    image = ("nvcr.io/nvidia/tritonserver:<YY.MM>-py3" if bundle.runtime != "tensorrt" else
             "nvcr.io/nvidia/tritonserver:<the release whose TensorRT matches, below>-py3")
    gpus = "--gpus all " if bundle.runtime == "tensorrt" else ""
    checked = (f"yes: {parity['how']}; max |diff| {parity['max_abs_diff']:.3g} (largest output "
               f"{parity['largest_output']:.3g})" if parity.get("checked") else f"no: {parity['how']}")
    batching = (f"dynamic batching up to {config.max_batch_size} (preferred "
                f"{list(config.dynamic_batching.preferred_batch_size)}, max queue delay "
                f"{config.dynamic_batching.max_queue_delay_microseconds} µs)"
                if config.HasField("dynamic_batching") else
                f"max_batch_size {config.max_batch_size} (no dynamic batching)")
    lines = [
        f"# Triton model repository: {name}", "",
        f"Packaged by vitedge from the {bundle.runtime} bundle for {bundle.passport.target.name} "
        f"({bundle.passport.precision}), version {options.version}; {batching}; "
        f"{options.instances} instance(s) on the {'GPU' if bundle.runtime == 'tensorrt' or options.kind == 'gpu' else 'CPU'}.",
        "",
        "## What the model needs", "", *[f"- {line}" for line in requirements(bundle)], "",
        "## Serve it", "", "```",
        f"docker run --rm {gpus}-p 8000:8000 -p 8001:8001 -p 8002:8002 \\",
        f"  -v \"$PWD/{REPOSITORY}\":/models {image} \\",
        "  tritonserver --model-repository=/models", "```", "",
        "## Call it", "",
        (f"Input `{config.input[0].name}`: float32 {list(config.input[0].dims)} per image, already "
         f"preprocessed: resize ({pre.resize_mode}, {pre.interpolation}, crop_pct {pre.crop_pct}) to "
         f"{pre.input_size[0]}x{pre.input_size[1]}, {pre.channel_order}, x * {pre.scale:.6g}, minus mean "
         f"{list(pre.mean)}, divided by std {list(pre.std)}, channels first." if bundle.pixels is None
         else f"Input `{config.input[0].name}`: {list(config.input[0].dims)} per image, "
         f"{bundle.pixels.describe()} as they are: the graph "
         f"does the rest (compiled with --preprocess-in-graph).") + " Output "
        f"`{config.output[0].name}`" + (f" with labels ({LABELS}): ask for `class_count` to get "
                                         "\"score:index:label\" strings." if config.output[0].label_filename
                                         else "."), "",
        "```", "pip install /path/to/vitedge 'tritonclient[http]'   # vitedge from its checkout or wheel", "python client.py photo.jpg --url localhost:8000",
        "```", "",
        *(_kserve_section(service) if service else []),
        "## Checked when packaged", "",
        "- config.pbtxt parsed with Triton's ModelConfig schema (tritonclient's model_config_pb2).",
        *(["- inferenceservice.yaml checked against KServe's InferenceService CRD schema (v1beta1, "
           "shipped in vitedge/assets)."] if service else []),
        f"- Same outputs as the bundle: {checked}.",
        "- Not run here: Triton itself" + (" or KServe" if service else "")
        + " (no server in the packaging environment).", ""]
    return "\n".join(lines)


def _kserve_section(service: dict[str, Any]) -> list[str]:
    from vitedge.package.kserve import MANIFEST_NAME, STORAGE_PLACEHOLDER

    name = service["metadata"]["name"]
    resources = service["spec"]["predictor"]["model"]["resources"]
    return ["## On KServe", "",
            f"`{MANIFEST_NAME}` runs this repository on KServe's Triton runtime (kserve-tritonserver, "
            f"protocol v2) with requests {resources['requests']} and limits {resources['limits']} (a "
            "starting point: the model files, Triton and one runtime arena; tune them with a load test).",
            "", "```", "# upload model_repository/ (the folder holding the model folder), e.g.",
            "aws s3 cp --recursive model_repository s3://BUCKET/PATH/model_repository",
            f"# set storageUri in {MANIFEST_NAME} (now {STORAGE_PLACEHOLDER}) to that URI, then",
            f"kubectl apply -f {MANIFEST_NAME}",
            f"kubectl get inferenceservice {name}   # READY True, then: POST $URL/v2/models/{{model}}/infer",
            "```", ""]
