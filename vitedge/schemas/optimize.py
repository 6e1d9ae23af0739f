"""optimize.json: what `vitedge optimize` searched, measured and chose (and what a resume reuses)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from vitedge.schemas.base import Count, Doc, LoadDoc, Positive, RelPath, Share


class CandidateDoc(Doc):
    name: str  # e.g. "r8-int8-openvino"; its bundle is candidates/<name>
    tome: Count  # tokens merged per block (0: none)
    prune: Annotated[float, Field(ge=0, lt=1)] = 0.0  # share of the MACs pruning removed (0: none)
    pruning: Literal["target", "budget"] | None = None  # --prune P (a MAC target) or --prune auto (the budget)
    precision: Literal["fp32", "fp16", "bf16", "int8", "best"]
    runtime: Literal["onnxruntime", "openvino", "tensorrt"]
    bundle: RelPath | None = None  # candidates/<name>, once written
    status: Literal["measured", "failed", "skipped"]
    reason: str | None = None  # why it failed or was skipped
    precision_run: str | None = None  # what the session reported it runs (e.g. int8+bf16)
    macs: Count | None = None
    int8_share: Share | None = None  # of Linear/Conv MACs
    agreement: Share | None = None  # top-1 agreement with the FP32 source on the held-out data
    top1: Share | None = None  # when the held-out data is labeled
    drop: float | None = None  # points: top-1 below FP32 (labeled), else 100 x (1 - agreement)
    p50_ms: float | None = None  # measured here (None when the target is not this machine)
    estimated_cost: float | None = None  # MAC-weighted estimate when not measured (relative to FP32)
    seconds: float | None = None  # building and measuring it
    native: bool = True  # its accuracy came from its own runtime (False: a TensorRT bundle's ONNX on ONNX Runtime)
    ran_on: str | None = None  # the session that produced its accuracy


class OptimizeDoc(Doc):
    kind: Literal["optimize"]
    source: str
    source_hash: str  # of the exported FP32 graph: a resume must start from the same model
    target: str
    data: str
    calibration: str
    eval_samples: Positive
    calibration_samples: Positive
    labeled: bool
    max_drop: float
    min_agreement: Share | None
    batch: Positive
    measured_here: bool  # latency measured on this machine (it is the target)
    machine: dict[str, str | list[str] | None]
    fp32_top1: Share | None
    candidates: list[CandidateDoc]
    chosen: str | None  # the fastest candidate within the budget
    pareto: list[str]  # candidates no other beats on both latency and agreement
    not_tried: list[str]  # left out by --time-budget
    seconds: float
    finished: bool
    load: LoadDoc | None = None  # how busy the cores were while the bundles were timed
