"""Drift metrics against values computed by hand."""

import math

import numpy as np

from vitedge.drift import DriftThresholds, compare, per_sample, topk_accuracy


def test_metrics_match_hand_computed_values():
    reference = np.array([[math.log(0.5), math.log(0.25), math.log(0.25)],
                          [0.0, 0.0, 10.0]])
    candidate = np.array([[math.log(0.25), math.log(0.5), math.log(0.25)],
                          [0.0, 0.0, 10.0]])
    metrics = per_sample(reference, candidate)
    # KL(p||q) = 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2 for the first sample, 0 for the second
    assert math.isclose(metrics["kl"][0], 0.25 * math.log(2), rel_tol=1e-9)
    assert metrics["kl"][1] == 0.0
    # JS: m = (0.375, 0.375, 0.25); each KL to m = 0.5 ln(4/3) + 0.25 ln(2/3)
    half = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375)
    assert math.isclose(metrics["js"][0], half, rel_tol=1e-9)
    assert metrics["agree"].tolist() == [0.0, 1.0]
    assert math.isclose(metrics["confidence_shift"][0], 0.0, abs_tol=1e-12)
    cos = float(np.dot(reference[0], candidate[0]) /
                (np.linalg.norm(reference[0]) * np.linalg.norm(candidate[0])))
    assert math.isclose(metrics["cosine"][0], cos, rel_tol=1e-9)
    result = compare(reference, candidate, DriftThresholds(min_agreement=0.5, min_samples=2))
    assert result.top1_agreement == 0.5 and result.flips == {"0->1": 1}
    assert bool(result) and result.verdict == "pass"


def test_zero_or_few_samples_is_never_a_pass():
    empty = compare(np.zeros((0, 3)), np.zeros((0, 3)))
    assert empty.samples == 0 and empty.verdict == "insufficient data" and not empty
    few = compare(np.eye(3), np.eye(3), DriftThresholds(min_samples=30))
    assert few.top1_agreement == 1.0 and few.verdict == "insufficient data" and not few


def test_drift_verdict_and_kl_threshold():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((100, 10))
    noisy = reference + rng.standard_normal((100, 10)) * 2.0
    result = compare(reference, noisy, DriftThresholds(min_agreement=0.99))
    assert result.verdict == "drift" and not result
    same = compare(reference, reference, DriftThresholds(min_agreement=0.99, max_kl=1e-9))
    assert same and same.kl < 1e-12 and same.cosine > 0.999999


def test_topk_accuracy():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]])
    assert topk_accuracy(logits, np.array([1, 1])) == 0.5
    assert topk_accuracy(logits, np.array([1, 1]), k=2) == 1.0
