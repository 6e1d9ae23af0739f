"""What steps measured: quant_report.json, a run's summary.json and its JSON lines, eval.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from vitedge.schemas.base import Count, Doc, LoadDoc, Positive, RelPath, Sha256, Share


# ----------------------------------------------------------------------- quantization
class QuantSettingsDoc(Doc):
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
    shift: bool = False
    tune_ranges: bool = False
    exclude: list[str]
    engine: dict[str, str | None] = {}


class BudgetDoc(Doc):
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


class QuantAccuracy(Doc):
    fp32_top1: Share
    int8_top1: Share
    fp32_top5: Share
    int8_top5: Share


class FloatNodes(Doc):
    linear: list[str]
    attention: list[str]
    run_as: str | None = None  # what they run as on the target once compiled (FP16 on TensorRT)
    modules: dict[str, str] = {}  # node -> the model's module name, where export recorded one


class QuantLatency(Doc):
    fp32: dict[str, float]
    int8: dict[str, float]
    batch: Positive
    provider: str
    load: LoadDoc | None = None  # how busy the cores were while they were timed


class QuantReport(Doc):
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
class LatencyDoc(Doc):
    calls: Count
    images: Count
    p50_ms: float | None
    p95_ms: float | None
    images_per_s: float | None = None


class DriftDoc(Doc):
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


class FrameCounts(Doc):
    read: Count
    logged: Count
    dropped: Count
    corrupt: Count
    size_changes: Count = 0
    reconnects: Count
    loops: Count = 0


class DeployedDoc(Doc):
    backend: str
    precision: str
    latency_ms: LatencyDoc


class ShadowSummary(Doc):
    every: Positive
    compared: Count
    skipped_reference_behind: Count
    reference: str
    reference_model: str | None = None  # the artifact folder it was loaded from, where it has one
    reference_latency_ms: LatencyDoc | None = None
    error: str | None = None  # the reference worker's failure, if it failed


class RunSummaryDoc(Doc):
    kind: Literal["run"]
    state: Literal["running", "finished"]
    source: str
    pid: int | None = None


class LoopOverhead(Doc):
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
    host: str | None = None  # the machine it ran on (runs before 2026-12 have none)
    target: str | None = None  # the bundle's target profile
    stream: Count | None = None  # its position in --source, in a run of several sources


class StreamEntry(Doc):
    dir: Annotated[str, StringConstraints(pattern=r"^stream\d{1,4}$")]
    source: str
    verdict: str  # its drift verdict
    alerts: bool


class BatchingDoc(Doc):
    calls: Count
    frames: Count
    mean_batch: float | None
    max_batch: Count | None
    sizes: dict[Annotated[str, StringConstraints(pattern=r"^\d{1,6}$")], Count]


class MultiRunSummary(RunSummaryDoc):
    """A finished run of several sources on one model: RUN_DIR/summary.json (each stream's own
    RunSummary is in RUN_DIR/streamK/summary.json)."""

    state: Literal["finished"]
    streams: Annotated[list[StreamEntry], Field(min_length=2)]
    stop_reason: str
    live: bool = False
    started: float | None = None
    seconds: float | None = None
    host: str | None = None
    target: str | None = None
    frames: FrameCounts
    fps: float | None  # all streams together
    deployed: DeployedDoc  # the model calls (batches across streams)
    batching: BatchingDoc
    alerts: bool
    files: dict[RelPath, Sha256]
    record: RelPath | None = None


class ShadowLine(Doc):
    cosine: float
    reference_ms: float
    agree: float | None = None  # classifiers
    topk_overlap: float | None = None
    kl: float | None = None
    js: float | None = None
    confidence_shift: float | None = None
    reference_top1: str | None = None
    rel_error: float | None = None  # feature extractors


class FrameLine(Doc):
    index: Count
    name: str = ""
    top: list[tuple[Count, str, float]] | None = None
    norm: float | None = None  # feature extractors: the output vector's L2 norm
    latency_ms: float | None = None
    loop_ms: float | None = None
    frame_ms: float | None = None  # from capture to the result logged (inference and waiting included)
    stream: Count | None = None
    batch: Count | None = None  # frames in the model call it was in (several sources)
    corrupt: bool = False
    shadow: ShadowLine | None = None
    saved: Annotated[str, StringConstraints(pattern=r"^disagreements/frame\d+\.jpg$")] | None = None

    @model_validator(mode="after")
    def _ranked(self) -> FrameLine:
        if self.shadow is not None and self.shadow.rel_error is None and (
                not self.top or self.shadow.agree is None or self.shadow.reference_top1 is None):
            raise ValueError("a shadowed classifier frame needs its top classes and agreement")
        return self


class EventLine(Doc):
    event: str
    frame: Count | None = None
    time: float | None = None


# --------------------------------------------------------------------------------- evals
class WorstDoc(Doc):
    image: Annotated[str, StringConstraints(pattern=r"^worst/\d+\.jpg$")] | None = None
    path: str | None = None
    kl: float | None = None  # classifiers
    first: str | None = None
    this: str | None = None
    label: str | None = None
    rel_error: float | None = None  # feature extractors
    cosine: float | None = None


class ClassDelta(Doc):
    class_name: str = Field(alias="class")
    samples: Count
    first: Share
    this: Share
    delta: float


class EvalRow(Doc):
    model: str
    backend: str
    precision: str
    int8_mac_share: Share | None = None  # INT8 models: share of the weight-layer MACs in INT8
    num_classes: Positive | None
    latency_ms: LatencyDoc
    top1: Share | None = None
    top5: Share | None = None
    vs_first: DriftDoc | None = None
    worst: list[WorstDoc] = []
    per_class_delta: list[ClassDelta] = []


class EvalResult(Doc):
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


class ReportDoc(Doc):
    generator: Literal["vitedge report"]
    kind: Literal["run", "eval", "prune", "quantize"]
    html: str
    md: str


class BenchDoc(Doc):
    generator: Literal["vitedge bench"]
