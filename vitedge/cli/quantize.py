"""`vitedge quantize`: INT8 post-training quantization within an accuracy budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vitedge.cli.shared import (
    Overwrite,
    Quiet,
    Source,
    Verbose,
    console,
    floats,
    print_warnings,
    progress_printer,
    step_bar,
    takes_source_options,
    user_errors,
)
from vitedge.quantize.recipes import CalibrationMethod, Recipe
from vitedge.targets import Scheme

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions
    from vitedge.schemas.results import QuantReport


@takes_source_options()
def quantize(
    source: Source,
    calib: Annotated[str, typer.Option(
        "--calib", help="Calibration data: ImageFolder, image folder, glob, video file or .npy/.npz.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval", help="Held-out data for metrics and the budget (labeled ImageFolder: top-1; "
                       "unlabeled: agreement with FP32).")] = None,
    recipe: Annotated[Recipe, typer.Option(help="Which nodes are quantized.")] = Recipe.VIT_SAFE,
    calibration: Annotated[CalibrationMethod, typer.Option(
        help="Activation ranges (mean-minmax is NNCF's default).")] = CalibrationMethod.MEAN_MINMAX,
    target: Annotated[Optional[str], typer.Option(
        help="Target profile name or .toml: sets the INT8 scheme (see `vitedge targets`).")] = None,
    scheme: Annotated[Optional[Scheme], typer.Option(
        help="symmetric (TensorRT: zero-points 0) or asymmetric (CPU runtimes); default: the "
             "target's, else symmetric.")] = None,
    samples: Annotated[int, typer.Option(min=1, max=1_000_000, help="Calibration samples (seeded subset).")] = 300,
    eval_samples: Annotated[Optional[int], typer.Option(min=1, max=10_000_000, help="Evaluation samples (default: all).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(
        callback=floats(0, 100),
        help="Budget: points of top-1 (labeled --eval) or of FP32 agreement (unlabeled); default 0.5.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(
        callback=floats(0, 1), help="Also require this top-1 agreement with FP32 (0-1), e.g. 0.99.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(
        callback=floats(-1, 1), help="Feature extractors (no classifier head): budget on the mean "
                                     "cosine to the FP32 features; default 0.99.")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        help="Keep float: node-name regex or op type, repeatable.")] = None,
    smooth_quant: Annotated[bool, typer.Option(help="Apply NNCF SmoothQuant to MatMuls.")] = False,
    shift: Annotated[bool, typer.Option(
        help="Centre skewed Linear inputs (post-GELU fc2) with a per-channel shift folded into the "
             "bias (Outlier Suppression+), so symmetric INT8 uses its whole range.")] = False,
    tune_ranges: Annotated[bool, typer.Option(
        help="Tune the activation ranges end to end: each scale in turn, kept when the model's KL "
             "to FP32 on 64 calibration samples falls; not applied when worse on the next 64. "
             "Minutes on a real ViT.")] = False,
    bias_correction: Annotated[bool, typer.Option(help="NNCF fast bias correction.")] = True,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for sampling the data.")] = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """INT8 post-training quantization (NNCF, QDQ ONNX) within an accuracy budget.

    Example: vitedge quantize builtin:digits-vit --calib calibration/digits/train
    --eval calibration/digits/heldout -o artifacts/digits-int8
    """
    from vitedge.quantize.ptq import BudgetMissed
    from vitedge.quantize.ptq import quantize as run_quantize

    with user_errors(verbose), step_bar(quiet, "calibration") as tick:
        try:
            result = run_quantize(
                source, calib, out, eval_data=eval_data, recipe=recipe, calibration=calibration,
                scheme=scheme, target=target, samples=samples, eval_samples=eval_samples,
                max_drop=max_drop, min_agreement=min_agreement, min_cosine=min_cosine,
                exclude=exclude, smooth_quant=smooth_quant, bias_correction=bias_correction, shift=shift,
                tune_ranges=tune_ranges, seed=seed,
                overwrite=overwrite, progress=progress_printer(quiet), calibration_tick=tick,
                options=options)
        except BudgetMissed as missed:
            _print_summary(missed.result.report, missed.result.out_dir)
            raise
    _print_summary(result.report, result.out_dir)


def _print_summary(report: QuantReport, out_dir: Path) -> None:
    print_warnings(report.warnings)
    drift, budget, latency, accuracy = report.drift, report.budget, report.latency_ms, report.accuracy
    if accuracy:
        console.print(f"top-1 FP32 {100 * accuracy.fp32_top1:.2f}% → INT8 "
                      f"{100 * accuracy.int8_top1:.2f}% (drop {budget.drop:.2f} points, "
                      f"budget {budget.max_drop:g})", highlight=False)
    closeness = (f"feature cosine to FP32 {drift.cosine:.4f} (worst {drift.min_cosine:.4f}, "
                 f"relative error {drift.rel_error:.4f}, budget {budget.min_cosine:g})"
                 if drift.features else
                 f"agreement with FP32 {100 * (drift.top1_agreement or 0):.2f}%")
    console.print(f"{closeness} on {drift.samples} samples"
                  + ("" if drift.features else f", KL {drift.kl:.4f}, cosine {drift.cosine:.4f}")
                  + f"; {100 * report.int8_linear_mac_share:.1f}% of Linear/Conv MACs in INT8 "
                  f"({report.chosen})")
    if report.float_nodes.run_as:
        console.print(f"layers kept float run as: {report.float_nodes.run_as}", highlight=False)
    console.print(f"ONNX Runtime CPU p50 batch {latency.batch}: FP32 {latency.fp32['p50']:.2f} ms, "
                  f"INT8 {latency.int8['p50']:.2f} ms; lint "
                  f"{'passed' if report.lint['passed'] else 'FAILED'}", highlight=False)
    console.print(f"wrote {out_dir}/model.onnx and quant_report.md; per layer, by module: vitedge report {out_dir}",
                  highlight=False)
