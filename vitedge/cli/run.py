"""Watching commands: run (live inference with a full-precision shadow) and capture (frames to
a folder, for calibration or evaluation)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.text import Text

from vitedge.cli.shared import (
    Verbose,
    console,
    err_console,
    floats,
    progress_printer,
    takes_source_options,
    user_errors,
)

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions
    from vitedge.schemas.results import RunSummary

SourceOption = Annotated[list[str], typer.Option(
    "--source", "-s", help="Camera index (0), /dev/videoN, video file, image folder or glob, "
                           "rtsp://, http(s):// (MJPEG) or a GStreamer pipeline. Repeat it to run several "
                           "streams on the one model, batched together (RUN_DIR/streamK/ per stream).")]


def _address(context: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """--serve / --metrics HOST:PORT, checked before any model is loaded."""
    if value is not None:
        from vitedge.cli.shared import print_warnings
        from vitedge.errors import InputError
        from vitedge.live.serve import exposure, parse_address

        try:
            parse_address(value, f"--{param.name}")
        except InputError as exc:
            raise typer.BadParameter(f"{exc.message} ({exc.hint})") from None
        warning = exposure(value) if param.name == "serve" else None  # /metrics alone shows no frames
        if warning:
            print_warnings([warning])
    return value


@takes_source_options(preprocessing=False)
def run(
    bundle: Annotated[str, typer.Argument(help="The deployed model: a bundle (or any artifact/source).")],
    source: SourceOption,
    reference: Annotated[Optional[str], typer.Option(
        help="Full-precision model to shadow with (default: the FP32 ancestor found through the "
             "card's lineage: where it was at compile time, checked by hash, or beside the bundle).")] = None,
    shadow_every: Annotated[int, typer.Option(min=0, max=1_000_000, help="Shadow every N-th frame (0: no shadow).")] = 5,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default runs/<time>).")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many frames.")] = None,
    duration: Annotated[Optional[float], typer.Option(callback=floats(0, low_open=True), help="Stop after this many seconds.")] = None,
    loop: Annotated[bool, typer.Option(help="Repeat a video file or folder.")] = False,
    show: Annotated[bool, typer.Option(help="Show the annotated stream in a window (needs a GUI).")] = False,
    serve: Annotated[Optional[str], typer.Option(callback=_address, help="Serve a live page at HOST:PORT, e.g. 127.0.0.1:8080 (with Prometheus /metrics).")] = None,
    metrics: Annotated[Optional[str], typer.Option(callback=_address, help="Serve only Prometheus /metrics at HOST:PORT (headless devices).")] = None,
    record: Annotated[Optional[Path], typer.Option(help="Write the annotated stream to this .mp4.")] = None,
    width: Annotated[Optional[int], typer.Option(min=1, max=16384, help="Camera width to request.")] = None,
    height: Annotated[Optional[int], typer.Option(min=1, max=16384, help="Camera height to request.")] = None,
    fps: Annotated[Optional[float], typer.Option(callback=floats(0, 1000, low_open=True), help="Camera frame rate to request.")] = None,
    reconnect_s: Annotated[float, typer.Option(callback=floats(0, 86_400), help="Keep reconnecting a lost stream this long.")] = 10.0,
    min_agreement: Annotated[Optional[float], typer.Option(
        callback=floats(0, 1), help="Classifiers: alert below this rolling top-1 agreement (default 0.95).")] = None,
    max_kl: Annotated[Optional[float], typer.Option(callback=floats(0), help="Classifiers: alert above this rolling KL.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(
        callback=floats(-1, 1), help="Feature extractors: alert below this rolling cosine (default 0.99).")] = None,
    window: Annotated[int, typer.Option(min=1, max=100_000, help="Shadowed frames in the rolling metrics.")] = 50,
    fail_on_drift: Annotated[bool, typer.Option(help="Exit 2 when drift was detected.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes per frame.")] = 5,
    report: Annotated[bool, typer.Option(help="Write report.html into the run directory at the end.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    rebuild: Annotated[bool, typer.Option(help="Rebuild a bundle whose passport does not match.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print the summary.")] = False,
    verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """Live inference with a full-precision shadow that measures drift as it runs.

    Example: vitedge run demo-out/digits-x86 --source demo-out/digits-camera.mp4 --serve 127.0.0.1:8080

    Several cameras: vitedge run BUNDLE --source 0 --source rtsp://cam2/live -o runs/yard
    """
    from vitedge.live.options import RunOptions
    from vitedge.live.watch import CameraOptions, default_run_dir
    from vitedge.live.watch import run as run_live

    last = [time.monotonic()]

    def progress(line: dict) -> None:
        if quiet or time.monotonic() - last[0] < 2.0:
            return
        last[0] = time.monotonic()
        top = line.get("top", [[0, "?", 0]])[0]
        shown = f"feature norm {line['norm']:.2f}" if "norm" in line else f"{top[1]} {100 * top[2]:.0f}%"
        stream = f"stream {line['stream']} " if "stream" in line else ""
        err_console.print(Text(f"{stream}frame {line['index']}: {shown}, {line.get('latency_ms', 0):.1f} ms",
                               style="dim"))

    run_dir = out or default_run_dir()
    with user_errors(verbose):
        summary = run_live(
            bundle, source, run_dir, reference=reference, rebuild=rebuild, report=report,
            options=RunOptions(shadow_every=shadow_every, top_k=top_k, frames=frames, duration=duration,
                               show=show, serve=serve, metrics=metrics, record=record, window=window,
                               min_agreement=min_agreement, max_kl=max_kl, min_cosine=min_cosine,
                               overwrite=overwrite),
            camera=CameraOptions(width=width, height=height, fps=fps, loop=loop, reconnect_s=reconnect_s),
            source_options=options,
            on_frame=progress, progress=progress_printer(quiet))
    from vitedge.report.runs import read_run
    from vitedge.schemas.results import MultiRunSummary

    if isinstance(summary, MultiRunSummary):
        batching = summary.batching
        console.print(f"{summary.stop_reason}: {summary.frames.logged} frames from {len(summary.streams)} "
                      f"streams at {summary.fps or 0:.1f} FPS together; {batching.calls} model calls, "
                      f"{batching.mean_batch or 0:.2f} frames per call (batch profile up to "
                      f"{batching.max_batch or '?'})", highlight=False)
        for entry in summary.streams:
            _print_stream(read_run(run_dir / entry.dir), f"  [{entry.dir}] {entry.source}: ")
    else:
        _print_stream(summary, "")
    console.print(f"run: {run_dir}" + (f"  report: {run_dir / 'report.html'}" if report else ""),
                  highlight=False)
    verdicts = [e.verdict for e in summary.streams] if isinstance(summary, MultiRunSummary) else \
        [summary.drift.verdict]
    if fail_on_drift and (summary.alerts or "drift" in verdicts):
        raise typer.Exit(2)


def _print_stream(summary: RunSummary, prefix: str) -> None:
    drift, counts, latency = summary.drift, summary.frames, summary.deployed.latency_ms
    console.print(f"{prefix}{summary.stop_reason}: {counts.logged} frames ({counts.dropped} dropped, "
                  f"{counts.corrupt} corrupt) at {summary.fps or 0:.1f} FPS; inference p50 "
                  f"{latency.p50_ms or 0:.2f} ms, loop overhead p50 "
                  f"{summary.loop_overhead_ms.p50 or 0:.2f} ms", highlight=False)
    if summary.shadow:
        agreement = drift.top1_agreement
        closeness = ((f"cosine {drift.cosine:.4f}, relative error {drift.rel_error:.4f}"
                      if drift.cosine is not None else "cosine —") if drift.features else
                     "agreement " + (f"{100 * agreement:.2f}%" if agreement is not None else "—")
                     + (f", KL {drift.kl:.4f}" if drift.kl is not None else ""))
        console.print(f"{prefix}drift: {drift.verdict} — {drift.samples} shadowed frames, {closeness}"
                      + f"; {summary.shadow.skipped_reference_behind} skipped (reference behind)",
                      highlight=False)


def capture(
    source: Annotated[str, typer.Argument(help="Any source vitedge run takes.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image folder to write.")],
    count: Annotated[int, typer.Option("-n", min=1, max=1_000_000, help="Frames to keep.")] = 300,
    every: Annotated[float, typer.Option(callback=floats(0, 86_400), help="Live sources: seconds between kept frames.")] = 0.2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    verbose: Verbose = False,
) -> None:
    """Save evenly spaced frames as an image folder for calibration or evaluation.

    Example: vitedge capture 0 -n 300 -o calib/my-camera
    """
    from vitedge.live.capture import capture as run_capture

    with user_errors(verbose):
        summary = run_capture(source, count, out, every_s=every, overwrite=overwrite)
    b, s = summary["brightness"], summary["sharpness"]
    console.print(f"kept {summary['kept']} frames in {out} ({summary['near_duplicates_dropped']} "
                  f"near-duplicates dropped, {summary['unreadable']} unreadable); brightness "
                  f"{b['min']:.0f}/{b['median']:.0f}/{b['max']:.0f}, sharpness {s['min']:.0f}/"
                  f"{s['median']:.0f}/{s['max']:.0f} (min/median/max)", highlight=False)
