"""Deployment commands: compile (a bundle for a target) and build (its TensorRT engine, on the device)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vitedge.cli.shared import (
    Quiet,
    Source,
    Verbose,
    console,
    err_console,
    progress_printer,
    styled,
    takes_source_options,
    user_errors,
)
from vitedge.targets import CompilePrecision

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions


@takes_source_options()
def compile_command(
    source: Source,
    target: Annotated[str, typer.Option(help="Target profile name or .toml (see `vitedge targets`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write.")],
    precision: Annotated[Optional[CompilePrecision], typer.Option(
        help="best lets TensorRT pick per layer (default: int8 for a quantized model, else the target's).")] = None,
    batch: Annotated[Optional[str], typer.Option(
        help="Batch size (fixed) or min:opt:max, e.g. 1:8:16 (default: the target's profile).")] = None,
    dla_core: Annotated[Optional[int], typer.Option(min=0,
        help="Run on this DLA core with GPU fallback (targets with DLA).")] = None,
    build: Annotated[bool, typer.Option(
        help="Build the TensorRT engine here when this machine is the target.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    quiet: Quiet = False, verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """Prepare a model for a target: an ONNX Runtime bundle, or a TensorRT build (+ trtexec line).

    Example: vitedge compile artifacts/digits-int8 --target x86-cpu -o bundles/digits-cpu
    """
    from vitedge.compile.prepare import compile_bundle

    with user_errors(verbose):
        result = compile_bundle(source, target, out, precision=precision, batch=batch,
                                dla_core=dla_core, overwrite=overwrite, build=build,
                                options=options,
                                progress=progress_printer(quiet))
    for finding in result.findings:
        err_console.print(styled(f"{finding.severity}:", "yellow", f"{finding.message} ({finding.node})"),
                          highlight=False)
    built, settings = result.passport.built, result.settings
    console.print(f"bundle: {result.path}  target {result.passport.target.name}  precision "
                  f"{result.passport.precision}  batch {':'.join(map(str, settings.batch))}",
                  highlight=False)
    if settings.runtime == "onnxruntime":
        console.print("ONNX Runtime graph " + ("optimized offline here "
                      f"(max |diff| vs source {(built.parity_vs_source or {}).get('max_abs_diff', 0):.2g})"
                      if built.optimized_offline else f"kept as is: {built.note}"),
                      highlight=False)
    elif built.engine:
        console.print(f"TensorRT engine built: {built.engine.layers_by_precision}", highlight=False)
    else:
        console.print(f"TensorRT engine not built here: {built.not_built_because}.\n"
                      f"On the device: vitedge build {result.path}\n"
                      f"or: {settings.trtexec}", highlight=False, soft_wrap=True)


def build_command(
    bundle: Annotated[Path, typer.Argument(help="A TensorRT bundle written by vitedge compile.")],
    quiet: Quiet = False, verbose: Verbose = False,
) -> None:
    """Build a TensorRT bundle's engine on the device it targets (timing cache reused).

    Example: vitedge build bundles/digits-orin-nano
    """
    from vitedge.compile.rebuild import build_bundle

    with user_errors(verbose):
        result = build_bundle(bundle, progress=progress_printer(quiet))
    engine = result.passport.built.engine
    console.print(f"engine: {bundle}/{result.settings.engine}  TensorRT {engine.tensorrt}  "
                  f"{engine.gpu} (SM {engine.sm})  {engine.build_seconds} s  "
                  f"layers {engine.layers_by_precision}", highlight=False)
