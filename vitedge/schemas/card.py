"""card.json: what a model is, how to feed it, and where it came from."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from vitedge.card import Preprocessing, VitStructure
from vitedge.schemas.base import (
    FORBIDDEN_KWARGS,
    Count,
    Doc,
    Positive,
    RelPath,
    Sha256,
    Share,
)


# ----------------------------------------------------------------------------- the card
class PrunedShapes(Doc):
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


class TomeDoc(Doc):
    r: Count
    start: Count = 0


class OnnxDoc(Doc):
    opset: Annotated[int, Field(ge=7, le=100)] | None = None
    dynamic_batch: bool = True


class SourceDoc(Doc):
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


class LineageParent(Doc):
    artifact_hash: Sha256 | None = None
    path: str | None = None  # where the parent was when this was made: a hint, checked by the hash


class LineageStep(Doc):
    step: str
    parent: LineageParent | dict[str, Any] | None = None
    params: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    tools: dict[str, str | None] = {}
    time: str | None = None


class ParityDoc(Doc):
    passed: bool
    max_abs_diff: float
    samples: Count


class QuantDriftDoc(Doc):
    samples: Count
    top1_agreement: Share | None
    kl: float | None
    cosine: float | None = None


class QuantSummaryDoc(Doc):
    budget: dict[str, Any]
    int8_linear_mac_share: Share
    drift: QuantDriftDoc

    @field_validator("budget")
    @classmethod
    def _met(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("met"), bool):
            raise ValueError("budget.met must be true or false")
        return value


class StageDoc(Doc):
    samples: Count
    top1_agreement: Share | None
    kl: float | None = None
    features: bool = False
    cosine: float | None = None
    rel_error: float | None = None
    top1_original: Share | None = None
    top1_pruned: Share | None = None


class DistillEvaluation(Doc):
    step: Count
    loss: float | None
    agreement: Share


class DistillDoc(Doc):
    evaluations: list[DistillEvaluation] = []
    steps_run: Count = 0
    train_samples: Count | None = None
    early_stop_at: Count | None = None
    resumed_from: Count | None = None


class TomeMetricsDoc(Doc):
    r: Count
    start: Count = 0
    tokens_in: Count
    tokens_out: Count
    schedule: list[Count]


class StructureChange(Doc):
    before: PrunedShapes
    after: PrunedShapes


class PruneMetricsDoc(Doc):
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


class MetricsDoc(Doc):
    heldout_top1: Share | None = None
    heldout_images: Count | None = None
    parity: ParityDoc | None = None
    quantization: QuantSummaryDoc | None = None
    prune: PruneMetricsDoc | None = None


class CardDoc(Doc):
    card_version: Literal[2]
    architecture: str
    format: Literal["torch", "onnx", "bundle"]
    source: SourceDoc
    num_classes: Positive | None = None
    params: Count | None = None
    macs: Count | None = None
    preprocessing: Preprocessing  # the card's own classes, validated with their constraints
    structure: VitStructure
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
