"""Watching commands: run (live camera + shadow), eval, report, capture (registered on the app)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from vitedge.cli import (
    CropPct,
    InputSize,
    Interp,
    Labels,
    Mean,
    ModelKwargs,
    Std,
    TrustPickle,
    Verbose,
    Weights,
    _load,
    app,
    console,
    err_console,
    floats,
    progress_printer,
    source_options,
    user_errors,
)
from vitedge.errors import VitedgeError

SourceOption = Annotated[str, typer.Option(
    "--source", "-s", help="Camera index (0), /dev/videoN, video file, image folder or glob, "
                           "rtsp://, http(s):// (MJPEG) or a GStreamer pipeline.")]


def _address(value: str | None) -> str | None:
    """--serve HOST:PORT, checked before any model is loaded."""
    if value is not None:
        from vitedge.errors import InputError
        from vitedge.live.serve import parse_address

        try:
            parse_address(value)
        except InputError as exc:
            raise typer.BadParameter(f"{exc.message} ({exc.hint})") from None
    return value


@app.command()
def run(
    bundle: Annotated[str, typer.Argument(help="The deployed model: a bundle (or any artifact/source).")],
    source: SourceOption,
    reference: Annotated[Optional[str], typer.Option(
        help="Full-precision model to shadow with (default: the FP32 ancestor found through the "
             "card's lineage next to the bundle).")] = None,
    shadow_every: Annotated[int, typer.Option(min=0, max=1_000_000, help="Shadow every N-th frame (0: no shadow).")] = 5,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default runs/<time>).")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many frames.")] = None,
    duration: Annotated[Optional[float], typer.Option(callback=floats(0, low_open=True), help="Stop after this many seconds.")] = None,
    loop: Annotated[bool, typer.Option(help="Repeat a video file or folder.")] = False,
    show: Annotated[bool, typer.Option(help="Show the annotated stream in a window (needs a GUI).")] = False,
    serve: Annotated[Optional[str], typer.Option(callback=_address, help="Serve a live page at HOST:PORT, e.g. 127.0.0.1:8080.")] = None,
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
    weights: Weights = None, model_kwargs: ModelKwargs = None, trust_pickle: TrustPickle = False,
    verbose: Verbose = False,
) -> None:
    """Live inference with a full-precision shadow that measures drift as it runs.

    Example: vitedge run demo-out/digits-x86 --source demo-out/digits-camera.mp4 --serve 127.0.0.1:8080
    """
    from vitedge.live.camera import FrameSource
    from vitedge.live.loop import (
        RunOptions,
        check_reference,
        check_run_output,
        thresholds_for,
    )
    from vitedge.live.loop import run as run_live
    from vitedge.models.load import options_for
    from vitedge.sessions import find_reference, load

    with user_errors(verbose):
        run_dir = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        check_run_output(run_dir, overwrite=overwrite, reads=(bundle, reference, source), record=record)
        loading = source_options(weights, model_kwargs, trust_pickle)
        deployed = load(bundle, rebuild=rebuild, **options_for(bundle, loading))
        thresholds = thresholds_for(deployed.card, min_agreement=min_agreement, max_kl=max_kl,
                                    min_cosine=min_cosine, window=window)
        shadow = None
        if shadow_every:
            if reference is None and Path(bundle).is_dir():
                found = find_reference(bundle, search=(Path.cwd(),))
                reference = str(found) if found else None
            if reference is None:
                raise VitedgeError(f"no full-precision reference found for {bundle}",
                                   "pass --reference ARTIFACT (the FP32 model), or --shadow-every 0")
            shadow = load(reference, **options_for(reference, loading))
            check_reference(deployed, shadow)
            if not quiet:
                err_console.print(Text(f"shadow reference: {reference} ({shadow.description})", style="dim"))
        frame_source = FrameSource.open(source, width=width, height=height, fps=fps, loop=loop,
                                        reconnect_s=reconnect_s)
        options = RunOptions(shadow_every=shadow_every, top_k=top_k, frames=frames, duration=duration,
                             show=show, serve=serve, record=record, window=window,
                             thresholds=thresholds, overwrite=overwrite)
        last = [time.monotonic()]

        def progress(line: dict) -> None:
            if quiet or time.monotonic() - last[0] < 2.0:
                return
            last[0] = time.monotonic()
            top = line.get("top", [[0, "?", 0]])[0]
            shown = f"feature norm {line['norm']:.2f}" if "norm" in line else f"{top[1]} {100 * top[2]:.0f}%"
            err_console.print(Text(f"frame {line['index']}: {shown}, {line.get('latency_ms', 0):.1f} ms",
                                   style="dim"))

        if serve and not quiet:
            err_console.print(f"serving on http://{serve}/ (Ctrl-C stops and writes the summary)")
        summary = run_live(deployed, frame_source, run_dir, reference=shadow, options=options,
                           on_frame=progress)
        if report:
            from vitedge.report import build_report

            build_report(run_dir, run_dir / "report.html")
    drift = summary["drift"]
    counts = summary["frames"]
    latency = summary["deployed"]["latency_ms"]
    console.print(f"{summary['stop_reason']}: {counts['logged']} frames ({counts['dropped']} dropped, "
                  f"{counts['corrupt']} corrupt) at {summary['fps']:.1f} FPS; inference p50 "
                  f"{latency['p50_ms'] or 0:.2f} ms, loop overhead p50 "
                  f"{summary['loop_overhead_ms']['p50'] or 0:.2f} ms", highlight=False)
    if summary["shadow"]:
        agreement = drift["top1_agreement"]
        closeness = ((f"cosine {drift['cosine']:.4f}, relative error {drift['rel_error']:.4f}"
                      if drift["cosine"] is not None else "cosine —") if drift["features"] else
                     "agreement " + (f"{100 * agreement:.2f}%" if agreement is not None else "—")
                     + (f", KL {drift['kl']:.4f}" if drift["kl"] is not None else ""))
        console.print(f"drift: {drift['verdict']} — {drift['samples']} shadowed frames, {closeness}"
                      + f"; {summary['shadow']['skipped_reference_behind']} skipped (reference behind)",
                      highlight=False)
    console.print(f"run: {run_dir}" + (f"  report: {run_dir / 'report.html'}" if report else ""),
                  highlight=False)
    if fail_on_drift and (summary["alerts"] or drift["verdict"] == "drift"):
        raise typer.Exit(2)


@app.command("eval")
def eval_command(
    models: Annotated[list[str], typer.Argument(help="Artifacts, bundles or sources; the first is the reference.")],
    data: Annotated[str, typer.Option(help="Labeled ImageFolder (top-1/top-5) or unlabeled images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Eval directory to write.")],
    samples: Annotated[Optional[int], typer.Option(min=1, help="Seeded subset of the data.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
    weights: Weights = None, model_kwargs: ModelKwargs = None, trust_pickle: TrustPickle = False,
    verbose: Verbose = False,
) -> None:
    """Top-1/top-5 per model and agreement, KL, cosine, per-class deltas against the first.

    Example: vitedge eval demo-out/digits-onnx demo-out/digits-x86 --data calibration/digits/heldout -o demo-out/eval
    """
    from vitedge.evaluate import evaluate

    with user_errors(verbose):
        result = evaluate(models, data, out, samples=samples, overwrite=overwrite,
                          load_options=source_options(weights, model_kwargs, trust_pickle))
    features = result.get("features")
    for row in result["models"]:
        vs = row.get("vs_first")
        what = ("features" if features else f"top-1 {100 * row['top1']:.2f}%, top-5 {100 * row['top5']:.2f}%"
                if "top1" in row else "unlabeled")
        if not vs:
            versus = " (reference)"
        elif features:
            versus = (f"; vs first: cosine {vs['cosine']:.4f} (worst {vs['min_cosine']:.4f}), relative error "
                      f"{vs['rel_error']:.4f} ({vs['verdict']})")
        else:
            versus = f"; vs first: agreement {100 * vs['top1_agreement']:.2f}%, KL {vs['kl']:.4f} ({vs['verdict']})"
        console.print(f"{row['model']}: {what}{versus}")
    console.print(f"eval: {out} ({result['samples']} images); vitedge report {out} -o report.html",
                  highlight=False)


@app.command("report")
def report_command(
    directory: Annotated[Path, typer.Argument(
        help="A run directory (vitedge run), eval directory (vitedge eval) or pruned artifact (vitedge prune).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default DIR/report.html).")] = None,
    verbose: Verbose = False,
) -> None:
    """One self-contained HTML report (plots embedded), plus Markdown and JSON beside it.

    Example: vitedge report runs/20261124-120000 -o report.html
    """
    from vitedge.report import build_report

    with user_errors(verbose):
        if not directory.is_dir():
            raise VitedgeError(f"{directory} is not a directory", "pass a run or eval directory, or a pruned artifact")
        target = out or directory / "report.html"
        data = build_report(directory, target)
    if data["kind"] == "run":
        drift = data["summary"]["drift"]
        console.print(f"drift {drift['verdict']}: {drift['samples']} shadowed frames"
                      + (f", agreement {100 * drift['top1_agreement']:.2f}%" if drift["top1_agreement"] is not None else ""),
                      highlight=False)
    console.print(f"report: {target} (+ {target.with_suffix('.md').name}, {target.with_suffix('.json').name})",
                  highlight=False)


@app.command()
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


@app.command()
def prune(
    source: Annotated[str, typer.Argument(help="A ViT: timm:NAME -w CKPT, torchvision:NAME -w CKPT, a Hugging Face ViT/DeiT folder, builtin:digits-vit.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
    heads: Annotated[float, typer.Option(callback=floats(0, 1, high_open=True), help="Share of attention heads to remove per block.")] = 0.0,
    mlp: Annotated[float, typer.Option(callback=floats(0, 1, high_open=True), help="Share of MLP hidden units to remove.")] = 0.0,
    embed: Annotated[float, typer.Option(callback=floats(0, 1, high_open=True), help="Share of the embedding width to remove.")] = 0.0,
    target_macs: Annotated[Optional[float], typer.Option(callback=floats(0, 1, low_open=True, high_open=True),
        help="Instead of ratios: keep this share of MACs (heads and MLP pruned equally).")] = None,
    importance: Annotated[Optional[str], typer.Option(
        help="taylor (needs --data) | l2 (default without --data).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Unlabeled (or labeled) images for importance, distillation and metrics.")] = None,
    distill_steps: Annotated[int, typer.Option(min=0, max=10_000_000, help="Distillation steps from the original after pruning.")] = 0,
    tome: Annotated[int, typer.Option(min=0, help="Token merging: tokens merged per block (training-free).")] = 0,
    tome_from: Annotated[Optional[int], typer.Option(min=0,
        help="First block that merges (from 0; default: a sixth of the depth, 2 of 12).")] = None,
    round_to: Annotated[int, typer.Option(min=1, help="Round kept widths to a multiple of this.")] = 8,
    allocation: Annotated[str, typer.Option(
        help="uniform: every block loses the same share; global: heads and MLP units ranked across blocks (timm).")] = "uniform",
    samples: Annotated[Optional[int], typer.Option(min=1, help="Use a seeded subset of --data.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=65_536, help="Distillation batch size.")] = 32,
    lr: Annotated[float, typer.Option(callback=floats(0, 10, low_open=True), help="Distillation peak learning rate.")] = 5e-4,
    distill_features: Annotated[float, typer.Option(callback=floats(0, 1e6),
        help="Weight of a token-feature term (MSE of the final-norm tokens) next to the logit KL; 0 = logits only.")] = 0.0,
    weights: Weights = None, model_kwargs: ModelKwargs = None, trust_pickle: TrustPickle = False,
    mean: Mean = None, std: Std = None, crop_pct: CropPct = None, interpolation: Interp = None,
    input_size: InputSize = None, labels: Labels = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print the result.")] = False,
    verbose: Verbose = False,
) -> None:
    """Structured pruning (heads, MLP, embedding) with distillation, and/or token merging.

    Example: vitedge prune builtin:digits-vit --heads 0.5 --mlp 0.75 --data calibration/digits/train
    --distill-steps 600 -o demo-out/digits-pruned
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from vitedge.prune.pipeline import prune as run_prune
    from vitedge.prune.structured import PruneRatios
    from vitedge.report import PRUNE_STAGES

    say = progress_printer(quiet)
    with user_errors(verbose), Progress(TextColumn("distilling"), BarColumn(), TextColumn("{task.description}"),
                                        TimeRemainingColumn(), console=err_console, disable=quiet,
                                        transient=True) as bar:
        task = bar.add_task("", total=max(distill_steps, 1))

        def tick(step: int, total: int, agreement: float | None) -> None:
            bar.update(task, completed=step, description=f"agreement {100 * (agreement or 0):.1f}%")

        ratios = PruneRatios(heads=heads, mlp=mlp, embed=embed)
        ratios.check()
        loaded = _load(source, weights, model_kwargs, trust_pickle, mean, std, crop_pct, interpolation,
                       input_size, labels)
        metrics = run_prune(loaded, out, ratios=ratios, target_macs=target_macs, importance=importance,
                            data=data, distill_steps=distill_steps, tome=tome, tome_from=tome_from,
                            round_to=round_to, allocation=allocation,
                            samples=samples, batch_size=batch_size, lr=lr, distill_features=distill_features,
                            overwrite=overwrite,
                            progress=say, tick=tick)
    lines = [f"MACs {metrics['macs_before'] / 1e6:.1f} M -> {metrics['macs_after'] / 1e6:.1f} M "
             f"({100 * metrics['mac_share']:.0f}%), parameters {metrics['params_before'] / 1e6:.2f} M -> "
             f"{metrics['params_after'] / 1e6:.2f} M"]
    if "structure" in metrics:
        after = metrics["structure"]["after"]
        lines.append(f"kept: embed {after['embed_dim']}, heads per block {after['num_heads']}, "
                     f"MLP widths {after['mlp_hidden']}")
    for key, title in PRUNE_STAGES:
        if key in metrics:
            m = metrics[key]
            closeness = (f"feature cosine {m['cosine']:.4f}, relative error {m['rel_error']:.4f}"
                         if m.get("features") else f"agreement {100 * m['top1_agreement']:.2f}%")
            lines.append(f"{title}: {closeness} on {m['samples']} held-out"
                         + (f", top-1 {100 * m['top1_original']:.2f}% -> {100 * m['top1_pruned']:.2f}%"
                            if "top1_pruned" in m else ""))
    if "tome" in metrics:
        info = metrics["tome"]
        lines.append(f"token merging: {info['tokens_in']} -> {info['tokens_out']} tokens ({info['schedule']})")
    console.print("\n".join(lines) + f"\nwrote {out}", highlight=False)
