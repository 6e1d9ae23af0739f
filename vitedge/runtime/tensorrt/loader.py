"""Building TensorRT engines: the settings, the equivalent trtexec line, the FP16 ONNX for
strongly typed builds, the builder, and what the engine inspector says about the layers.

`BuildSettings`, `build_settings`, `trtexec_command` and `parse_layer_info` are plain Python
(tested on CPU); `build_engine` needs `import tensorrt` and an NVIDIA GPU and is written against
the public TensorRT 10/11 Python API (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):

- TensorRT 10: weakly typed network; precision by builder flags (FP16, INT8 for Q/DQ graphs);
  LayerNorm/Softmax/reductions pinned to FP32 with per-layer precision constraints, because
  FP16 LayerNorm overflows on real ViT activations.
- TensorRT 11 removed the precision flags: networks are strongly typed, so FP16 means building
  from an FP16 ONNX in which those same nodes stay FP32 (`model.fp16.onnx`, `fp16_onnx`).
- TensorRT 8.x (JetPack 5): weakly typed as for 10, plus the EXPLICIT_BATCH network flag.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.errors import ExportError, InputError
from vitedge.runtime.tensorrt.runner import import_tensorrt

if TYPE_CHECKING:
    import onnx

    from vitedge.targets import Target

ENGINE = "model.engine"
FP16_MODEL = "model.fp16.onnx"
# Nodes that stay FP32 when a TensorRT engine runs in FP16: FP16 LayerNorm/Softmax/reductions
# overflow or lose the small differences ViT attention depends on.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp")
TIMING_CACHE = "timing.cache"
LAYER_INFO = "layers.json"


@dataclass(frozen=True)
class BuildSettings:
    """Everything `build_engine` and trtexec need; stored in the bundle's bundle.json."""

    onnx: str  # file name inside the bundle
    input_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    batch: tuple[int, int, int]  # min, opt, max
    precision: str  # fp32 | fp16 | int8 | best
    workspace_mib: int
    strongly_typed: bool
    fp32_layers: tuple[str, ...] = ()  # node names kept FP32 in weakly typed FP16 builds
    dla_core: int | None = None
    tensorrt: str | None = None  # the TensorRT version these settings were written for

    @property
    def fp16(self) -> bool:
        return self.precision in ("fp16", "best") and not self.strongly_typed

    @property
    def int8(self) -> bool:
        return self.precision in ("int8", "best") and not self.strongly_typed

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildSettings:
        data = dict(data)
        for key in ("input_shape", "batch", "fp32_layers"):
            data[key] = tuple(data[key])
        return cls(**data)


def trtexec_command(settings: BuildSettings) -> str:
    """The trtexec line that builds the same engine as `build_engine` (run in the bundle folder)."""
    dims = {name: "x".join(str(d) for d in settings.shape(b))
            for name, b in zip(("min", "opt", "max"), settings.batch)}
    args = ["trtexec", f"--onnx={settings.onnx}", f"--saveEngine={ENGINE}",
            f"--minShapes={settings.input_name}:{dims['min']}",
            f"--optShapes={settings.input_name}:{dims['opt']}",
            f"--maxShapes={settings.input_name}:{dims['max']}",
            f"--memPoolSize=workspace:{settings.workspace_mib}M",
            f"--timingCacheFile={TIMING_CACHE}",
            "--profilingVerbosity=detailed", f"--exportLayerInfo={LAYER_INFO}", "--skipInference"]
    if settings.strongly_typed:
        args.append("--stronglyTyped")
    if settings.fp16:
        args.append("--fp16")
    if settings.int8:
        args.append("--int8")
    if settings.fp16 and settings.fp32_layers:
        precisions = ",".join(f"{name}:fp32" for name in settings.fp32_layers)
        args += [f"--layerPrecisions={precisions}", f"--layerOutputTypes={precisions}",
                 "--precisionConstraints=prefer"]
    if settings.dla_core is not None:
        args += [f"--useDLACore={settings.dla_core}", "--allowGPUFallback"]
    return " ".join(shlex.quote(a) for a in args)



def image_input(model: onnx.ModelProto) -> tuple[str, tuple[int, int, int]]:
    """The graph's image input: its name and (C, H, W), which must be fixed."""
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise InputError(f"the model's input {graph_input.name} has shape {shape}, expected "
                         "(batch, channels, height, width) with fixed channels and size "
                         "(or height, width, channels with the preprocessing in the graph)",
                         "export with vitedge export, which fixes the image size")
    return graph_input.name, (shape[1], shape[2], shape[3])  # type: ignore[return-value]


def build_settings(model: onnx.ModelProto, target: Target, precision: str, batch: tuple[int, int, int],
                   dla_core: int | None, model_file: str) -> BuildSettings:
    """The settings for `model` (saved as `model_file` in the bundle) on `target`."""
    name, shape = image_input(model)
    strongly_typed = int((target.tensorrt or "10").split(".")[0]) >= 11
    fp32_layers = tuple(n.name for n in model.graph.node if n.op_type in FP32_OPS)
    return BuildSettings(onnx=FP16_MODEL if (strongly_typed and precision == "fp16") else model_file,
                         input_name=name, input_shape=shape, batch=batch, precision=precision,
                         workspace_mib=target.workspace_mib or 1024, strongly_typed=strongly_typed,
                         fp32_layers=fp32_layers, dla_core=dla_core, tensorrt=target.tensorrt)


def fp16_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and math with FP32 inputs/outputs, keeping FP32_OPS in FP32 (TensorRT 11)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS))

# ------------------------------------------------------------------------------ engine facts
_PRECISION_TOKENS = (("FP32", "fp32"), ("FP16", "fp16"), ("BF16", "bf16"), ("INT8", "int8"),
                     ("FP8", "fp8"), ("INT32", "int32"), ("INT64", "int64"), ("BOOL", "bool"))


def _precision_of(format_text: str) -> str:
    upper = format_text.upper()
    for token, name in _PRECISION_TOKENS:
        if re.search(rf"\b{token}\b", upper):
            return name
    return "unknown"


@dataclass
class LayerSummary:
    layers: list[dict[str, Any]] = field(default_factory=list)  # name, type, precision, device

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for layer in self.layers:
            result[layer["precision"]] = result.get(layer["precision"], 0) + 1
        return dict(sorted(result.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"by_precision": self.counts(),
                "on_dla": sum(1 for layer in self.layers if layer["device"] == "dla"),
                "layers": self.layers}


def parse_layer_info(info: dict[str, Any] | str) -> LayerSummary:
    """Which engine layer runs in which precision, from the engine inspector's JSON.

    TensorRT's JSON (ProfilingVerbosity.DETAILED; also what `trtexec --exportLayerInfo` writes)
    has "Layers": a dict per layer with "Name", "LayerType" and "Outputs"/"Inputs" whose
    "Format/Datatype" reads like "Row major linear FP16 format"; with less verbosity layers are
    bare names. A layer's precision is its first output's type.
    """
    data = json.loads(info) if isinstance(info, str) else info
    summary = LayerSummary()
    for layer in data.get("Layers", []):
        if isinstance(layer, str):
            summary.layers.append({"name": layer, "type": "?", "precision": "unknown", "device": "gpu"})
            continue
        tensors = layer.get("Outputs") or layer.get("Inputs") or [{}]
        precision = _precision_of(str(tensors[0].get("Format/Datatype", "")))
        kind = str(layer.get("LayerType", "?"))
        name = str(layer.get("Name", "?"))
        device = "dla" if "DLA" in kind.upper() or name.startswith("{ForeignNode") else "gpu"
        summary.layers.append({"name": name, "type": kind, "precision": precision, "device": device})
    return summary


def build_engine(bundle: Path, settings: BuildSettings) -> dict[str, Any]:
    """Build `bundle/model.engine` (+ timing cache, layer info); return the layer summary."""
    trt = import_tensorrt()
    major = int(trt.__version__.split(".")[0])
    if major >= 11 and not settings.strongly_typed:
        raise ExportError(f"TensorRT {trt.__version__} builds strongly typed networks only, but this "
                          f"bundle was prepared for TensorRT {settings.tensorrt} precision flags",
                          "re-run vitedge compile for a TensorRT 11 target")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if settings.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle / settings.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected {settings.onnx}: {errors}",
                          "check the ops against the compile findings; file a vitedge issue")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if settings.fp16 and settings.fp32_layers:
        keep = set(settings.fp32_layers)
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if layer.name in keep:
                layer.precision = trt.float32
                for output in range(layer.num_outputs):
                    layer.set_output_type(output, trt.float32)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    low, opt, high = (settings.shape(b) for b in settings.batch)
    profile.set_shape(settings.input_name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_path = bundle / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT could not build an engine (see its log above)",
                          "raise workspace_mib in the target profile, or try --precision fp16")
    (bundle / ENGINE).write_bytes(bytes(serialized))
    (bundle / TIMING_CACHE).write_bytes(bytes(config.get_timing_cache().serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    (bundle / LAYER_INFO).write_text(info)
    return parse_layer_info(info).to_dict()
