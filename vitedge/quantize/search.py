"""The candidate search: quantize the recipe's candidates, judge each against FP32, keep the one
with most INT8 within the budget; over budget, revert the most sensitive Linear nodes to float.

vitedge's own rather than NNCF's accuracy-control loop: that re-runs calibration per attempt,
while reverting single nodes of the finished QDQ graph costs one ONNX Runtime pass each and
yields the per-layer sensitivity table of the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vitedge.data import DataSet
from vitedge.drift import compare, topk_accuracy
from vitedge.errors import InputError
from vitedge.models.names import module_names
from vitedge.quantize.calibrate import nncf_quantize
from vitedge.quantize.lint import culprits, lint_qdq
from vitedge.quantize.qdq import (
    ComputeNode,
    int8_mac_share,
    quantized_node_names,
    revert_to_float,
)
from vitedge.quantize.recipes import Budget, QuantSettings, Recipe, ignored_scope
from vitedge.quantize.sensitivity import revert_errors
from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession
from vitedge.targets import Scheme

if TYPE_CHECKING:
    import onnx

RANKING_SAMPLES = 32
JUDGE_BATCH = 32
_SLACK = 1e-9  # a candidate is given up on only when the bound misses by more than rounding
TUNING_SAMPLES = 64  # calibration samples --tune-ranges fits the activation scales on


@dataclass
class Candidate:
    """One quantized graph and how it compares with FP32 on the evaluation data."""

    label: str
    model: onnx.ModelProto
    logits: np.ndarray
    drop: float  # points of top-1 (labeled) or of FP32 agreement (unlabeled); features: of cosine
    int8_share: float
    agreement: float = 0.0  # top-1 agreement with FP32 (features: the mean cosine)
    float_nodes: list[str] = field(default_factory=list)  # Linear nodes reverted to float
    cosine: float = 0.0  # mean cosine to the FP32 outputs
    rel_error: float = 0.0  # mean |int8 - fp32| / |fp32|
    tuning: dict[str, Any] | None = None  # what --tune-ranges changed (quantize.ranges.RangeTuning)


@dataclass(frozen=True)
class Evaluation:
    """The samples candidates are judged on, the FP32 outputs there and (labeled data) the labels."""

    data: DataSet
    fp32: np.ndarray
    labels: np.ndarray | None = None
    features: bool = False  # a feature extractor: judged by cosine, not by classes


@dataclass(frozen=True)
class Search:
    """What the candidate search found: the chosen graph, everything tried, the sensitivity ranking."""

    best: Candidate
    tried: list[Candidate]
    sensitivity: list[dict[str, Any]]
    met: bool


def run_onnx(model: onnx.ModelProto | Path, data: DataSet | np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits of a graph over a data set, on ONNX Runtime's CPU provider."""
    return OnnxRuntimeSession(model).infer_all(data, batch_size)


def judge(label: str, model: onnx.ModelProto, evaluation: Evaluation, nodes: list[ComputeNode],
               float_nodes: list[str] | None = None) -> Candidate:
    """Evaluate a quantized graph against the FP32 outputs."""
    return _candidate(label, model, run_onnx(model, evaluation.data), evaluation, nodes, float_nodes)


@dataclass(frozen=True)
class Miss:
    """A candidate given up on part-way through the evaluation: the budget could no longer hold."""

    judged: int  # samples judged, closest calls first
    why: str


def closest_calls_first(evaluation: Evaluation) -> np.ndarray:
    """Evaluation sample indices, the smallest gap between FP32's two highest logits first: the
    images INT8 is likeliest to flip, so a candidate that misses the budget shows it early."""
    fp32 = evaluation.fp32
    if evaluation.features or fp32.shape[1] < 2:
        return np.arange(len(fp32))
    top2 = np.partition(fp32, -2, axis=1)[:, -2:]
    return np.argsort(top2[:, 1] - top2[:, 0], kind="stable")


def judge_or_miss(label: str, model: onnx.ModelProto, evaluation: Evaluation, nodes: list[ComputeNode],
                  float_nodes: list[str], budget: Budget, order: np.ndarray) -> Candidate | Miss:
    """`judge`, on the samples in `order`, stopping at the first batch after which the budget can
    no longer hold whatever the rest of the samples give: a candidate that meets it is judged in
    full (the same figures as `judge`); one that misses costs a few batches."""
    session = OnnxRuntimeSession(model)
    largest = min(JUDGE_BATCH, session.max_batch or JUDGE_BATCH)
    parts: list[np.ndarray] = []
    judged = 0
    while judged < len(order):
        # small batches first: a miss usually shows within the first closest calls
        step = session.min_batch if session.min_batch == session.max_batch else \
            min(largest, max(8, judged))
        indices = order[judged:judged + step]
        parts.append(session.infer(evaluation.data.take(indices).head(len(indices))))
        judged += len(indices)
        if judged < len(order):
            why = _out_of_reach(budget, evaluation, order[:judged], np.concatenate(parts))
            if why:
                return Miss(judged, why)
    logits = np.empty((len(order), *parts[0].shape[1:]), np.float32)
    logits[order] = np.concatenate(parts)
    return _candidate(label, model, logits, evaluation, nodes, float_nodes)


def _out_of_reach(budget: Budget, evaluation: Evaluation, seen: np.ndarray, logits: np.ndarray) -> str | None:
    """Why the budget cannot hold over all samples given the outputs on `seen` (the rest counted
    as perfect), or None while it still can."""
    total, remaining = len(evaluation.fp32), len(evaluation.fp32) - len(seen)
    fp32 = evaluation.fp32[seen]
    if evaluation.features:
        cosine_sum = float(compare(fp32, logits, features=True).cosine or 0.0) * len(seen)
        best = (cosine_sum + remaining) / total
        return (f"mean cosine at most {best:.6g} < {budget.min_cosine:g} after {len(seen)} samples"
                if best < budget.min_cosine - _SLACK else None)
    disagreements = int(np.sum(fp32.argmax(1) != logits.argmax(1)))
    agreement = (total - disagreements) / total
    if budget.min_agreement is not None and agreement < budget.min_agreement - _SLACK:
        return (f"{disagreements} of the {len(seen)} closest calls differ from FP32: agreement at most "
                f"{100 * agreement:.4g}% < {100 * budget.min_agreement:g}%")
    labels = evaluation.labels
    if labels is None:
        drop = 100.0 * disagreements / total
    else:
        fp32_correct = round(topk_accuracy(evaluation.fp32, labels) * total)
        int8_correct = round(topk_accuracy(logits, labels[seen]) * len(seen))
        drop = 100.0 * (fp32_correct - int8_correct - remaining) / total
    if drop <= budget.max_drop + _SLACK:
        return None
    if labels is None:  # unlabeled images: the budget is points of agreement with FP32, not of top-1
        return (f"agreement with FP32 at most {100 - drop:.4g}% < {100 - budget.max_drop:g}% "
                f"after {len(seen)} samples")
    return f"top-1 drop at least {drop:.2f} > {budget.max_drop:g} points after {len(seen)} samples"


def _candidate(label: str, model: onnx.ModelProto, logits: np.ndarray, evaluation: Evaluation,
               nodes: list[ComputeNode], float_nodes: list[str] | None) -> Candidate:
    fp32, labels = evaluation.fp32, evaluation.labels
    vectors = compare(fp32, logits, features=True)
    cosine, rel_error = float(vectors.cosine or 0.0), float(vectors.rel_error or 0.0)
    if evaluation.features:
        return Candidate(label, model, logits, 100.0 * (1.0 - cosine), int8_mac_share(model, nodes),
                         cosine, list(float_nodes or []), cosine, rel_error)
    return Candidate(label, model, logits, _drop(fp32, logits, labels), int8_mac_share(model, nodes),
                     _agreement(fp32, logits), list(float_nodes or []), cosine, rel_error)


def _agreement(fp32: np.ndarray, int8: np.ndarray) -> float:
    return float(np.mean(fp32.argmax(1) == int8.argmax(1)))


def _drop(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None) -> float:
    if labels is not None:
        return 100.0 * (topk_accuracy(fp32, labels) - topk_accuracy(int8, labels))
    return 100.0 * (1.0 - _agreement(fp32, int8))


def run_search(float_model: onnx.ModelProto, nodes: list[ComputeNode], calibration_data: DataSet,
            evaluation: Evaluation, settings: QuantSettings, budget: Budget, warnings_: list[str],
            say: Callable[[str], None], tick: Callable[..., None] | None) -> Search:
    """Quantize the recipe's candidates, keep the one with most INT8 within the budget; over
    budget (vit-safe), revert the most sensitive Linear nodes to float until it holds."""
    recipe, scheme = settings.recipe, settings.scheme
    op_types = {n.op_type for n in float_model.graph.node}
    dropped: list[str] = []
    tune = _range_tuner(float_model, calibration_data, evaluation, say, tick) if settings.tune_ranges else None

    compute = {n.name for n in nodes}

    def attempt(label: str, with_attention: bool) -> Candidate | None:
        """A candidate graph; where it breaks the recipe's rules, the layers whose quantizers broke
        them are kept float and it is quantized again (up to 3 times); None (and a warning) when
        that does not repair it."""
        say(f"quantizing ({label})")
        keep_float: set[str] = set()
        for _ in range(4):
            model = nncf_quantize(float_model, calibration_data, scheme=scheme, method=settings.calibration,
                                  ignored=ignored_scope(recipe, nodes, list(settings.exclude), op_types,
                                                        with_attention, tuple(sorted(keep_float))),
                                  smooth_quant=settings.smooth_quant, bias_correction=settings.bias_correction,
                                  full=recipe is Recipe.FULL, tick=tick)
            rules = lint_qdq(model, symmetric=scheme is Scheme.SYMMETRIC, vit_safe=recipe is not Recipe.FULL)
            if recipe is Recipe.FULL or rules:
                break
            more = culprits(model, rules, compute) - keep_float
            if not more:
                break
            say(f"  {label}: keeping {len(more)} layer(s) float whose INT8 inputs break the rules "
                f"({rules.errors[0].message} at {rules.errors[0].node})")
            keep_float |= more
        if recipe is not Recipe.FULL and not rules:
            dropped.append(f"candidate '{label}' was dropped: {rules.errors[0].message} at "
                           f"{rules.errors[0].node}")
            return None
        if keep_float:
            warnings_.append(f"candidate '{label}': {len(keep_float)} layer(s) kept float so that the graph "
                             f"keeps the {scheme} {recipe} rules: {', '.join(sorted(keep_float)[:5])}"
                             + (" …" if len(keep_float) > 5 else ""))
        tuning = tune(model) if tune else None
        candidate = judge(label, model, evaluation, nodes)
        candidate.tuning = tuning
        return candidate

    tried: list[Candidate] = []
    sensitivity: list[dict[str, Any]] = []
    if recipe is Recipe.FULL:
        tried.append(attempt("full", True))  # type: ignore[arg-type]  (full is never dropped)
    else:
        first = attempt("linear-only", False)
        tried += [first] if first else []
        if recipe is Recipe.VIT_SAFE and first and budget.meets(first) and any(
                n.kind == "attention" for n in nodes):
            second = attempt("linear + attention MatMuls", True)
            tried += [second] if second else []
    warnings_ += dropped
    if not tried:
        raise InputError(f"no INT8 graph of this model keeps the {recipe} rules ({dropped[0]})",
                         "keep that layer float with --exclude NODE, or use --recipe full for CPU runtimes")
    within = [c for c in tried if budget.meets(c)]
    if within:
        best = max(within, key=lambda c: (len(quantized_node_names(c.model)), -c.drop))
    else:
        best = min(tried, key=lambda c: c.drop)
        if recipe is Recipe.VIT_SAFE:
            say("over budget: ranking layers by sensitivity")
            best, sensitivity = budget_search(best, float_model, nodes, evaluation, budget, say,
                                              warnings_, tick)
    return Search(best, tried, sensitivity, budget.meets(best))


def _range_tuner(float_model: onnx.ModelProto, calibration_data: DataSet, evaluation: Evaluation,
                 say: Callable[[str], None], tick: Callable[..., None] | None
                 ) -> Callable[[onnx.ModelProto], dict[str, Any]]:
    """Tunes a candidate's activation scales in place (`--tune-ranges`) on the first calibration
    samples against the float graph's outputs there, checked on the next ones; returns what it did."""
    from vitedge.quantize.ranges import tune_ranges

    features = evaluation.features
    images = calibration_data.head(2 * TUNING_SAMPLES)
    # without --eval the evaluation samples are the calibration ones, whose FP32 outputs are known
    outputs = evaluation.fp32[:len(images)] if evaluation.data is calibration_data else \
        run_onnx(float_model, images)
    fit, check = slice(None, TUNING_SAMPLES), slice(TUNING_SAMPLES, None)
    checking = len(images) - TUNING_SAMPLES >= 16  # too few left to check on: fit only
    metric = "relative error" if features else "KL"

    def tune(model: onnx.ModelProto) -> dict[str, Any]:
        say(f"tuning activation ranges end to end on {len(images[fit])} calibration samples")
        progress = None if tick is None else (lambda index, total: tick(index, total, "tuning ranges"))
        result = tune_ranges(model, images[fit], outputs[fit], features=features, tick=progress,
                             check=(images[check], outputs[check]) if checking else None)
        if result.rejected:
            before, after = result.check_error
            found = (f"the fit lowered {metric} to FP32 on its samples ({result.error_before:.3g} -> "
                     f"{result.error_after:.3g}) but raised it on {result.check_samples} other calibration "
                     f"samples ({before:.3g} -> {after:.3g}): ranges left as calibrated")
        else:
            found = (f"{len(result.changed)} of {result.scales} activation ranges changed; {metric} to FP32 "
                     f"on those samples {result.error_before:.3g} -> {result.error_after:.3g}")
            if result.check_error is not None:
                found += (f", on {result.check_samples} other calibration samples "
                          f"{result.check_error[0]:.3g} -> {result.check_error[1]:.3g}")
        say(f"  {found}")
        return result.to_dict()

    return tune


# A sensitivity search gives up once this many reverts in a row miss the budget no later than
# an earlier one did: on DeiT-Tiny with a budget it could not meet, 24 more steps changed nothing.
SEARCH_PATIENCE = 3


def budget_search(start: Candidate, float_model: onnx.ModelProto, nodes: list[ComputeNode],
                   evaluation: Evaluation, budget: Budget, say: Callable[[str], None],
                   warnings_: list[str] | None = None, tick: Callable[..., None] | None = None
                   ) -> tuple[Candidate, list[dict[str, Any]]]:
    """Revert the most sensitive Linear nodes to float, one at a time, until the budget holds.

    Sensitivity is the error to FP32 with the node alone in float: KL of the class distributions,
    or the relative error of feature vectors. Each step is judged closest calls first and given
    up on as soon as the budget cannot hold (`judge_or_miss`). When it stops short of the budget it
    says why (and adds it to `warnings_`): the next node would not lower the error, or none is left;
    the best model found is then the best of the steps judged in full, the step that lasted longest
    before missing judged in full too.
    """
    subset = evaluation.data.head(RANKING_SAMPLES)
    quantized = quantized_node_names(start.model)
    ranked = [node for node in nodes if node.name in quantized]
    base, errors = revert_errors(start.model, float_model, [node.name for node in ranked], subset,
                                 evaluation.fp32[:RANKING_SAMPLES], features=evaluation.features)
    ranking = [{"node": node.name, "op_type": node.op_type, "kind": node.kind, "macs": node.macs,
                "error_if_float": errors[node.name], "error_gain": base - errors[node.name]}
               for node in ranked]
    ranking.sort(key=lambda row: row["error_gain"], reverse=True)
    order = closest_calls_first(evaluation)
    best = start
    longest: tuple[Miss, list[str], onnx.ModelProto] | None = None  # the step that lasted longest
    reverted_names: list[str] = []
    misses, furthest, stale, last = 0, 0, 0, ""  # steps missed, the most samples one lasted, misses
    # since then, and why the last one missed
    why = (f"every one of the {len(ranking)} INT8 Linear node(s) was reverted to float and the "
           "budget still does not hold: the loss is not in the Linear layers alone (calibration "
           "data, preprocessing, or the float parts)")
    for row in ranking:
        if row["error_gain"] <= 0:
            why = (f"the sensitivity search stopped after {len(reverted_names)} of {len(ranking)} "
                   f"node(s): reverting the next one ({module_names(float_model).get(row['node'], row['node'])}) "
                   "alone does not lower the error "
                   f"on the {len(subset)} ranking samples, so no further revert is expected to help")
            break
        reverted_names.append(row["node"])
        if tick is not None:  # a progress bar per step (the steps themselves are said at the end)
            tick(len(reverted_names) - 1, len(ranking), "sensitivity search: layers back to float")
        model = revert_to_float(start.model, float_model, set(reverted_names))
        outcome = judge_or_miss(_reverted_label(start, reverted_names), model, evaluation, nodes,
                               reverted_names, budget, order)
        if isinstance(outcome, Miss):
            misses, last = misses + 1, outcome.why
            if longest is None or outcome.judged > longest[0].judged:
                longest = (outcome, list(reverted_names), model)
            furthest, stale = (outcome.judged, 0) if outcome.judged > furthest else (furthest, stale + 1)
            if stale >= SEARCH_PATIENCE:
                why = (f"the sensitivity search gave up after {len(reverted_names)} of {len(ranking)} "
                       f"node(s): the last {SEARCH_PATIENCE} reverts came no closer to the budget")
                break
            continue
        outcome.tuning = start.tuning
        figures = (f"cosine {outcome.cosine:.6g}" if evaluation.features else
                   f"drop {outcome.drop:.2f} points, agreement {100 * outcome.agreement:.1f}%")
        say(f"  {len(reverted_names)} node(s) float: {figures}, {100 * outcome.int8_share:.0f}% Linear/Conv MACs INT8")
        if _better(outcome, best):
            best = outcome
        if budget.meets(outcome):
            return outcome, ranking
    say(f"  {why}" if not misses else f"  {misses} step(s) missed the budget (the last: {last}); {why}")
    if warnings_ is not None:
        warnings_.append(why)
    if longest is not None:  # its figures in full, to weigh it against the steps judged in full
        _, names, model = longest
        candidate = judge(_reverted_label(start, names), model, evaluation, nodes, names)
        candidate.tuning = start.tuning
        best = candidate if _better(candidate, best) else best
    return best, ranking


def _reverted_label(start: Candidate, reverted: list[str]) -> str:
    return f"{start.label}, {len(reverted)} sensitive node(s) float"


def _better(candidate: Candidate, than: Candidate) -> bool:
    return (candidate.drop, -candidate.agreement) < (than.drop, -than.agreement)
