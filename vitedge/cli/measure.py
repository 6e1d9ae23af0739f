"""Measuring commands: predict (per image), bench (latency across formats), eval (accuracy and
drift against a reference), report (HTML of a run, an eval or a pruned artifact)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from vitedge.cli.shared import (
    Verbose,
    console,
    live_progress,
    print_table,
    takes_source_options,
    user_errors,
    warn_if_busy,
)
from vitedge.formatting import number, percent, precision_label
from vitedge.targets import Backend

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions

Rebuild = Annotated[bool, typer.Option(
    "--rebuild", help="Rebuild a bundle whose passport does not match this machine, instead of refusing.")]
BackendOption = Annotated[Optional[Backend], typer.Option(
    "--backend", help="Force a backend: onnxruntime runs a TensorRT bundle's ONNX on CPU (a check, not the "
               "engine); openvino runs an ONNX graph (or a bundle's plain ONNX) on OpenVINO's CPU plugin in FP32.")]


@takes_source_options()
def predict(
    model: Annotated[str, typer.Argument(help="Bundle, artifact or model source.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to show per image.")] = 5,
    rebuild: Rebuild = False, backend: BackendOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """Top-k labels and confidences per image, with per-image latency.

    Example: vitedge predict bundles/digits-cpu vitedge/assets/samples
    """
    from vitedge.bench import predict as run_predict

    with user_errors(verbose):
        result = run_predict(
            model, images, top_k, rebuild=rebuild, backend=backend,
            options=options)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    predictions, skipped = result.predictions, result.skipped
    table = Table(title=f"{model} — {result.backend}, {result.precision}")
    if predictions and predictions[0].embedding is not None:  # a feature extractor: no labels
        for column in ("image", "features", "norm", "mean", "std", "first values", "ms"):
            table.add_column(column, justify="left" if column in ("image", "first values") else "right")
        for p in predictions:
            e = p.embedding or {}
            table.add_row(Path(p.path).name, str(e["size"]), f"{e['norm']:.3f}", f"{e['mean']:.4f}",
                          f"{e['std']:.4f}", ", ".join(f"{v:.3f}" for v in e["first"]), f"{p.latency_ms:.2f}")
    else:
        for column in ("image", "top-1", "confidence", f"top-{top_k}" if top_k > 1 else "", "ms"):
            if column:
                table.add_column(column, justify="right" if column in ("confidence", "ms") else "left")
        for p in predictions:
            best = p.top[0]
            row = [Path(p.path).name, best["label"], f"{100 * best['probability']:.1f}%"]
            if top_k > 1:
                row.append(", ".join(f"{t['label']} {100 * t['probability']:.0f}%" for t in p.top[1:]))
            table.add_row(*row, f"{p.latency_ms:.2f}")
    print_table(table)
    summary = result.latency_ms
    console.print(f"{len(predictions)} image(s), latency p50 {summary['p50_ms']:.2f} ms, p95 "
                  f"{summary['p95_ms']:.2f} ms (batch 1, host to host)"
                  + (f"; {len(skipped)} unreadable skipped" if skipped else ""), highlight=False)


@takes_source_options(preprocessing=False)
def bench(
    models: Annotated[list[str], typer.Argument(
        help="Bundles, artifacts or sources; the first is the reference for agreement.")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated, e.g. 1,8.")] = "1",
    data: Annotated[Optional[str], typer.Option(
        help="Images for top-1 (labeled ImageFolder) and agreement with the first model.")] = None,
    samples: Annotated[Optional[int], typer.Option(min=1, help="Use a seeded subset of --data.")] = None,
    runs: Annotated[int, typer.Option(min=1, max=1_000_000, help="Timed runs per batch size.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, max=1_000_000, help="Untimed runs first.")] = 5,
    rebuild: Rebuild = False, backend: BackendOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the table to this JSON file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON instead.")] = False,
    verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """Latency p50/p95, throughput, size, top-1 and agreement across formats, side by side.

    Example: vitedge bench builtin:digits-vit artifacts/digits-int8 bundles/digits-cpu --batch 1,8
    --data calibration/digits/heldout
    """
    from vitedge.bench import bench as run_bench

    with user_errors(verbose), live_progress(as_json) as progress:
        result = run_bench(models, batches=batch, data=data, samples=samples, runs=runs,
                           warmup=warmup, rebuild=rebuild, backend=backend, json_out=out,
                           options=options, progress=progress)
    warn_if_busy(result.load, "timing")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    table = Table(title="vitedge bench" + (f" — {result.rows[0].samples} images from {data}"
                                           if data and result.rows else ""))
    for column in ("model", "backend", "precision", "size MiB", "batch", "p50 ms", "p95 ms",
                   "img/s", "top-1", "agreement", "cosine", "status"):
        table.add_column(column, justify="left" if column in ("model", "backend", "status") else "right")

    for row in result.rows:
        table.add_row(row.name, row.backend, precision_label(row.precision, row.int8_mac_share),
                      number(row.size_mib, 2), str(row.batch),
                      number(row.p50_ms, 2), number(row.p95_ms, 2), number(row.images_per_s, 0), percent(row.top1),
                      percent(row.agreement), number(row.cosine, 4), row.status)
    print_table(table)


@takes_source_options(preprocessing=False)
def eval_command(
    models: Annotated[list[str], typer.Argument(help="Artifacts, bundles or sources; the first is the reference.")],
    data: Annotated[str, typer.Option(help="Labeled ImageFolder (top-1/top-5) or unlabeled images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Eval directory to write.")],
    samples: Annotated[Optional[int], typer.Option(min=1, help="Seeded subset of the data.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
    verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """Top-1/top-5 per model and agreement, KL, cosine, per-class deltas against the first.

    Example: vitedge eval demo-out/digits-onnx demo-out/digits-x86 --data calibration/digits/heldout -o demo-out/eval
    """
    from vitedge.evaluate import evaluate

    with user_errors(verbose):
        result = evaluate(models, data, out, samples=samples, overwrite=overwrite,
                          options=options)
    for row in result.models:
        vs = row.vs_first
        what = ("features" if result.features else f"top-1 {100 * row.top1:.2f}%, top-5 {100 * (row.top5 or 0):.2f}%"
                if row.top1 is not None else "unlabeled")
        if not vs:
            versus = " (reference)"
        elif result.features:
            versus = (f"; vs first: cosine {vs.cosine:.4f} (worst {vs.min_cosine:.4f}), relative error "
                      f"{vs.rel_error:.4f} ({vs.verdict})")
        else:
            versus = f"; vs first: agreement {100 * (vs.top1_agreement or 0):.2f}%, KL {vs.kl:.4f} ({vs.verdict})"
        console.print(f"{row.model}: {what}{versus}")
    console.print(f"eval: {out} ({result.samples} images); vitedge report {out} -o report.html",
                  highlight=False)


def report_command(
    directories: Annotated[list[str], typer.Argument(
        help="A run directory (vitedge run), eval directory (vitedge eval), optimize folder (vitedge optimize), "
             "pruned or quantized artifact (vitedge prune, quantize); several run directories or a quoted glob "
             "of them: the fleet report.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default DIR/report.html for one folder).")] = None,
    verbose: Verbose = False,
) -> None:
    """One self-contained HTML report (plots embedded), plus Markdown and JSON beside it.

    Example: vitedge report runs/20261124-120000 -o report.html

    Fleet: vitedge report 'fleet/*/runs/*' -o fleet.html  (every stream side by side, worst first)

    Quantization: vitedge report demo-out/digits-int8 -o int8.html  (each layer by its module name)
    """
    from vitedge.errors import InputError
    from vitedge.report.write import write_report

    with user_errors(verbose):
        if out is None and len(directories) != 1:
            raise InputError(f"{len(directories)} folders make one fleet report: say where it goes",
                             "add -o fleet.html")
        target = out or Path(directories[0]) / "report.html"
        data = write_report(directories if len(directories) != 1 else directories[0], target)
    if data["kind"] == "run":
        drift = data["summary"]["drift"]
        console.print(f"drift {drift['verdict']}: {drift['samples']} shadowed frames"
                      + (f", agreement {100 * drift['top1_agreement']:.2f}%" if drift["top1_agreement"] is not None else ""),
                      highlight=False)
    if data["kind"] == "fleet":
        streams = data["streams"]
        console.print(f"{len(streams)} streams, {sum(s['verdict'] == 'drift' for s in streams)} drifting; worst: "
                      f"{streams[0]['device']} {streams[0]['source']} ({streams[0]['verdict']})"
                      + (f"; left out: {len(data['left_out'])} (see the report)" if data["left_out"] else ""),
                      highlight=False)
    console.print(f"report: {target} (+ {target.with_suffix('.md').name}, {target.with_suffix('.json').name})",
                  highlight=False)
