"""Deployment commands: targets, compile, build, predict, bench, doctor (registered on the main app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vitedge.cli import (
    CropPct,
    InputSize,
    Interp,
    Labels,
    Mean,
    ModelKwargs,
    Source,
    Std,
    TrustPickle,
    Verbose,
    Weights,
    _load,
    app,
    console,
    err_console,
    progress_printer,
    source_options,
    styled,
    user_errors,
)
from vitedge.errors import VitedgeError

Rebuild = Annotated[bool, typer.Option(
    "--rebuild", help="Rebuild a bundle whose passport does not match this machine, instead of refusing.")]
Backend = Annotated[Optional[str], typer.Option(
    help="Force a backend: onnxruntime runs a TensorRT bundle's ONNX on CPU (a check, not the engine).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only print the result.")]


def _print_table(table: Table) -> None:
    """Full-width tables when output is piped or logged (rich assumes 80 columns there)."""
    (console if console.is_terminal else Console(width=200, markup=False, highlight=False)).print(table)


@app.command("compile")
def compile_command(
    source: Source,
    target: Annotated[str, typer.Option(help="Target profile name or .toml (see `vitedge targets`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write.")],
    precision: Annotated[Optional[str], typer.Option(
        help="fp32 | fp16 | int8 | best (default: int8 for a quantized model, else the target's).")] = None,
    batch: Annotated[Optional[str], typer.Option(
        help="Batch size (fixed) or min:opt:max, e.g. 1:8:16 (default: the target's profile).")] = None,
    dla_core: Annotated[Optional[int], typer.Option(min=0,
        help="Run on this DLA core with GPU fallback (targets with DLA).")] = None,
    build: Annotated[bool, typer.Option(
        help="Build the TensorRT engine here when this machine is the target.")] = True,
    weights: Weights = None, model_kwargs: ModelKwargs = None, trust_pickle: TrustPickle = False,
    mean: Mean = None, std: Std = None, crop_pct: CropPct = None, interpolation: Interp = None,
    input_size: InputSize = None, labels: Labels = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    quiet: Quiet = False, verbose: Verbose = False,
) -> None:
    """Prepare a model for a target: an ONNX Runtime bundle, or a TensorRT build (+ trtexec line).

    Example: vitedge compile artifacts/digits-int8 --target x86-cpu -o bundles/digits-cpu
    """
    from vitedge.compile.prepare import CompilePrecision, compile_bundle
    from vitedge.targets import load_target

    with user_errors(verbose):
        chosen = None
        if precision is not None:
            try:
                chosen = CompilePrecision(precision)
            except ValueError:
                raise VitedgeError(f"--precision {precision!r} is not one of "
                                   f"{', '.join(p.value for p in CompilePrecision)}") from None
        profile = load_target(target)  # an unknown target fails before the model is loaded
        loaded = _load(source, weights, model_kwargs, trust_pickle, mean, std, crop_pct,
                       interpolation, input_size, labels)
        result = compile_bundle(loaded, profile, out, precision=chosen, batch=batch,
                                dla_core=dla_core, overwrite=overwrite, build=build,
                                source_label=source, progress=progress_printer(quiet))
    for finding in result.findings:
        err_console.print(styled(f"{finding.severity}:", "yellow", f"{finding.message} ({finding.node})"),
                          highlight=False)
    built = result.passport["built"]
    console.print(f"bundle: {result.path}  target {profile.name}  precision "
                  f"{result.passport['precision']}  batch {':'.join(map(str, result.bundle['batch']))}",
                  highlight=False)
    if result.bundle["runtime"] == "onnxruntime":
        console.print("ONNX Runtime graph " + ("optimized offline here "
                      f"(max |diff| vs source {built['parity_vs_source']['max_abs_diff']:.2g})"
                      if built["optimized_offline"] else f"kept as is: {built['note']}"),
                      highlight=False)
    elif built.get("engine"):
        console.print(f"TensorRT engine built: {built['engine']['layers_by_precision']}", highlight=False)
    else:
        console.print(f"TensorRT engine not built here: {built['not_built_because']}.\n"
                      f"On the device: vitedge build {result.path}\n"
                      f"or: {result.bundle['trtexec']}", highlight=False, soft_wrap=True)


@app.command("build")
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
    engine = result.passport["built"]["engine"]
    console.print(f"engine: {bundle}/{result.bundle['engine']}  TensorRT {engine['tensorrt']}  "
                  f"{engine['gpu']} (SM {engine['sm']})  {engine['build_seconds']} s  "
                  f"layers {engine['layers_by_precision']}", highlight=False)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Bundle, artifact or model source.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to show per image.")] = 5,
    rebuild: Rebuild = False, backend: Backend = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    weights: Weights = None, model_kwargs: ModelKwargs = None, trust_pickle: TrustPickle = False,
    mean: Mean = None, std: Std = None, crop_pct: CropPct = None, interpolation: Interp = None,
    input_size: InputSize = None, labels: Labels = None,
    verbose: Verbose = False,
) -> None:
    """Top-k labels and confidences per image, with per-image latency.

    Example: vitedge predict bundles/digits-cpu vitedge/assets/samples
    """
    from vitedge.bench import predict as run_predict
    from vitedge.sessions import load

    with user_errors(verbose):
        session = load(model, rebuild=rebuild, backend=backend,
                       **source_options(weights, model_kwargs, trust_pickle, mean, std, crop_pct,
                                        interpolation, input_size, labels))
        with session:
            predictions, skipped = run_predict(session, images, top_k)
    if as_json:
        console.print_json(json.dumps({"model": model, "backend": session.description,
                                       "skipped": skipped,
                                       "predictions": [p.__dict__ for p in predictions]}))
        return
    table = Table(title=f"{model} — {session.description}, {session.precision}")
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
    _print_table(table)
    summary = session.timing.summary()
    console.print(f"{len(predictions)} image(s), latency p50 {summary['p50_ms']:.2f} ms, p95 "
                  f"{summary['p95_ms']:.2f} ms (batch 1, host to host)"
                  + (f"; {len(skipped)} unreadable skipped" if skipped else ""), highlight=False)


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(
        help="Bundles, artifacts or sources; the first is the reference for agreement.")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated, e.g. 1,8.")] = "1",
    data: Annotated[Optional[str], typer.Option(
        help="Images for top-1 (labeled ImageFolder) and agreement with the first model.")] = None,
    samples: Annotated[Optional[int], typer.Option(min=1, help="Use a seeded subset of --data.")] = None,
    runs: Annotated[int, typer.Option(min=1, max=1_000_000, help="Timed runs per batch size.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, max=1_000_000, help="Untimed runs first.")] = 5,
    rebuild: Rebuild = False, backend: Backend = None,
    as_json: Annotated[Optional[Path], typer.Option("--json", help="Also write the table as JSON.")] = None,
    weights: Weights = None, model_kwargs: ModelKwargs = None, trust_pickle: TrustPickle = False,
    verbose: Verbose = False,
) -> None:
    """Latency p50/p95, throughput, size, top-1 and agreement across formats, side by side.

    Example: vitedge bench builtin:digits-vit artifacts/digits-int8 bundles/digits-cpu --batch 1,8
    --data calibration/digits/heldout
    """
    from vitedge.bench import bench as run_bench

    with user_errors(verbose):
        try:
            batches = tuple(int(b) for b in batch.split(","))
        except ValueError:
            raise VitedgeError(f"--batch {batch!r} is not a comma-separated list of integers",
                               "e.g. --batch 1,8") from None
        result = run_bench(models, batches=batches, data=data, samples=samples, runs=runs,
                           warmup=warmup, rebuild=rebuild, backend=backend, json_out=as_json,
                           load_options=source_options(weights, model_kwargs, trust_pickle))
    table = Table(title="vitedge bench" + (f" — {result.rows[0].samples} images from {data}"
                                           if data and result.rows else ""))
    for column in ("model", "backend", "precision", "size MiB", "batch", "p50 ms", "p95 ms",
                   "img/s", "top-1", "agreement", "cosine", "status"):
        table.add_column(column, justify="left" if column in ("model", "backend", "status") else "right")

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.2f}%"

    def num(value: float | None, digits: int = 2) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    for row in result.rows:
        table.add_row(row.name, row.backend, row.precision, num(row.size_mib), str(row.batch),
                      num(row.p50_ms), num(row.p95_ms), num(row.images_per_s, 0), pct(row.top1),
                      pct(row.agreement), num(row.cosine, 4), row.status)
    _print_table(table)



targets_app = typer.Typer(help="Device profiles (targets/*.toml): list them, or show one.",
                          no_args_is_help=False)
app.add_typer(targets_app, name="targets")


@targets_app.callback(invoke_without_command=True)
def targets_list(ctx: typer.Context) -> None:
    """List the shipped device profiles."""
    if ctx.invoked_subcommand is not None:
        return
    from vitedge.targets import list_targets

    with user_errors():
        profiles = list_targets()
    table = Table()
    for column in ("target", "runtime", "GPU SM / ISA", "precisions (default)", "INT8", "DLA",
                   "software"):
        table.add_column(column, no_wrap=column in ("target", "runtime"))
    for t in profiles:
        software = ", ".join(f"{k} {v}" for k, v in (("JetPack", t.jetpack), ("TensorRT", t.tensorrt))
                             if v) or "-"
        table.add_row(t.name, str(t.runtime), t.compute_capability or t.isa or "-",
                      ", ".join(map(str, t.precisions)) + f" ({t.default_precision})",
                      str(t.int8_scheme), str(t.dla_cores), software)
    _print_table(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Profile name or path to a .toml.")],
                 as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Print one profile, resolved and validated."""
    from vitedge.targets import load_target

    with user_errors():
        target = load_target(name)
    data = target.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in data.items():
        if value not in (None, ""):
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Versions, execution providers, GPU and CPU features that decide what runs fast here."""
    from vitedge.versions import doctor as collect

    report = collect()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("vitedge", report.vitedge)
    table.add_row("python", f"{report.python} on {report.platform}")
    for name, version in report.packages.items():
        table.add_row(name, version or Text("not installed", style="dim"))
    table.add_row("onnxruntime providers", ", ".join(report.onnxruntime_providers))
    cuda = report.cuda
    table.add_row("CUDA", f"{cuda['device']} (SM {cuda['sm']}, {cuda['memory_gib']} GiB), "
                          f"torch CUDA {cuda['torch_cuda']}" if cuda.get("available")
                  else f"no GPU visible (torch CUDA build: {cuda.get('torch_cuda') or 'none'})")
    trt = report.tensorrt
    table.add_row("TensorRT", trt["version"] if trt.get("available") else f"not importable ({trt['error']})")
    cpu = report.cpu
    table.add_row("CPU", f"{cpu['name']} ({cpu['machine']}, {cpu['cores']} cores)")
    features = cpu["features"]
    table.add_row("CPU features", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()))
    console.print(table)
