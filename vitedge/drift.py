"""How far a deployed model's outputs drift from the full-precision reference.

One implementation for offline evaluation (quantize, eval) and live shadowing (run): per-sample
metrics are computed here and accumulated; a result is a verdict with evidence, truthy only
when enough samples were compared and every threshold holds.
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


def per_sample(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> dict[str, np.ndarray]:
    """Per-sample drift metrics of candidate logits against reference logits (N x C each)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"logit shapes differ or are not N x C: {reference.shape} vs {candidate.shape}")
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
    min_agreement: float = 0.99
    max_kl: float | None = None
    min_samples: int = DEFAULT_MIN_SAMPLES


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

    @property
    def verdict(self) -> str:
        if self.samples < self.thresholds.min_samples:
            return "insufficient data"
        return "pass" if self._holds() else "drift"

    def _holds(self) -> bool:
        t = self.thresholds
        ok = self.top1_agreement is not None and self.top1_agreement >= t.min_agreement
        if t.max_kl is not None:
            ok = ok and self.kl is not None and self.kl <= t.max_kl
        return ok

    def __bool__(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "verdict": self.verdict,
                "top1_agreement": self.top1_agreement, "top5_overlap": self.top5_overlap,
                "kl": self.kl, "js": self.js, "cosine": self.cosine,
                "confidence_shift": self.confidence_shift, "flips": self.flips,
                "thresholds": {"min_agreement": self.thresholds.min_agreement,
                               "max_kl": self.thresholds.max_kl,
                               "min_samples": self.thresholds.min_samples}}


def compare(reference: np.ndarray, candidate: np.ndarray,
            thresholds: DriftThresholds | None = None) -> DriftResult:
    """Drift of candidate logits against reference logits over a set of samples."""
    thresholds = thresholds or DriftThresholds()
    if len(reference) == 0:
        return DriftResult(0, None, None, None, None, None, None, {}, thresholds)
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
