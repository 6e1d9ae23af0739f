"""How far a deployed model's outputs drift from the full-precision reference.

One implementation for offline evaluation (quantize, eval) and live shadowing (run): per-sample
metrics are computed here and accumulated; a result is a verdict with evidence, truthy only
when enough samples were compared and every threshold holds.

Classifiers are compared by their logits (top-1 agreement, top-5 overlap, KL, JS, cosine,
confidence shift). Feature extractors (MAE, DINOv2, ... with no classifier head) have no
classes: their outputs are compared as vectors (cosine similarity and relative L2 error), never
softmaxed into fake "confidences".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_MIN_SAMPLES = 30


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    q = np.clip(q, 1e-12, 1.0)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def feature_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample cosine similarity and relative L2 error (|a - b| / |a|) of two N x D outputs."""
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    norms = np.linalg.norm(reference, axis=1)
    return {"cosine": np.sum(reference * candidate, axis=1)
            / np.maximum(norms * np.linalg.norm(candidate, axis=1), 1e-12),
            "rel_error": np.linalg.norm(reference - candidate, axis=1) / np.maximum(norms, 1e-12)}


def per_sample(reference: np.ndarray, candidate: np.ndarray, k: int = 5, *,
               features: bool = False) -> dict[str, np.ndarray]:
    """Per-sample drift metrics of candidate outputs against reference outputs (N x C each)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"output shapes differ or are not N x C: {reference.shape} vs {candidate.shape}")
    if features:
        return feature_metrics(reference, candidate)
    p, q = softmax(reference), softmax(candidate)
    mid = 0.5 * (p + q)
    k = min(k, reference.shape[1])
    top_ref = np.argsort(-reference, axis=1)[:, :k]
    top_cand = np.argsort(-candidate, axis=1)[:, :k]
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand)])
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return {
        "ref_top1": reference.argmax(1),
        "cand_top1": candidate.argmax(1),
        "agree": (reference.argmax(1) == candidate.argmax(1)).astype(np.float64),
        "topk_overlap": overlap,
        "kl": _kl(p, q),
        "js": 0.5 * _kl(p, mid) + 0.5 * _kl(q, mid),
        "cosine": np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12),
        "confidence_shift": q.max(1) - p.max(1),
    }


@dataclass(frozen=True)
class DriftThresholds:
    min_agreement: float = 0.99  # classifiers
    max_kl: float | None = None
    min_samples: int = DEFAULT_MIN_SAMPLES
    min_cosine: float = 0.99  # feature extractors
    max_rel_error: float | None = None


@dataclass
class DriftResult:
    """Aggregated drift; `bool(result)` is the verdict."""

    samples: int
    top1_agreement: float | None
    top5_overlap: float | None
    kl: float | None
    js: float | None
    cosine: float | None
    confidence_shift: float | None
    flips: dict[str, int] = field(default_factory=dict)  # "ref->cand" class index pairs
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    features: bool = False  # outputs compared as feature vectors, not class logits
    rel_error: float | None = None  # features: mean |a - b| / |a|
    min_cosine: float | None = None  # features: the worst sample's cosine

    @property
    def verdict(self) -> str:
        if self.samples < self.thresholds.min_samples:
            return "insufficient data"
        return "pass" if self._holds() else "drift"

    @property
    def error(self) -> float:
        """One number that grows with the drift: KL for logits, relative error for features."""
        return (self.rel_error if self.features else self.kl) or 0.0

    def _holds(self) -> bool:
        t = self.thresholds
        if self.features:
            ok = self.cosine is not None and self.cosine >= t.min_cosine
            if t.max_rel_error is not None:
                ok = ok and self.rel_error is not None and self.rel_error <= t.max_rel_error
            return ok
        ok = self.top1_agreement is not None and self.top1_agreement >= t.min_agreement
        if t.max_kl is not None:
            ok = ok and self.kl is not None and self.kl <= t.max_kl
        return ok

    def __bool__(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        t = self.thresholds
        return {"samples": self.samples, "verdict": self.verdict, "features": self.features,
                "top1_agreement": self.top1_agreement, "top5_overlap": self.top5_overlap,
                "kl": self.kl, "js": self.js, "cosine": self.cosine,
                "confidence_shift": self.confidence_shift, "flips": self.flips,
                "rel_error": self.rel_error, "min_cosine": self.min_cosine,
                "thresholds": {"min_samples": t.min_samples, **(
                    {"min_cosine": t.min_cosine, "max_rel_error": t.max_rel_error} if self.features
                    else {"min_agreement": t.min_agreement, "max_kl": t.max_kl})}}


def compare(reference: np.ndarray, candidate: np.ndarray,
            thresholds: DriftThresholds | None = None, *, features: bool = False) -> DriftResult:
    """Drift of candidate outputs against reference outputs over a set of samples.

    `features=True` for models without a classifier head: cosine and relative error only.
    """
    thresholds = thresholds or DriftThresholds()
    if len(reference) == 0:
        return DriftResult(0, None, None, None, None, None, None, {}, thresholds, features)
    if features:
        vectors = feature_metrics(reference, candidate)
        return DriftResult(samples=len(reference), top1_agreement=None, top5_overlap=None, kl=None,
                           js=None, cosine=float(vectors["cosine"].mean()), confidence_shift=None,
                           thresholds=thresholds, features=True,
                           rel_error=float(vectors["rel_error"].mean()),
                           min_cosine=float(vectors["cosine"].min()))
    metrics = per_sample(reference, candidate)
    flips = Counter(f"{int(r)}->{int(c)}" for r, c in zip(metrics["ref_top1"], metrics["cand_top1"])
                    if r != c)
    return DriftResult(
        samples=len(reference),
        top1_agreement=float(metrics["agree"].mean()),
        top5_overlap=float(metrics["topk_overlap"].mean()),
        kl=float(metrics["kl"].mean()),
        js=float(metrics["js"].mean()),
        cosine=float(metrics["cosine"].mean()),
        confidence_shift=float(metrics["confidence_shift"].mean()),
        flips=dict(flips.most_common()),
        thresholds=thresholds,
    )


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of samples whose label is among the k highest logits."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))
