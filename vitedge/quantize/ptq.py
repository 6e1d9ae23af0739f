"""INT8 post-training quantization that keeps a ViT's accuracy: NNCF on the ONNX graph.

Recipes decide what may be INT8 (all three keep weights per-channel symmetric):
  linear-only  Linear layers (MatMul/Gemm with constant weights, patch Conv); everything else
               (residual Add, LayerNorm, Softmax, GELU, attention MatMuls) stays float.
  vit-safe     linear-only, plus the attention MatMuls when the accuracy budget still holds;
               if linear-only itself misses the budget, the most sensitive layers go back to
               float until it holds (default).
  full         NNCF's default recipe, without the transformer model type: everything NNCF
               can quantize, residual Adds included (the report and the lint say what it costs).

Activations are symmetric (zero-point 0) for TensorRT targets and may be asymmetric for CPU
targets. The budget search is vitedge's own: NNCF's accuracy-control loop re-runs calibration
per attempt, while reverting single nodes of the finished QDQ graph (vitedge.quantize.qdq) costs one
ONNX Runtime pass each and yields a per-layer sensitivity table for the report.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vitedge.artifact import atomic_write_text, derive_card, write_card
from vitedge.card import ModelCard
from vitedge.data import DataSet, model_labels, open_data
from vitedge.drift import compare, topk_accuracy
from vitedge.errors import InputError, VitedgeError
from vitedge.locks import releasing
from vitedge.models.loaded import LoadedModel
from vitedge.models.options import SourceOptions
from vitedge.quantize.lint import lint_qdq
from vitedge.quantize.qdq import (
    ComputeNode,
    compute_nodes,
    int8_mac_share,
    quantized_node_names,
    revert_to_float,
    to_signed_int8,
)
from vitedge.quantize.recipes import Budget, CalibrationMethod, Recipe, ignored_scope
from vitedge.quantize.report import build_report, markdown
from vitedge.runtime.onnxrt import OnnxRuntimeSession
from vitedge.schemas.results import QuantReport
from vitedge.targets import Scheme, Target, load_target

if TYPE_CHECKING:
    import onnx


RANKING_SAMPLES = 64


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


@dataclass(frozen=True)
class QuantSettings:
    """What was asked for: recorded in the report's settings and the card's lineage."""

    recipe: Recipe = Recipe.VIT_SAFE
    calibration: CalibrationMethod = CalibrationMethod.MEAN_MINMAX
    scheme: Scheme = Scheme.SYMMETRIC
    target: Target | None = None
    smooth_quant: bool = False
    bias_correction: bool = True
    exclude: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class QuantizeResult:
    out_dir: Path
    card: ModelCard
    report: QuantReport
    within_budget: bool
    seconds: float


class _Samples:
    """Re-iterable calibration samples for nncf.Dataset (it iterates more than once).

    `tick(index, total)` is called for every sample handed out, so a caller can show progress.
    """

    def __init__(self, data: DataSet, input_name: str,
                 tick: Callable[[int, int], None] | None = None) -> None:
        self.data, self.input_name, self.tick = data, input_name, tick

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        total = len(self.data)
        for index, sample in enumerate(self.data.samples()):
            if self.tick is not None:
                self.tick(index, total)
            yield {self.input_name: sample}

    def __len__(self) -> int:
        return len(self.data)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs and draws its own progress bars on stdout; a library call must not print."""
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(previous)


def run_onnx(model: onnx.ModelProto | Path, data: DataSet | np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits of a graph over a data set, on ONNX Runtime's CPU provider."""
    return OnnxRuntimeSession(model).infer_all(data, batch_size)


def _nncf_quantize(model: onnx.ModelProto, calibration: DataSet, *, scheme: Scheme,
                   method: CalibrationMethod, ignored: Any, smooth_quant: bool,
                   bias_correction: bool, full: bool = False,
                   tick: Callable[[int, int], None] | None = None) -> onnx.ModelProto:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimators = {CalibrationMethod.MINMAX: RangeEstimatorParametersSet.MINMAX,
                  CalibrationMethod.MEAN_MINMAX: RangeEstimatorParametersSet.MEAN_MINMAX,
                  CalibrationMethod.PERCENTILE: RangeEstimatorParametersSet.MEAN_QUANTILE}
    advanced = AdvancedQuantizationParameters(
        # SmoothQuant is off by default: on DeiT-Tiny it lowered FP32 agreement (measured in
        # benchmarks/quantize_vit.py); --smooth-quant turns it on with NNCF's transformer alpha.
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=0.95 if smooth_quant else -1),
        activations_range_estimator_params=estimators[method],
        disable_bias_correction=not bias_correction,
    )
    preset = (nncf.QuantizationPreset.PERFORMANCE if scheme is Scheme.SYMMETRIC
              else nncf.QuantizationPreset.MIXED)
    # "full" is NNCF without the transformer model type: everything it can quantize, residual
    # adds included; the report shows what that costs.
    model_type = None if full else nncf.ModelType.TRANSFORMER
    input_name = model.graph.input[0].name
    dataset = nncf.Dataset(_Samples(calibration, input_name, tick))
    with _quiet_nncf():
        try:
            quantized = nncf.quantize(model, dataset, preset=preset, subset_size=len(calibration),
                                      model_type=model_type, ignored_scope=ignored,
                                      advanced_parameters=advanced)
        except nncf.ValidationError as exc:
            raise InputError(f"NNCF rejected the settings: {str(exc).strip().splitlines()[-1]}",
                             "check --exclude patterns and the recipe") from None
    if scheme is Scheme.SYMMETRIC:
        # NNCF's symmetric preset still quantizes non-negative activations (after ReLU/MaxPool,
        # softmax probabilities) as UINT8 with zero-point 0; TensorRT takes signed INT8 only.
        # (Forcing signedness in NNCF conflicts with its hardware configs on CNN stems.)
        to_signed_int8(quantized)
    return quantized


def _candidate(label: str, model: onnx.ModelProto, evaluation: Evaluation, nodes: list[ComputeNode],
               float_nodes: list[str] | None = None) -> Candidate:
    """Evaluate a quantized graph against the FP32 outputs."""
    fp32, labels = evaluation.fp32, evaluation.labels
    logits = run_onnx(model, evaluation.data)
    vectors = compare(fp32, logits, features=True)
    cosine, rel_error = float(vectors.cosine or 0.0), float(vectors.rel_error or 0.0)
    if evaluation.features:
        return Candidate(label, model, logits, 100.0 * (1.0 - cosine), int8_mac_share(model, nodes),
                         cosine, list(float_nodes or []), cosine, rel_error)
    return Candidate(label, model, logits, _drop(fp32, logits, labels), int8_mac_share(model, nodes),
                     _agreement(fp32, logits), list(float_nodes or []), cosine, rel_error)


def _resolution_warnings(budget: Budget, samples: int) -> list[str]:
    """A top-1 budget finer than one evaluation sample cannot be told from noise."""
    if budget.features or samples == 0:
        return []
    step = 100.0 / samples
    warnings: list[str] = []
    if 0 < budget.max_drop < step:
        warnings.append(f"--max-drop {budget.max_drop:g} is finer than one of the {samples} evaluation "
                        f"samples ({step:.2f} points each): a single flip misses it; it needs at least "
                        f"{math.ceil(100.0 / budget.max_drop)} samples (--eval-samples)")
    if budget.min_agreement is not None and 0 < 1 - budget.min_agreement < 1 / samples:
        warnings.append(f"--min-agreement {budget.min_agreement:g} is finer than one of the {samples} "
                        f"evaluation samples: it needs at least "
                        f"{math.ceil(1 / (1 - budget.min_agreement))} samples")
    return warnings


def _agreement(fp32: np.ndarray, int8: np.ndarray) -> float:
    return float(np.mean(fp32.argmax(1) == int8.argmax(1)))


def _drop(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None) -> float:
    if labels is not None:
        return 100.0 * (topk_accuracy(fp32, labels) - topk_accuracy(int8, labels))
    return 100.0 * (1.0 - _agreement(fp32, int8))


@releasing
def quantize(model: LoadedModel | str | Path, calib: str | Path, out: str | Path, *,
             eval_data: str | Path | None = None, recipe: Recipe = Recipe.VIT_SAFE,
             calibration: CalibrationMethod = CalibrationMethod.MEAN_MINMAX,
             scheme: Scheme | None = None, target: Target | str | Path | None = None,
             options: SourceOptions | None = None,
             samples: int = 300, eval_samples: int | None = None,
             max_drop: float | None = None, min_agreement: float | None = None,
             min_cosine: float | None = None,
             exclude: list[str] | None = None, smooth_quant: bool = False,
             bias_correction: bool = True, seed: int = 0, overwrite: bool = False,
             progress: Callable[[str], None] | None = None,
             calibration_tick: Callable[[int, int], None] | None = None) -> QuantizeResult:
    """Quantize `model` (loaded, or a source read with `options`) to a QDQ INT8 artifact at
    `out` within its budget. `target` is a profile (or its name / .toml path).

    Classifiers: `max_drop` points of top-1 (default 0.5) and optionally `min_agreement` with FP32;
    feature extractors (no classifier head): `min_cosine` to the FP32 features (default 0.99).
    The activation scheme is `scheme` if given, else the target's INT8 scheme, else symmetric
    (what TensorRT needs). Raises BudgetMissed (after writing the best model found) when no
    candidate meets the budget.
    """
    import onnx

    from vitedge.locks import temporary_directory
    from vitedge.models.load import as_loaded
    from vitedge.outputs import OutputKind, check_output, input_paths, writing

    say = progress or (lambda _message: None)
    started = time.perf_counter()
    if target is not None and not isinstance(target, Target):
        target = load_target(target)  # an unknown target fails before the model is loaded
    if samples < 1:
        raise InputError(f"--samples {samples} must be at least 1")
    settings = QuantSettings(recipe, calibration, scheme or (target.int8_scheme if target else Scheme.SYMMETRIC),
                             target, smooth_quant, bias_correction, tuple(exclude or ()))
    for pattern in settings.exclude:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InputError(f"--exclude {pattern!r} is not a valid regular expression ({exc})") from None
    loaded = as_loaded(model, options)
    card = loaded.card
    budget = Budget.of(card.num_classes is None, max_drop, min_agreement, min_cosine)
    inputs = [*loaded.origin, *input_paths(calib, eval_data)]
    check_output(out, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs)  # before minutes of work
    calibration_data, evaluation_data, warnings_ = _open_data(card, calib, eval_data, samples, eval_samples,
                                                             seed, say)
    warnings_ += _resolution_warnings(budget, len(evaluation_data))
    with temporary_directory("quantize") as tmp:
        float_path = _float_onnx(loaded, Path(tmp), calib, say)
        float_model = onnx.load(str(float_path))
        nodes = compute_nodes(float_model)
        if not any(n.kind == "linear" for n in nodes):
            raise InputError(f"{card.architecture} has no quantizable Linear layers "
                             "(no MatMul/Gemm/Conv with constant weights)",
                             "vitedge quantizes Linear layers; this graph has none")
        fp32 = run_onnx(float_model, evaluation_data)
        if fp32.ndim != 2:
            raise InputError(f"{card.architecture} outputs shape {fp32.shape[1:]}, not one vector "
                             "per image", "vitedge compares class logits or pooled features with FP32")
        evaluation = Evaluation(evaluation_data, fp32, None if budget.features else
                                model_labels(card, evaluation_data), budget.features)
        search = _search(float_model, nodes, calibration_data, evaluation, settings, budget, warnings_,
                         say, calibration_tick)
        lint = lint_qdq(search.best.model, symmetric=settings.scheme is Scheme.SYMMETRIC,
                        vit_safe=settings.recipe is not Recipe.FULL)
        if settings.recipe is not Recipe.FULL and not lint:
            raise VitedgeError(f"internal: the {settings.recipe} graph broke its own rules: "
                               f"{lint.errors[0].message} at {lint.errors[0].node}",
                               "please report this with the model")
        say("measuring per-layer error and latency")
        raw = build_report(card, float_model, nodes, evaluation, calibration_data, search, lint, budget,
                           settings, warnings_)
        new_card = _quantized_card(card, raw, float_path)
        with writing(out, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs) as staging:
            onnx.save_model(search.best.model, str(staging / "model.onnx"))
            atomic_write_text(staging / "quant_report.json", json.dumps(raw, indent=2) + "\n")
            atomic_write_text(staging / "quant_report.md", markdown(raw))
            write_card(staging, new_card)  # hashes the model and the reports
    report = QuantReport.from_dict(raw)
    result = QuantizeResult(Path(out), new_card, report, report.budget.met, time.perf_counter() - started)
    if not result.within_budget:
        raise BudgetMissed(result)
    return result


def _open_data(card: ModelCard, calib: str | Path, eval_data: str | Path | None, samples: int,
               eval_samples: int | None, seed: int, say: Callable[[str], None]
               ) -> tuple[DataSet, DataSet, list[str]]:
    """The calibration samples, the evaluation samples (the calibration ones without --eval, with
    a warning that says what that flatters) and the warnings so far."""
    pre = card.preprocessing
    calibration_data = open_data(calib, pre, samples=samples, seed=seed, role="calibration")
    say(f"calibration: {len(calibration_data)} samples from {calibration_data.origin}"
        + (f" ({len(calibration_data.skipped)} unreadable skipped)" if calibration_data.skipped else ""))
    if eval_data is not None:
        return calibration_data, open_data(eval_data, pre, samples=eval_samples, seed=seed + 1, role="eval"), []
    return calibration_data, calibration_data, [
        "no --eval data: metrics are measured on the calibration samples, which flatters INT8; pass "
        "held-out images with --eval"]


def _search(float_model: onnx.ModelProto, nodes: list[ComputeNode], calibration_data: DataSet,
            evaluation: Evaluation, settings: QuantSettings, budget: Budget, warnings_: list[str],
            say: Callable[[str], None], tick: Callable[[int, int], None] | None) -> Search:
    """Quantize the recipe's candidates, keep the one with most INT8 within the budget; over
    budget (vit-safe), revert the most sensitive Linear nodes to float until it holds."""
    recipe, scheme = settings.recipe, settings.scheme
    op_types = {n.op_type for n in float_model.graph.node}
    dropped: list[str] = []

    def attempt(label: str, with_attention: bool) -> Candidate | None:
        """A candidate graph, or None (and a warning) when it breaks the recipe's rules."""
        say(f"quantizing ({label})")
        model = _nncf_quantize(float_model, calibration_data, scheme=scheme, method=settings.calibration,
                               ignored=ignored_scope(recipe, nodes, list(settings.exclude), op_types,
                                                     with_attention),
                               smooth_quant=settings.smooth_quant, bias_correction=settings.bias_correction,
                               full=recipe is Recipe.FULL, tick=tick)
        rules = lint_qdq(model, symmetric=scheme is Scheme.SYMMETRIC, vit_safe=recipe is not Recipe.FULL)
        if recipe is not Recipe.FULL and not rules:
            dropped.append(f"candidate '{label}' was dropped: {rules.errors[0].message} at "
                           f"{rules.errors[0].node}")
            return None
        return _candidate(label, model, evaluation, nodes)

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
        raise VitedgeError(f"internal: every {recipe} candidate broke its own rules ({dropped[0]})",
                           "please report this with the model")
    within = [c for c in tried if budget.meets(c)]
    if within:
        best = max(within, key=lambda c: (len(quantized_node_names(c.model)), -c.drop))
    else:
        best = min(tried, key=lambda c: c.drop)
        if recipe is Recipe.VIT_SAFE:
            say("over budget: ranking layers by sensitivity")
            best, sensitivity = _budget_search(best, float_model, nodes, evaluation, budget.meets, say)
    return Search(best, tried, sensitivity, budget.meets(best))


class BudgetMissed(VitedgeError):
    """No candidate met the budget; the best one found was still written."""

    def __init__(self, result: QuantizeResult) -> None:
        budget = result.report.budget
        share = f"{100 * result.report.int8_linear_mac_share:.0f}% of Linear MACs in INT8"
        if budget.features:
            message = (f"--min-cosine {budget.min_cosine:g} cannot be met: the best model found has "
                       f"cosine {budget.cosine:.4f} to the FP32 features (relative error "
                       f"{budget.rel_error:.4f}), with {share}; it was written to {result.out_dir}")
            hint = "lower --min-cosine, or calibrate on data closer to the deployment"
        else:
            message = (f"{budget.wanted} cannot be met: the best model found drops {budget.drop:.2f} "
                       f"points ({max(0.0, budget.drop - (budget.max_drop or 0.0)):.2f} over), agrees with "
                       f"FP32 on {100 * (budget.agreement or 0.0):.2f}% of samples, with {share}; it was "
                       f"written to {result.out_dir}")
            hint = ("raise --max-drop or lower --min-agreement, calibrate on data closer to the "
                    "deployment, or try --scheme asymmetric on CPU targets")
        super().__init__(message, hint)
        self.result = result


def _float_onnx(loaded: LoadedModel, tmp: Path, calib: str | Path, say: Callable[[str], None]) -> Path:
    from vitedge.export import ensure_onnx

    path = Path(calib)
    parity = str(calib) if (path.is_dir() or any(c in str(calib) for c in "*?[")) else None
    return ensure_onnx(loaded, tmp, say, parity_data=parity)


def _budget_search(start: Candidate, float_model: onnx.ModelProto, nodes: list[ComputeNode],
                   evaluation: Evaluation, meets: Callable[[Candidate], bool], say: Callable[[str], None]
                   ) -> tuple[Candidate, list[dict[str, Any]]]:
    """Revert the most sensitive Linear nodes to float, one at a time, until the budget holds.

    Sensitivity is the error to FP32 with the node alone in float: KL of the class distributions,
    or the relative error of feature vectors.
    """
    features = evaluation.features
    subset = evaluation.data.head(RANKING_SAMPLES)
    reference = evaluation.fp32[:RANKING_SAMPLES]
    base = compare(reference, run_onnx(start.model, subset), features=features).error
    quantized = quantized_node_names(start.model)
    ranking = []
    for node in nodes:
        if node.name not in quantized:
            continue
        reverted = revert_to_float(start.model, float_model, {node.name})
        error = compare(reference, run_onnx(reverted, subset), features=features).error
        ranking.append({"node": node.name, "op_type": node.op_type, "kind": node.kind,
                        "macs": node.macs, "error_if_float": error, "error_gain": base - error})
    ranking.sort(key=lambda row: row["error_gain"], reverse=True)
    best = start
    reverted_names: list[str] = []
    for row in ranking:
        if row["error_gain"] <= 0:
            break
        reverted_names.append(row["node"])
        model = revert_to_float(start.model, float_model, set(reverted_names))
        candidate = _candidate(f"{start.label}, {len(reverted_names)} sensitive node(s) float",
                               model, evaluation, nodes, reverted_names)
        say(f"  {len(reverted_names)} node(s) float: drop {candidate.drop:.2f} points, agreement "
            f"{100 * candidate.agreement:.1f}%, {100 * candidate.int8_share:.0f}% Linear MACs INT8")
        if (candidate.drop, -candidate.agreement) < (best.drop, -best.agreement):
            best = candidate
        if meets(candidate):
            return candidate, ranking
    return best, ranking


def _quantized_card(parent: ModelCard, report: dict[str, Any], float_path: Path) -> ModelCard:
    from vitedge.artifact import sha256_file

    summary = {key: report[key] for key in ("budget", "accuracy", "int8_linear_mac_share", "float_nodes")}
    summary["drift"] = {k: report["drift"][k] for k in ("samples", "features", "top1_agreement", "kl",
                                                       "cosine", "rel_error")}
    card = derive_card(parent, "quantize", format="onnx", card_metrics={"quantization": summary},
                       params=report["settings"], metrics=summary, tools=("nncf", "onnx", "onnxruntime"),
                       unsaved_parent={"onnx_sha256": sha256_file(float_path)})
    card.warnings = [*parent.warnings, *report["warnings"]]
    card.source = {**parent.source, "quantization": report["settings"]}
    return card
