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
targets. This module is the step (data, search, report, card); NNCF runs in `calibrate`, the
candidate and budget search is `search`, the report `report`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vitedge.artifact import atomic_write_text, derive_card, write_card
from vitedge.card import ModelCard
from vitedge.data import DataSet, model_labels, open_data
from vitedge.documents import write_document
from vitedge.errors import InputError, VitedgeError
from vitedge.locks import releasing
from vitedge.models.loaded import LoadedModel
from vitedge.models.options import SourceOptions
from vitedge.quantize.lint import lint_qdq
from vitedge.quantize.qdq import compute_nodes
from vitedge.quantize.recipes import Budget, CalibrationMethod, QuantSettings, Recipe
from vitedge.quantize.report import REPORT_JSON, REPORT_MD, build_report, markdown
from vitedge.quantize.search import Evaluation, run_onnx, run_search
from vitedge.schemas.results import QuantReport
from vitedge.targets import Scheme, Target, load_target


@dataclass(frozen=True)
class QuantizeResult:
    out_dir: Path
    card: ModelCard
    report: QuantReport
    seconds: float

    @property
    def within_budget(self) -> bool:
        return self.report.budget.met


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


@releasing
def quantize(model: LoadedModel | str | Path, calib: str | Path | DataSet, out: str | Path, *,
             eval_data: str | Path | None = None, recipe: Recipe = Recipe.VIT_SAFE,
             calibration: CalibrationMethod = CalibrationMethod.MEAN_MINMAX,
             scheme: Scheme | None = None, target: Target | str | Path | None = None,
             options: SourceOptions | None = None,
             samples: int = 300, eval_samples: int | None = None,
             max_drop: float | None = None, min_agreement: float | None = None,
             min_cosine: float | None = None,
             exclude: list[str] | None = None, smooth_quant: bool = False,
             bias_correction: bool = True, shift: bool = False, tune_ranges: bool = False,
             seed: int = 0, overwrite: bool = False,
             progress: Callable[[str], None] | None = None,
             calibration_tick: Callable[..., None] | None = None) -> QuantizeResult:
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
                             target, smooth_quant, bias_correction, tuple(exclude or ()), shift, tune_ranges)
    if shift and calibration is CalibrationMethod.PERCENTILE:
        # measured on DeiT-Tiny: 0.2 % agreement with FP32 (min/max ranges: 97 %); cause not found
        raise InputError("--shift with --calibration percentile breaks the model (measured: DeiT-Tiny "
                         "fell to 0.2 % agreement with FP32)", "use --shift with mean-minmax or minmax")
    for pattern in settings.exclude:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InputError(f"--exclude {pattern!r} is not a valid regular expression ({exc})") from None
    loaded = as_loaded(model, options)
    card = loaded.card
    budget = Budget.of(card.num_classes is None, max_drop, min_agreement, min_cosine)
    inputs = [*loaded.origin, *input_paths(calib.origin if isinstance(calib, DataSet) else calib, eval_data)]
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
        if settings.shift:
            from vitedge.quantize.equalize import shift_linear_inputs

            float_model, shifts = shift_linear_inputs(float_model, calibration_data)
            say(f"centred the inputs of {len(shifts)} Linear layer(s) (OS+ shift)")
        evaluation = Evaluation(evaluation_data, fp32, None if budget.features else
                                model_labels(card, evaluation_data), budget.features)
        search = run_search(float_model, nodes, calibration_data, evaluation, settings, budget, warnings_,
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
            write_document(staging / REPORT_JSON, raw)  # sealed, like every document vitedge reads
            atomic_write_text(staging / REPORT_MD, markdown(raw))
            write_card(staging, new_card)  # hashes the model and the reports
    report = QuantReport.from_dict(raw)
    result = QuantizeResult(Path(out), new_card, report, time.perf_counter() - started)
    if not result.within_budget:
        raise BudgetMissed(result)
    return result


def _open_data(card: ModelCard, calib: str | Path | DataSet, eval_data: str | Path | None, samples: int,
               eval_samples: int | None, seed: int, say: Callable[[str], None]
               ) -> tuple[DataSet, DataSet, list[str]]:
    """The calibration samples, the evaluation samples (the calibration ones without --eval, with
    a warning that says what that flatters) and the warnings so far."""
    pre = card.preprocessing
    if isinstance(calib, DataSet):  # already opened (vitedge optimize's split of one folder)
        if calib.pre != pre:
            raise InputError(f"the calibration data {calib.origin} was prepared for other preprocessing "
                             "than the model's card says", "open it with the model's card.preprocessing")
        calibration_data = calib
    else:
        calibration_data = open_data(calib, pre, samples=samples, seed=seed, role="calibration")
    say(f"calibration: {len(calibration_data)} samples from {calibration_data.origin}"
        + (f" ({len(calibration_data.skipped)} unreadable skipped)" if calibration_data.skipped else ""))
    if eval_data is not None:
        evaluation = open_data(eval_data, pre, samples=eval_samples, seed=seed + 1, role="eval")
        return calibration_data, evaluation, _overlap(calibration_data, evaluation)
    return calibration_data, calibration_data, [
        "no --eval data: metrics are measured on the calibration samples, which flatters INT8; pass "
        "held-out images with --eval"]


def _overlap(calibration: DataSet, evaluation: DataSet) -> list[str]:
    """A warning when the --eval samples come from the calibration data: files inside the
    calibration folder (through links too) or among the calibration samples, or the same video
    or tensor file."""
    calibrated = {p.resolve() for p in calibration.paths() if p is not None}
    evaluated = [p.resolve() for p in evaluation.paths() if p is not None]
    folder = Path(calibration.origin).resolve() if calibration.origin else None
    inside = [p for p in evaluated if p in calibrated or (
        folder is not None and folder.is_dir() and p.is_relative_to(folder))]
    if inside:
        shared = sum(p in calibrated for p in inside)
        return [f"{len(inside)} of the {len(evaluation)} --eval samples come from the calibration "
                f"data {calibration.origin} ({shared} of them are calibration samples): the "
                "held-out figures are flattered; evaluate on images quantize does not calibrate on"]
    if calibration.kind != "images" and evaluation.kind == calibration.kind and folder is not None \
            and folder == Path(evaluation.origin).resolve():
        return [f"--eval {evaluation.origin} is the calibration source: frames or tensors of it are "
                "both calibrated on and evaluated, which flatters INT8; evaluate on other data"]
    return []


class BudgetMissed(VitedgeError):
    """No candidate met the budget; the best one found was still written."""

    def __init__(self, result: QuantizeResult) -> None:
        budget = result.report.budget
        share = f"{100 * result.report.int8_linear_mac_share:.0f}% of Linear/Conv MACs in INT8"
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
            settings = result.report.settings
            cpu = settings.target in (None, "x86-cpu", "arm64-cpu")
            hint = ("raise --max-drop or lower --min-agreement, calibrate on data closer to the "
                    "deployment" + (", or try --scheme asymmetric (CPU targets)"
                                    if settings.scheme == "symmetric" and cpu else ""))
        super().__init__(message, hint)
        self.result = result


def _float_onnx(loaded: LoadedModel, tmp: Path, calib: str | Path | DataSet,
                say: Callable[[str], None]) -> Path:
    from vitedge.export import ensure_onnx

    if isinstance(calib, DataSet):
        return ensure_onnx(loaded, tmp, say)
    path = Path(calib)
    parity = str(calib) if (path.is_dir() or any(c in str(calib) for c in "*?[")) else None
    return ensure_onnx(loaded, tmp, say, parity_data=parity)


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
