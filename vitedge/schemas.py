"""Schemas of every JSON document vitedge reads back (pydantic, strict, JSON mode).

Each model lists the fields some part of vitedge reads, with their real types and ranges; other
keys are kept as they are (`extra="allow"`), so a document only has to be right where it is used.
`vitedge.documents.read_document` validates with these after checking the seal, so a malformed
field becomes one line naming the file and the field.

Imported lazily (pydantic costs ~0.1 s): never at `vitedge --help` time.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from vitedge.card import CropRounding, Interpolation, ResizeMode

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _relative(value: str) -> str:
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or "\x00" in value or ".." in parts:
        raise ValueError(f"{value!r} is not a relative path inside the folder")
    return value


# A file name inside the folder (sub-folders allowed): `documents.confined` checks links too.
RelPath = Annotated[str, AfterValidator(_relative)]
# Keyword arguments that make timm / torchvision read a file or the network.
FORBIDDEN_KWARGS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                              "cache_dir", "weights", "progress", "pretrained_strict"})


class _Doc(BaseModel):
    """A validated, frozen document: also how typed results cross module boundaries."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (defaults filled in, extra keys kept)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Validated as a document read from disk is (strict JSON mode)."""
        return cls.model_validate_json(json.dumps(data))


# ----------------------------------------------------------------------------- the card
class PreprocessingDoc(_Doc):
    input_size: tuple[Positive, Positive]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (
        0.229, 0.224, 0.225)
    interpolation: Interpolation = Interpolation.BICUBIC
    crop_pct: Annotated[float, Field(gt=0.0, le=1.0)] = 0.875
    resize_mode: ResizeMode = ResizeMode.SHORTER_CROP
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: Annotated[float, Field(gt=0.0)] = 1.0 / 255.0
    resize_size: tuple[Positive, Positive] | None = None
    crop_rounding: CropRounding = CropRounding.ROUND


class StructureDoc(_Doc):
    is_vit: bool
    patch_size: Positive | None = None
    embed_dim: Positive | None = None
    depth: Positive | None = None
    num_heads: Positive | None = None
    mlp_hidden: Positive | None = None
    num_prefix_tokens: Count | None = None
    class_token: bool | None = None
    distillation_token: bool = False
    global_pool: str | None = None
    hybrid_stem: bool = False
    register_tokens: Count = 0
    family: str | None = None
    hierarchical: bool = False


class PrunedShapes(_Doc):
    embed_dim: Positive
    num_heads: list[Positive]
    head_dim: list[Positive]
    mlp_hidden: list[Positive]

    @model_validator(mode="after")
    def _same_depth(self) -> PrunedShapes:
        # an attention-pool head (SigLIP) adds an MLP of its own: mlp_hidden may be one longer
        if not len(self.num_heads) == len(self.head_dim) >= 1 or not self.mlp_hidden:
            raise ValueError("num_heads and head_dim need one entry per block, mlp_hidden one per MLP")
        return self


class TomeDoc(_Doc):
    r: Count
    start: Count = 0


class OnnxDoc(_Doc):
    opset: Annotated[int, Field(ge=7, le=100)] | None = None
    dynamic_batch: bool = True


class SourceDoc(_Doc):
    kind: str
    name: str | None = None
    kwargs: dict[str, Any] = {}
    weights: str | None = None
    pruned: PrunedShapes | None = None
    tome: TomeDoc | None = None
    onnx: OnnxDoc | None = None
    config: dict[str, Any] | None = None

    @field_validator("kwargs")
    @classmethod
    def _no_file_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(value) & FORBIDDEN_KWARGS)
        if bad:
            raise ValueError(f"{', '.join(bad)} would make the model read a file or the network")
        return value

    @model_validator(mode="after")
    def _rebuildable(self) -> SourceDoc:
        if self.kind in ("timm", "torchvision") and not self.name:
            raise ValueError(f"a {self.kind} source needs the architecture name")
        hf_class = (self.model_extra or {}).get("class")
        if hf_class is not None and not (isinstance(hf_class, str) and re.fullmatch(
                r"(ViT|DeiT|Dinov2|ViTMAE|ViTMSN)[A-Za-z]*", hf_class)):
            raise ValueError(f"class {hf_class!r} is not a Hugging Face ViT class vitedge rebuilds")
        return self


class LineageParent(_Doc):
    artifact_hash: Sha256 | None = None


class LineageStep(_Doc):
    step: str
    parent: LineageParent | dict[str, Any] | None = None
    params: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    tools: dict[str, str | None] = {}
    time: str | None = None


class ParityDoc(_Doc):
    passed: bool
    max_abs_diff: float
    samples: Count


class QuantDriftDoc(_Doc):
    samples: Count
    top1_agreement: Share | None
    kl: float | None
    cosine: float | None = None


class QuantSummaryDoc(_Doc):
    budget: dict[str, Any]
    int8_linear_mac_share: Share
    drift: QuantDriftDoc

    @field_validator("budget")
    @classmethod
    def _met(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("met"), bool):
            raise ValueError("budget.met must be true or false")
        return value


class StageDoc(_Doc):
    samples: Count
    top1_agreement: Share | None
    kl: float | None = None
    features: bool = False
    cosine: float | None = None
    rel_error: float | None = None
    top1_original: Share | None = None
    top1_pruned: Share | None = None


class DistillEvaluation(_Doc):
    step: Count
    loss: float | None
    agreement: Share


class DistillDoc(_Doc):
    evaluations: list[DistillEvaluation] = []
    steps_run: Count = 0
    train_samples: Count | None = None
    early_stop_at: Count | None = None
    resumed_from: Count | None = None


class TomeMetricsDoc(_Doc):
    r: Count
    start: Count = 0
    tokens_in: Count
    tokens_out: Count
    schedule: list[Count]


class StructureChange(_Doc):
    before: PrunedShapes
    after: PrunedShapes


class PruneMetricsDoc(_Doc):
    macs_before: Count
    macs_after: Count
    mac_share: float | None
    params_before: Count
    params_after: Count
    ratios: dict[str, Share] | None = None
    structure: StructureChange | None = None
    before_distill: StageDoc | None = None
    after_distill: StageDoc | None = None
    final: StageDoc | None = None
    distill: DistillDoc | None = None
    tome: TomeMetricsDoc | None = None


class MetricsDoc(_Doc):
    heldout_top1: Share | None = None
    heldout_images: Count | None = None
    parity: ParityDoc | None = None
    quantization: QuantSummaryDoc | None = None
    prune: PruneMetricsDoc | None = None


class CardDoc(_Doc):
    card_version: Literal[2]
    architecture: str
    format: Literal["torch", "onnx", "bundle"]
    source: SourceDoc
    num_classes: Positive | None = None
    params: Count | None = None
    macs: Count | None = None
    preprocessing: PreprocessingDoc
    structure: StructureDoc
    labels: list[str] | None = None
    class_ids: list[str] | None = None
    files: dict[RelPath, Sha256]
    metrics: MetricsDoc = MetricsDoc()
    lineage: list[LineageStep] = []
    warnings: list[str] = []

    @model_validator(mode="after")
    def _labels_fit(self) -> CardDoc:
        for name in ("labels", "class_ids"):
            values = getattr(self, name)
            if values is not None and self.num_classes is not None and len(values) != self.num_classes:
                raise ValueError(f"{len(values)} {name} for {self.num_classes} classes")
        return self


# ------------------------------------------------------------------------------ bundles
class TensorDoc(_Doc):
    name: str
    shape: tuple[Positive, Positive, Positive]


def _batch_ok(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError("batch must be min <= opt <= max, all >= 1")
    return batch


class SessionDoc(_Doc):
    providers: list[Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]]
    intra_op_threads: Annotated[int, Field(ge=0, le=1024)]
    optimization: Literal["disabled", "basic", "extended", "all"]


class BuildDoc(_Doc):
    onnx: RelPath
    input_name: str
    input_shape: tuple[Positive, Positive, Positive]
    batch: tuple[Positive, Positive, Positive]
    precision: Literal["fp32", "fp16", "int8", "best"]
    workspace_mib: Positive
    strongly_typed: bool
    fp32_layers: list[str]
    dla_core: Count | None
    tensorrt: str | None

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        return _batch_ok(value)


class BundleSettings(_Doc):
    """bundle.json: how a device runs the bundle (runtime, input, batch profile, session or build)."""

    runtime: Literal["onnxruntime", "tensorrt"]
    target: str
    precision: Literal["fp32", "fp16", "int8", "best"]
    input: TensorDoc
    batch: tuple[Positive, Positive, Positive]
    model: RelPath | None = None
    source_model: RelPath | None = None
    session: SessionDoc | None = None
    build: BuildDoc | None = None
    trtexec: str | None = None
    engine: RelPath | None = None
    layers: RelPath | None = None

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
        return self


class EngineDoc(_Doc):
    tensorrt: str | None
    sm: str | None
    gpu: str | None = None
    l4t: str | None = None
    layers_by_precision: dict[str, Count] = {}
    build_seconds: float | None = None


class BuiltDoc(_Doc):
    optimized_offline: bool | None = None
    arch: str | None = None
    onnxruntime: str | None = None
    parity_vs_source: dict[str, float | int] | None = None
    note: str | None = None
    engine: EngineDoc | None = None
    not_built_because: str | None = None


class PassportTarget(_Doc):
    name: str
    runtime: Literal["onnxruntime", "tensorrt"]


class PassportInput(_Doc):
    name: str
    shape: tuple[Positive, Positive, Positive]
    batch: tuple[Positive, Positive, Positive]


class Passport(_Doc):
    """passport.json: what the bundle is, for which target, built where and with what."""

    passport_version: Literal[1]
    vitedge: str
    source_artifact_hash: Sha256
    target: PassportTarget
    precision: Literal["fp32", "fp16", "int8", "best"]
    input: PassportInput
    runtime: dict[Literal["name"], Literal["onnxruntime", "tensorrt"]]
    files: dict[RelPath, Sha256]
    built: BuiltDoc

    @field_validator("runtime")
    @classmethod
    def _named(cls, value: dict[str, str]) -> dict[str, str]:
        if "name" not in value:
            raise ValueError("runtime.name is required")
        return value


# ----------------------------------------------------------------------- quantization
class QuantSettingsDoc(_Doc):
    recipe: Literal["vit-safe", "linear-only", "full"]
    scheme: Literal["symmetric", "asymmetric"]
    target: str | None
    calibration: Literal["minmax", "mean-minmax", "percentile"]
    calibration_samples: Count
    calibration_skipped: Count = 0
    calibration_data: str
    eval_samples: Count
    eval_data: str
    labeled: bool
    smooth_quant: bool
    bias_correction: bool
    exclude: list[str]
    engine: dict[str, str | None] = {}


class BudgetDoc(_Doc):
    features: bool
    wanted: str
    met: bool
    max_drop: float | None
    drop: float
    min_agreement: float | None
    agreement: float | None
    min_cosine: float | None
    cosine: float
    rel_error: float
    metric: str


class QuantAccuracy(_Doc):
    fp32_top1: Share
    int8_top1: Share
    fp32_top5: Share
    int8_top5: Share


class FloatNodes(_Doc):
    linear: list[str]
    attention: list[str]


class QuantLatency(_Doc):
    fp32: dict[str, float]
    int8: dict[str, float]
    batch: Positive
    provider: str


class QuantReport(_Doc):
    """quant_report.json: what `vitedge quantize` was asked, tried and chose, and how it measures."""

    settings: QuantSettingsDoc
    budget: BudgetDoc
    accuracy: QuantAccuracy | None
    drift: DriftDoc
    int8_linear_mac_share: Share
    float_nodes: FloatNodes
    attempts: list[dict[str, Any]]
    chosen: str
    graph: dict[str, Any]
    layers: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    size_bytes: dict[str, Count]
    latency_ms: QuantLatency
    lint: dict[str, Any]
    warnings: list[str]


# --------------------------------------------------------------------------------- runs
class LatencyDoc(_Doc):
    calls: Count
    images: Count
    p50_ms: float | None
    p95_ms: float | None
    images_per_s: float | None = None


class DriftDoc(_Doc):
    samples: Count
    verdict: Literal["pass", "drift", "insufficient data"]
    features: bool = False
    top1_agreement: Share | None
    top5_overlap: float | None = None
    kl: float | None
    rel_error: float | None = None
    min_cosine: float | None = None
    js: float | None = None
    cosine: float | None = None
    confidence_shift: float | None = None
    flips: dict[str, Count] = {}


class FrameCounts(_Doc):
    read: Count
    logged: Count
    dropped: Count
    corrupt: Count
    size_changes: Count = 0
    reconnects: Count
    loops: Count = 0


class DeployedDoc(_Doc):
    backend: str
    precision: str
    latency_ms: LatencyDoc


class ShadowSummary(_Doc):
    every: Positive
    compared: Count
    skipped_reference_behind: Count
    reference: str
    reference_latency_ms: LatencyDoc | None = None
    error: str | None = None  # the reference worker's failure, if it failed


class RunSummaryDoc(_Doc):
    kind: Literal["run"]
    state: Literal["running", "finished"]
    source: str
    pid: int | None = None


class LoopOverhead(_Doc):
    p50: float | None
    p95: float | None
    covers: str = ""


class RunSummary(RunSummaryDoc):
    """A finished live run: what `vitedge.live.run` returns and its summary.json holds."""

    state: Literal["finished"]
    stop_reason: str
    live: bool = False
    started: float | None = None
    seconds: float | None = None
    frames: FrameCounts
    fps: float | None
    deployed: DeployedDoc
    loop_overhead_ms: LoopOverhead
    shadow: ShadowSummary | None
    drift: DriftDoc
    rolling_window: Annotated[int, Field(ge=1, le=1_000_000)]
    alerts: bool
    labels: list[str]
    disagreements_saved: Count = 0
    files: dict[RelPath, Sha256]
    record: RelPath | None = None


class ShadowLine(_Doc):
    cosine: float
    reference_ms: float
    agree: float | None = None  # classifiers
    topk_overlap: float | None = None
    kl: float | None = None
    js: float | None = None
    confidence_shift: float | None = None
    reference_top1: str | None = None
    rel_error: float | None = None  # feature extractors


class FrameLine(_Doc):
    index: Count
    name: str = ""
    top: list[tuple[Count, str, float]] | None = None
    norm: float | None = None  # feature extractors: the output vector's L2 norm
    latency_ms: float | None = None
    loop_ms: float | None = None
    corrupt: bool = False
    shadow: ShadowLine | None = None
    saved: Annotated[str, StringConstraints(pattern=r"^disagreements/frame\d+\.jpg$")] | None = None

    @model_validator(mode="after")
    def _ranked(self) -> FrameLine:
        if self.shadow is not None and self.shadow.rel_error is None and (
                not self.top or self.shadow.agree is None or self.shadow.reference_top1 is None):
            raise ValueError("a shadowed classifier frame needs its top classes and agreement")
        return self


class EventLine(_Doc):
    event: str
    frame: Count | None = None
    time: float | None = None


# --------------------------------------------------------------------------------- evals
class WorstDoc(_Doc):
    image: Annotated[str, StringConstraints(pattern=r"^worst/\d+\.jpg$")] | None = None
    path: str | None = None
    kl: float | None = None  # classifiers
    first: str | None = None
    this: str | None = None
    label: str | None = None
    rel_error: float | None = None  # feature extractors
    cosine: float | None = None


class ClassDelta(_Doc):
    class_name: str = Field(alias="class")
    samples: Count
    first: Share
    this: Share
    delta: float


class EvalRow(_Doc):
    model: str
    backend: str
    precision: str
    num_classes: Positive | None
    latency_ms: LatencyDoc
    top1: Share | None = None
    top5: Share | None = None
    vs_first: DriftDoc | None = None
    worst: list[WorstDoc] = []
    per_class_delta: list[ClassDelta] = []


class EvalResult(_Doc):
    """`vitedge eval`: per model top-1/top-5 and drift against the first; what eval.json holds."""

    kind: Literal["eval"]
    data: str
    samples: Positive
    features: bool = False
    labeled: bool
    skipped: list[str]
    class_names: list[str]
    models: Annotated[list[EvalRow], Field(min_length=1)]
    files: dict[RelPath, Sha256]


class ReportDoc(_Doc):
    generator: Literal["vitedge report"]
    kind: Literal["run", "eval", "prune"]
    html: str
    md: str


class BenchDoc(_Doc):
    generator: Literal["vitedge bench"]
