"""Deployment commands: compile (a bundle for a target) and build (its TensorRT engine, on the device)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vitedge.card import Layout, PixelType
from vitedge.cli.shared import (
    Quiet,
    Source,
    Verbose,
    console,
    err_console,
    progress_printer,
    step_bar,
    styled,
    takes_source_options,
    user_errors,
    warn_if_busy,
)
from vitedge.formatting import precision_label
from vitedge.targets import CompilePrecision, CompileRuntime

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions


@takes_source_options()
def compile_command(
    source: Source,
    target: Annotated[str, typer.Option(help="Target profile name or .toml (see `vitedge targets`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write.")],
    precision: Annotated[Optional[CompilePrecision], typer.Option(
        help="best: TensorRT picks per layer (FP16 float layers); on OpenVINO, BF16 float layers "
             "where the CPU has BF16 and they time faster here than FP32 ones (default: int8 for a "
             "quantized model, else the target's).")] = None,
    runtime: Annotated[Optional[CompileRuntime], typer.Option(
        help="CPU targets: onnxruntime, openvino, or auto (default: build the target's runtimes, "
             "time them here and keep the fastest; on another ISA the profile's runtime).")] = None,
    batch: Annotated[Optional[str], typer.Option(
        help="Batch size (fixed) or min:opt:max, e.g. 1:8:16 (default: the target's profile).")] = None,
    dla_core: Annotated[Optional[int], typer.Option(min=0,
        help="Run on this DLA core with GPU fallback (targets with DLA).")] = None,
    build: Annotated[bool, typer.Option(
        help="Build the TensorRT engine here when this machine is the target.")] = True,
    preprocess_in_graph: Annotated[bool, typer.Option(
        help="Put the card's preprocessing in the graph: it takes raw 0..255 pixels, so Triton, "
             "DeepStream or C++ clients send frames.")] = False,
    frame_size: Annotated[Optional[str], typer.Option(
        help="With --preprocess-in-graph: the frames' fixed HEIGHTxWIDTH (e.g. 480x640); the "
             "resize and crop happen in the graph (default: the model's size, resized by the client).")] = None,
    channel_order: Annotated[str, typer.Option(
        help="With --preprocess-in-graph: the frames' channel order, RGB or BGR (OpenCV).")] = "RGB",
    input_layout: Annotated[Layout, typer.Option(
        help="With --preprocess-in-graph: NHWC (frames as cameras hold them) or NCHW.")] = Layout.NHWC,
    input_dtype: Annotated[PixelType, typer.Option(
        help="With --preprocess-in-graph: uint8, or float32 holding 0..255 (DeepStream).")] = PixelType.UINT8,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    quiet: Quiet = False, verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """Prepare a model for a target: a CPU bundle (ONNX Runtime or OpenVINO, the faster one here),
    or a TensorRT build (+ trtexec line).

    Example: vitedge compile artifacts/digits-int8 --target x86-cpu -o bundles/digits-cpu
    Raw frames: vitedge compile MODEL --target x86-cpu --preprocess-in-graph --frame-size 480x640
    --channel-order BGR -o bundles/camera
    """
    from vitedge.compile.prepare import compile_bundle

    with user_errors(verbose), step_bar(quiet, "compiling") as tick:
        result = compile_bundle(source, target, out, precision=precision, runtime=runtime, batch=batch,
                                dla_core=dla_core, overwrite=overwrite, build=build,
                                options=options, preprocess_in_graph=preprocess_in_graph,
                                frame_size=frame_size, channel_order=channel_order,
                                input_layout=input_layout, input_dtype=input_dtype,
                                progress=progress_printer(quiet), tick=tick)
    for finding in result.findings:
        err_console.print(styled(f"{finding.severity}:", "yellow", f"{finding.message} ({finding.node})"),
                          highlight=False)
    built, settings = result.passport.built, result.settings
    console.print(f"bundle: {result.path}  target {result.passport.target.name}  runtime "
                  f"{settings.runtime}  precision "
                  f"{precision_label(result.passport.precision, result.passport.int8_mac_share)}  batch "
                  f"{':'.join(map(str, settings.batch))}", highlight=False)
    if result.pixels is not None:
        console.print(f"input {settings.input.name}: {result.pixels.describe()}; "
                      "the graph normalizes (send raw frames)", highlight=False, soft_wrap=True)
    if built.runtime_choice is not None:
        console.print(f"runtime chosen by measurement ({built.runtime_choice.rounds} alternating "
                      f"rounds): {built.runtime_choice.why}", highlight=False, soft_wrap=True)
        warn_if_busy(built.runtime_choice.load, "the runtimes were timed", "the choice may not hold")
    if built.note:
        console.print(f"note: {built.note}", highlight=False, soft_wrap=True)
    if settings.runtime == "openvino":
        openvino = built.openvino
        runs = openvino.inference_precision if openvino else None
        console.print(f"OpenVINO {openvino.version if openvino else '?'} IR; float layers run "
                      + (f"{runs} (read back from OpenVINO)" if runs else
                         "as OpenVINO picks on the device within the "
                         f"{settings.openvino.precision if settings.openvino else '?'} hint"),
                      highlight=False)
    elif settings.runtime == "onnxruntime":
        console.print("ONNX Runtime graph " + ("optimized offline here "
                      f"(max |diff| vs source {(built.parity_vs_source or {}).get('max_abs_diff', 0):.2g})"
                      if built.optimized_offline else "kept as is, optimized when the session starts"),
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
