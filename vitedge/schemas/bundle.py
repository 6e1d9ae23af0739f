"""bundle.json and passport.json: how a bundle runs, and where and with what it was made."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from vitedge.schemas.base import Count, Doc, LoadDoc, Positive, RelPath, Sha256, Share


# ------------------------------------------------------------------------------ bundles
class TensorDoc(Doc):
    name: str
    shape: tuple[Positive, Positive, Positive]


class PixelsDoc(Doc):
    """What a bundle with the preprocessing in its graph takes (vitedge.preprocess.PixelInput)."""

    size: tuple[Positive, Positive]
    layout: Literal["NHWC", "NCHW"]
    channel_order: Literal["RGB", "BGR"]
    dtype: Literal["uint8", "float32"]
    resize: bool


def _batch_ok(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError("batch must be min <= opt <= max, all >= 1")
    return batch


class SessionDoc(Doc):
    providers: list[Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]]
    intra_op_threads: Annotated[int, Field(ge=0, le=1024)]
    optimization: Literal["disabled", "basic", "extended", "all"]


class OpenVinoDoc(Doc):
    """How an OpenVINO bundle is compiled on the CPU: the float layers' precision hint (None:
    OpenVINO's own pick), the performance hint and the inference threads (0: OpenVINO's)."""

    precision: Literal["fp32", "bf16"] | None
    performance_hint: Literal["LATENCY", "THROUGHPUT"]
    threads: Annotated[int, Field(ge=0, le=1024)]


class BuildDoc(Doc):
    onnx: RelPath
    input_name: str
    input_shape: tuple[Positive, Positive, Positive]
    batch: tuple[Positive, Positive, Positive]
    precision: Literal["fp32", "fp16", "bf16", "int8", "best"]
    workspace_mib: Positive
    strongly_typed: bool
    fp32_layers: list[str]
    dla_core: Count | None
    tensorrt: str | None

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        return _batch_ok(value)


class BundleSettings(Doc):
    """bundle.json: how a device runs the bundle (runtime, input, batch profile, session or build)."""

    runtime: Literal["onnxruntime", "openvino", "tensorrt"]
    target: str
    precision: Literal["fp32", "fp16", "bf16", "int8", "best"]
    input: TensorDoc
    batch: tuple[Positive, Positive, Positive]
    model: RelPath | None = None
    source_model: RelPath | None = None
    session: SessionDoc | None = None
    openvino: OpenVinoDoc | None = None
    weights: RelPath | None = None  # OpenVINO IR: the .bin beside model (the .xml)
    build: BuildDoc | None = None
    trtexec: str | None = None
    engine: RelPath | None = None
    layers: RelPath | None = None
    pixels: PixelsDoc | None = None  # compiled with --preprocess-in-graph

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        return _batch_ok(value)

    @model_validator(mode="after")
    def _runtime_fields(self) -> BundleSettings:
        if self.runtime == "onnxruntime" and (self.session is None or self.model is None):
            raise ValueError("an ONNX Runtime bundle needs session and model")
        if self.runtime == "tensorrt" and self.build is None:
            raise ValueError("a TensorRT bundle needs build")
        if self.runtime == "openvino" and (self.openvino is None or self.model is None
                                           or self.weights is None):
            raise ValueError("an OpenVINO bundle needs openvino, model and weights")
        return self


class EngineDoc(Doc):
    tensorrt: str | None
    sm: str | None
    gpu: str | None = None
    l4t: str | None = None
    layers_by_precision: dict[str, Count] = {}
    build_seconds: float | None = None


class OpenVinoBuiltDoc(Doc):
    version: str | None
    inference_precision: str | None  # what OpenVINO said its float layers run (None: not compiled here)
    capabilities: list[str] = []  # the CPU plugin's OPTIMIZATION_CAPABILITIES where it was compiled


class CandidateTiming(Doc):
    runtime: Literal["onnxruntime", "openvino"]
    variant: str  # e.g. "offline-optimized graph", "session-optimized graph", "fp32"
    p50_ms: float | None
    error: str | None = None  # why the candidate could not run (then p50_ms is None)


class RuntimeChoice(Doc):
    """compile --runtime auto: every candidate timed in alternating rounds on one batch."""

    batch: Positive
    rounds: Positive
    candidates: list[CandidateTiming]
    chosen: int  # index into candidates
    why: str
    load: LoadDoc | None = None  # absent in bundles made before it was recorded


class BuiltDoc(Doc):
    optimized_offline: bool | None = None
    arch: str | None = None
    cpu_features: list[str] = []
    onnxruntime: str | None = None
    openvino: OpenVinoBuiltDoc | None = None
    compiled_here: bool | None = None  # OpenVINO: compiled (precision read back, timed) where made
    runtime_choice: RuntimeChoice | None = None
    parity_vs_source: dict[str, float | int] | None = None
    note: str | None = None
    engine: EngineDoc | None = None
    not_built_because: str | None = None


class PassportTarget(Doc):
    name: str
    runtime: Literal["onnxruntime", "openvino", "tensorrt"]


class PassportInput(Doc):
    name: str
    shape: tuple[Positive, Positive, Positive]
    batch: tuple[Positive, Positive, Positive]


class Passport(Doc):
    """passport.json: what the bundle is, for which target, built where and with what."""

    passport_version: Literal[1]
    vitedge: str
    source_artifact_hash: Sha256
    target: PassportTarget
    precision: Literal["fp32", "fp16", "bf16", "int8", "best"]
    # INT8 bundles: the share of the weight-layer MACs (Linear, Conv, MatMul) that quantize left in
    # INT8; below 1 where layers were kept float to meet the accuracy budget
    int8_mac_share: Share | None = None
    input: PassportInput
    runtime: dict[Literal["name"], Literal["onnxruntime", "openvino", "tensorrt"]]
    files: dict[RelPath, Sha256]
    built: BuiltDoc

    @field_validator("runtime")
    @classmethod
    def _named(cls, value: dict[str, str]) -> dict[str, str]:
        if "name" not in value:
            raise ValueError("runtime.name is required")
        return value
