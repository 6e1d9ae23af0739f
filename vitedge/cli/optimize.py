"""`vitedge optimize`: the fastest bundle within an accuracy budget, measured."""

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
    progress_printer,
    takes_source_options,
    user_errors,
    warn_if_busy,
)
from vitedge.formatting import precision_label

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions


@takes_source_options()
def optimize(
    source: Source,
    target: Annotated[str, typer.Option(help="Target profile name or .toml (see `vitedge targets`); TensorRT targets are estimated.")],
    data: Annotated[str, typer.Option(
        "--data", help="Held-out images for accuracy (labeled ImageFolder: top-1 too); split in two "
                       "(calibration / evaluation, seeded) unless --calib is given.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write: candidates/, best/, optimize.json, report.")],
    calib: Annotated[Optional[str], typer.Option(
        "--calib", help="Calibration images (then all of --data is held out).")] = None,
    max_drop: Annotated[float, typer.Option(
        callback=floats(0, 100), help="Budget: points of top-1 (labeled data) or of agreement with FP32.")] = 1.0,
    min_agreement: Annotated[Optional[float], typer.Option(
        callback=floats(0, 1), help="Also require this top-1 agreement with FP32 (0-1), e.g. 0.985.")] = None,
    time_budget: Annotated[Optional[str], typer.Option(
        help="Stop starting candidates after this long (90s, 20m, 1.5h); --resume goes on.")] = None,
    tome: Annotated[str, typer.Option(
        help="Token-merging r values to try (timm ViTs), comma-separated; 0 = none.")] = "0,8,16",
    prune: Annotated[str, typer.Option(
        help="Structured pruning to try, comma-separated: shares of the MACs to remove (compensated pruning on "
             "the calibration images, as prune --target-macs 1-P), or auto (the largest cut that holds the budget "
             "on the calibration images, as prune --max-drop); 0 = none.")] = "0",
    distill_steps: Annotated[int, typer.Option(min=0, max=1_000_000, help="Distillation steps per pruned model (early stop).")] = 0,
    samples: Annotated[int, typer.Option(min=1, max=1_000_000, help="Calibration samples with --calib.")] = 300,
    eval_samples: Annotated[Optional[int], typer.Option(min=1, max=10_000_000,
                                                        help="Held-out samples (default: all).")] = None,
    resume: Annotated[bool, typer.Option(help="Go on with an earlier run in the same -o folder.")] = False,
    overwrite: Overwrite = False, quiet: Quiet = False, verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """The fastest bundle within an accuracy budget, measured: pruning x token merging x precision x runtime.

    Example: vitedge optimize demo-out/digits-onnx --target x86-cpu --data calibration/digits/heldout
    --calib calibration/digits/train --tome 0,4 -o demo-out/digits-optimized

    With pruning: vitedge optimize builtin:digits-vit --target x86-cpu --data calibration/digits/heldout
    --calib calibration/digits/train --prune 0,0.3,auto --tome 0 -o demo-out/digits-pruned-opt
    """
    from vitedge.optimize.search import optimize as run_optimize
    from vitedge.optimize.search import parse_duration

    with user_errors(verbose):
        try:
            values = tuple(int(v) for v in tome.split(","))
        except ValueError:
            from vitedge.errors import InputError

            raise InputError(f"--tome {tome!r} is not a list of token counts", "e.g. --tome 0,8,16") from None
        try:
            shares = tuple(v.strip() if v.strip() == "auto" else float(v) for v in prune.split(","))
        except ValueError:
            from vitedge.errors import InputError

            raise InputError(f"--prune {prune!r} is not a list of shares", "e.g. --prune 0,0.15,0.25 or --prune 0,auto") from None
        result = run_optimize(source, target, data, out, calib=calib, max_drop=max_drop,
                              min_agreement=min_agreement, time_budget=parse_duration(time_budget),
                              tome=values, prune=shares, distill_steps=distill_steps, samples=samples, eval_samples=eval_samples, resume=resume,
                              overwrite=overwrite, options=options, progress=progress_printer(quiet))
    document = result.document
    measured = [c for c in document.candidates if c.status == "measured"]
    console.print(f"{len(measured)} candidates measured on {document.eval_samples} held-out samples"
                  + ("" if document.measured_here else " (latency estimated: this machine is not the target)"),
                  highlight=False)
    warn_if_busy(document.load, "the bundles were timed", "the pick may not hold")
    chosen = next((c for c in measured if c.name == document.chosen), None)
    if chosen is None:
        console.print("no candidate met the budget; see the report", highlight=False)
    else:
        speed = f"{chosen.p50_ms:.2f} ms at batch {document.batch}" if chosen.p50_ms is not None else \
            f"estimated cost {chosen.estimated_cost:.3f}"
        run = precision_label(chosen.precision_run or chosen.precision, chosen.int8_share)
        console.print(f"best: {result.best}  {chosen.name} ({run} on {chosen.runtime}): "
                      f"agreement {100 * (chosen.agreement or 0):.1f}%, {speed}", highlight=False)
    if chosen is not None and chosen.runtime == "tensorrt" and not chosen.native:
        console.print(f"TensorRT: accuracy from ONNX Runtime on each bundle's ONNX, latency estimated; on the "
                      f"device: vitedge build {result.best}, and vitedge bench the candidates there", highlight=False)
    if document.not_tried:
        console.print(f"not tried within --time-budget: {', '.join(document.not_tried)} "
                      "(run again with --resume)", highlight=False)
    console.print(f"report: {Path(out) / 'report.html'}", highlight=False)
