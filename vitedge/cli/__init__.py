"""The `vitedge` command line. Each command parses, calls one library function, renders.

Nothing heavy is imported at module level: `vitedge --help` must not pay for torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from vitedge import __version__
from vitedge.card import Interpolation
from vitedge.errors import VitedgeError

# Markup off: labels, paths and architectures are user strings; "[/]" in one must print as is.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def styled(label: str, style: str, message: str = "") -> Text:
    """`label` in `style`, then the message as plain text."""
    return Text.assemble((label, style), (" " + message) if message else "")


class _OneLineErrors(TyperGroup):
    """Bad options (a value out of range, a missing option) are one line and exit code 1, like
    every other bad input, instead of Click's usage box and exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            err_console.print(styled("error:", "bold red", "aborted"))
            sys.exit(1)
        except typer.exceptions.TyperException as exc:  # Click's usage errors, as Typer ships them
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "vitedge"
            err_console.print(styled("error:", "bold red", f"{exc.format_message()} — see {where} --help"),
                              soft_wrap=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="vitedge",
    help="Take a trained Vision Transformer to edge devices and keep it honest there.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneLineErrors,
)


def floats(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Any:
    """A callback giving a float option its real range; nan and inf are refused (the one shared
    validator: Click's FloatRange lets nan through and Typer has no open bounds)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        below = low is not None and (value < low or (low_open and value == low))
        above = high is not None and (value > high or (high_open and value == high))
        if below or above:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            raise typer.BadParameter(f"{value:g} is outside {left}{'-inf' if low is None else f'{low:g}'}, "
                                     f"{'inf' if high is None else f'{high:g}'}{right}")
        return value

    return check


def _version(value: bool) -> None:
    if value:
        console.print(f"vitedge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """vitedge: prune, quantize, compile and watch ViTs on edge devices."""


class _Notes(logging.Handler):
    """What the output writer did on its own (cleaning up after a killed run): a dim note."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(styled("note:", "yellow", record.getMessage()), soft_wrap=True)


@contextlib.contextmanager
def user_errors(verbose: bool = False) -> Iterator[None]:
    """Turn VitedgeError into one line on stderr and exit code 1; quiet third-party chatter.

    Every command runs inside this: first, what killed vitedge processes left behind (partial
    outputs here, scratch folders in the temp directory) is cleaned up and said; at the end, the
    locks this process holds on its outputs are given back.
    """
    from vitedge import outputs

    notes = _Notes(logging.WARNING)
    outputs.log.addHandler(notes)
    outputs.log.propagate = False
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
            for name in ("torch.onnx", "onnxscript", "torch._export", "torch.export", "onnx_ir",
                         "torch.utils.cpp_extension", "nncf"):
                logging.getLogger(name).setLevel(logging.ERROR)
        try:
            outputs.clean_temporary()
            outputs.clean_leftovers(Path.cwd())
            yield
        except VitedgeError as exc:
            hint = f" — {exc.hint}" if exc.hint else ""
            err_console.print(styled("error:", "bold red", exc.message + hint), soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            outputs.release()
            outputs.log.removeHandler(notes)


def progress_printer(quiet: bool) -> Any:
    """What library functions call with progress messages: dim lines on stderr, or nothing."""
    return (lambda _m: None) if quiet else (lambda m: err_console.print(Text(m, style="dim")))


# Options shared by every command that loads a model.
Source = Annotated[str, typer.Argument(
    help="Model: timm:NAME, torchvision:NAME, a Hugging Face folder, .pt2, TorchScript .pt, "
         ".onnx, a vitedge artifact folder, or builtin:digits-vit.")]
Weights = Annotated[Optional[Path], typer.Option(
    "--weights", "-w", help="Checkpoint for timm:/torchvision: sources (.safetensors, .pth, .pt, .bin).")]
ModelKwargs = Annotated[Optional[list[str]], typer.Option(
    "--model-kwargs", "-k", help="Architecture override key=value, repeatable (img_size=32, num_classes=10).")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow what PyTorch loads with pickle: whole pickled modules, TorchScript, "
                           "torch.export .pt2, checkpoints holding Python objects (can run code from the file).")]
Mean = Annotated[Optional[str], typer.Option(help="Override preprocessing mean, e.g. 0.5,0.5,0.5.")]
Std = Annotated[Optional[str], typer.Option(help="Override preprocessing std, e.g. 0.5,0.5,0.5.")]
CropPct = Annotated[Optional[float], typer.Option(callback=floats(0, 1, low_open=True),
                                                  help="Override crop ratio (1.0 = no crop).")]
Interp = Annotated[Optional[Interpolation], typer.Option(help="Override resize interpolation.")]
InputSize = Annotated[Optional[str], typer.Option(help="Override input size, e.g. 224 or 224,224.")]
Labels = Annotated[Optional[Path], typer.Option(
    exists=True, dir_okay=False, help="Class names: a text file (one per line) or a JSON list.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show third-party warnings.")]


def _floats(text: str | None, what: str, count: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise VitedgeError(f"--{what} {text!r} is not {count} comma-separated numbers",
                           f"write e.g. --{what} " + ",".join(["0.5"] * count))
    return values


def _read_labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VitedgeError(f"labels file {path} is not readable UTF-8 text ({type(exc).__name__})",
                           "give one class name per line, or a JSON list") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            if isinstance(data, dict):
                data = [data[k] for k in sorted(data, key=int)]
        except (json.JSONDecodeError, ValueError) as exc:
            raise VitedgeError(f"labels file {path} is not a JSON list or index -> name object ({exc})",
                               'e.g. ["cat", "dog"] or {"0": "cat", "1": "dog"}') from None
        if not isinstance(data, list) or not all(isinstance(v, (str, int, float)) for v in data):
            raise VitedgeError(f"labels file {path} is not a JSON list of names",
                               'e.g. ["cat", "dog"]')
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def source_options(weights: Path | None = None, model_kwargs: list[str] | None = None,
                   trust_pickle: bool = False, mean: str | None = None, std: str | None = None,
                   crop_pct: float | None = None, interpolation: Interpolation | None = None,
                   input_size: str | None = None, labels: Path | None = None) -> dict[str, Any]:
    """What the shared source options (-w, -k, --trust-pickle, the preprocessing overrides and
    --labels) mean, as keyword arguments of `vitedge.models.load`: one definition for every
    command that takes a model source."""
    from vitedge.models.load import parse_model_kwargs

    overrides: dict[str, Any] = {"mean": _floats(mean, "mean", 3), "std": _floats(std, "std", 3),
                                 "crop_pct": crop_pct,
                                 "interpolation": str(interpolation) if interpolation else None}
    if input_size is not None:
        size = _floats(input_size, "input-size", 2 if "," in input_size else 1)
        overrides["input_size"] = [int(v) for v in (size * 2 if len(size) == 1 else size)]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return {"weights": weights, "model_kwargs": parse_model_kwargs(model_kwargs),
            "trust_pickle": trust_pickle, "preprocessing": overrides or None,
            "labels": _read_labels(labels)}


def _load(source: str, weights: Path | None, model_kwargs: list[str] | None, trust_pickle: bool,
          mean: str | None, std: str | None, crop_pct: float | None,
          interpolation: Interpolation | None, input_size: str | None, labels: Path | None) -> Any:
    from vitedge.models.load import load

    return load(source, **source_options(weights, model_kwargs, trust_pickle, mean, std, crop_pct,
                                         interpolation, input_size, labels))


def _fmt_count(value: int | None, unit: str = "") -> str:
    if value is None:
        return "unknown"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {suffix}{unit}"
    return f"{value} {unit}".strip()


def render_card(card: Any) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column()
    s, p = card.structure, card.preprocessing
    rows = [
        ("architecture", card.architecture),
        ("format", card.format),
        ("ViT", ("yes" + (f" ({s.family}" + (", hierarchical: widths of the first stage" if s.hierarchical
                                               else "") + ")" if s.family else "")) if s.is_vit else "no"),
        ("params", _fmt_count(card.params)),
        ("MACs", _fmt_count(card.macs, "MAC") + f" at {p.input_size[0]}x{p.input_size[1]}"),
        ("patch / embed / depth / heads",
         " / ".join(str(v) if v is not None else "?" for v in
                    (s.patch_size, s.embed_dim, s.depth, s.num_heads))),
        ("MLP hidden", str(s.mlp_hidden) if s.mlp_hidden else "?"),
        ("prefix tokens", f"{s.num_prefix_tokens if s.num_prefix_tokens is not None else '?'}"
                          f" (class token: {s.class_token}, distillation token: {s.distillation_token}, "
                          f"registers: {s.register_tokens})"),
        ("pooling", str(s.global_pool)),
        ("hybrid CNN stem", "yes" if s.hybrid_stem else "no"),
        ("classes", str(card.num_classes) if card.num_classes else "none (features)"),
        ("labels", (", ".join(card.labels[:5]) + (" …" if len(card.labels) > 5 else ""))
         if card.labels else "unknown"),
        ("preprocessing",
         f"{p.resize_mode} {p.input_size[0]}x{p.input_size[1]}, crop {p.crop_pct:g}, "
         f"{p.interpolation}, mean {tuple(round(v, 4) for v in p.mean)}, "
         f"std {tuple(round(v, 4) for v in p.std)}, {p.channel_order}"),
    ]
    metrics = card.metrics
    if "heldout_top1" in metrics:
        rows.append(("held-out top-1", f"{100 * metrics['heldout_top1']:.2f}% "
                                        f"({metrics.get('heldout_images', '?')} images)"))
    if "parity" in metrics:
        parity = metrics["parity"]
        rows.append(("export parity", f"{'passed' if parity['passed'] else 'FAILED'}: max abs "
                                       f"diff {parity['max_abs_diff']:.2e} on {parity['samples']} images"))
    if "quantization" in metrics:
        quant = metrics["quantization"]
        drift = quant["drift"]
        closeness = (f"feature cosine to FP32 {drift['cosine']:.4f}" if drift.get("features") else
                     f"agreement with FP32 {100 * drift['top1_agreement']:.2f}%")
        rows.append(("INT8", f"{100 * quant['int8_linear_mac_share']:.0f}% of Linear MACs; "
                             f"{closeness} on {drift['samples']} samples"
                             + ("" if drift.get("features") else f", KL {drift['kl']:.4f}")
                             + f"; budget {'met' if quant['budget']['met'] else 'MISSED'}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _print_warnings(card: Any) -> None:
    for message in card.warnings:
        err_console.print(styled("warning:", "yellow", message), soft_wrap=True)


@app.command()
def inspect(source: Source, weights: Weights = None, model_kwargs: ModelKwargs = None,
            trust_pickle: TrustPickle = False, mean: Mean = None, std: Std = None,
            crop_pct: CropPct = None, interpolation: Interp = None, input_size: InputSize = None,
            labels: Labels = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
            verbose: Verbose = False) -> None:
    """Load a model and print its card: structure, size, MACs, preprocessing, labels.

    Example: vitedge inspect timm:deit_tiny_patch16_224 --weights deit_tiny.safetensors
    """
    with user_errors(verbose):
        loaded = _load(source, weights, model_kwargs, trust_pickle, mean, std, crop_pct,
                       interpolation, input_size, labels)
    if as_json:
        typer.echo(loaded.card.to_json(), nl=False)
        return
    console.print(render_card(loaded.card))
    _print_warnings(loaded.card)


@app.command()
def export(source: Source,
           out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
           weights: Weights = None, model_kwargs: ModelKwargs = None,
           trust_pickle: TrustPickle = False, mean: Mean = None, std: Std = None,
           crop_pct: CropPct = None, interpolation: Interp = None, input_size: InputSize = None,
           labels: Labels = None,
           opset: Annotated[int, typer.Option(min=17, help="ONNX opset (>= 17 keeps LayerNorm one node).")] = 18,
           dynamic_batch: Annotated[bool, typer.Option(help="Dynamic batch dimension.")] = True,
           simplify: Annotated[bool, typer.Option(help="Simplify the graph with onnxslim.")] = True,
           data: Annotated[Optional[str], typer.Option(
               help="Images for the parity check (folder, ImageFolder or glob); default: shipped samples.")] = None,
           parity_samples: Annotated[int, typer.Option(min=1, max=100_000, help="How many images the parity check uses.")] = 16,
           atol: Annotated[float, typer.Option(callback=floats(0), help="Parity absolute tolerance on logits.")] = 1e-3,
           rtol: Annotated[float, typer.Option(callback=floats(0), help="Parity relative tolerance on logits.")] = 1e-3,
           overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
           verbose: Verbose = False) -> None:
    """Export to ONNX (opset >= 17, dynamic batch, onnxslim) and check it against PyTorch.

    Example: vitedge export builtin:digits-vit -o artifacts/digits-onnx
    """
    from vitedge.export import export_onnx

    with user_errors(verbose):
        loaded = _load(source, weights, model_kwargs, trust_pickle, mean, std, crop_pct,
                       interpolation, input_size, labels)
        result = export_onnx(loaded, out, opset=opset, dynamic_batch=dynamic_batch,
                             simplify=simplify, parity_data=data, parity_samples=parity_samples,
                             atol=atol, rtol=rtol, overwrite=overwrite)
    _print_warnings(result.card)
    parity = result.parity
    agreement = "n/a" if parity.top1_agreement is None else f"{100 * parity.top1_agreement:.1f}%"
    console.print(styled("parity passed", "green",
        f"on {parity.samples} images ({parity.data}): max abs diff "
        f"{parity.max_abs_diff:.2e}, max rel diff {parity.max_rel_diff:.2e}, top-1 agreement "
        f"{agreement} (atol {parity.atol:g}, rtol {parity.rtol:g})"))
    batch = "dynamic" if result.card.source["onnx"]["dynamic_batch"] else "fixed"
    console.print(f"wrote {result.out_dir}/model.onnx (opset {opset}, {batch} batch, "
                  f"{result.exporter} exporter) in {result.seconds:.1f} s", highlight=False)


@app.command()
def relabel(source: Annotated[Path, typer.Argument(help="An artifact or bundle folder.")],
            labels: Annotated[Path, typer.Option(exists=True, dir_okay=False,
                                                 help="Class names: a text file (one per line) or a JSON list.")],
            out: Annotated[Path, typer.Option("--out", "-o", help="The new artifact folder.")],
            overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
            verbose: Verbose = False) -> None:
    """Write a copy of an artifact or bundle with other class names (a new sealed card).

    Cards are sealed, so editing labels by hand is refused; this records the change in the lineage.
    Example: vitedge relabel artifacts/digits-onnx --labels names.txt -o artifacts/digits-named
    """
    from vitedge.artifact import relabel as run_relabel

    with user_errors(verbose):
        card = run_relabel(source, _read_labels(labels) or [], out, overwrite=overwrite,
                           labels_file=str(labels))
    shown = ", ".join(card.labels[:5]) + (" …" if len(card.labels or []) > 5 else "")
    console.print(f"wrote {out} ({card.format}) with labels {shown}")


@app.command()
def quantize(
    source: Source,
    calib: Annotated[str, typer.Option(
        "--calib", help="Calibration data: ImageFolder, image folder, glob, video file or .npy/.npz.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval", help="Held-out data for metrics and the budget (labeled ImageFolder: top-1; "
                       "unlabeled: agreement with FP32).")] = None,
    recipe: Annotated[str, typer.Option(help="vit-safe | linear-only | full.")] = "vit-safe",
    calibration: Annotated[str, typer.Option(
        help="Activation ranges: mean-minmax (NNCF default) | minmax | percentile.")] = "mean-minmax",
    target: Annotated[Optional[str], typer.Option(
        help="Target profile name or .toml: sets the INT8 scheme (see `vitedge targets`).")] = None,
    scheme: Annotated[Optional[str], typer.Option(
        help="symmetric (TensorRT: zero-points 0) | asymmetric (CPU runtimes); default: the "
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
    bias_correction: Annotated[bool, typer.Option(help="NNCF fast bias correction.")] = True,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for sampling the data.")] = 0,
    weights: Weights = None, model_kwargs: ModelKwargs = None, trust_pickle: TrustPickle = False,
    mean: Mean = None, std: Std = None, crop_pct: CropPct = None, interpolation: Interp = None,
    input_size: InputSize = None, labels: Labels = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print the result.")] = False,
    verbose: Verbose = False,
) -> None:
    """INT8 post-training quantization (NNCF, QDQ ONNX) within an accuracy budget.

    Example: vitedge quantize builtin:digits-vit --calib calibration/digits/train
    --eval calibration/digits/heldout -o artifacts/digits-int8
    """
    from vitedge.quantize.ptq import BudgetMissed, CalibrationMethod, Recipe
    from vitedge.quantize.ptq import quantize as run_quantize
    from vitedge.targets import Scheme, load_target

    with user_errors(verbose):
        choices = {"--recipe": (recipe, Recipe), "--calibration": (calibration, CalibrationMethod),
                   "--scheme": (scheme, Scheme)}
        parsed: dict[str, Any] = {}
        for flag, (value, enum) in choices.items():
            if value is None:
                parsed[flag] = None
                continue
            try:
                parsed[flag] = enum(value)
            except ValueError:
                raise VitedgeError(f"{flag} {value!r} is not one of "
                                   f"{', '.join(e.value for e in enum)}") from None
        if target:
            load_target(target)  # an unknown target fails before the model is loaded
        loaded = _load(source, weights, model_kwargs, trust_pickle, mean, std, crop_pct,
                       interpolation, input_size, labels)
        say = progress_printer(quiet)
        with _calibration_bar(quiet) as tick:
            try:
                result = run_quantize(loaded, calib, out, eval_data=eval_data, recipe=parsed["--recipe"],
                                  calibration=parsed["--calibration"], scheme=parsed["--scheme"],
                                  target=load_target(target) if target else None,
                                  samples=samples, eval_samples=eval_samples, max_drop=max_drop,
                                  min_agreement=min_agreement, min_cosine=min_cosine,
                                  exclude=exclude, smooth_quant=smooth_quant,
                                  bias_correction=bias_correction, seed=seed, overwrite=overwrite,
                                  progress=say, calibration_tick=tick)
            except BudgetMissed as missed:
                _print_quant_summary(missed.result.report, missed.result.out_dir)
                raise
    _print_quant_summary(result.report, result.out_dir)


@contextlib.contextmanager
def _calibration_bar(quiet: bool) -> Iterator[Any]:
    """A progress bar fed by the calibration sampler: one bar per pass over the data."""
    if quiet:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("calibration", total=None)
        passes = [0]

        def tick(index: int, total: int) -> None:
            if index == 0:
                passes[0] += 1
                bar.reset(task, total=total, description=f"calibration pass {passes[0]}")
            bar.update(task, completed=index + 1)

        yield tick


def _print_quant_summary(report: dict[str, Any], out_dir: Path) -> None:
    for message in report["warnings"]:
        err_console.print(styled("warning:", "yellow", message), soft_wrap=True)
    drift, budget, latency = report["drift"], report["budget"], report["latency_ms"]
    accuracy = report.get("accuracy")
    if accuracy:
        console.print(f"top-1 FP32 {100 * accuracy['fp32_top1']:.2f}% → INT8 "
                      f"{100 * accuracy['int8_top1']:.2f}% (drop {budget['drop']:.2f} points, "
                      f"budget {budget['max_drop']:g})", highlight=False)
    closeness = (f"feature cosine to FP32 {drift['cosine']:.4f} (worst {drift['min_cosine']:.4f}, "
                 f"relative error {drift['rel_error']:.4f}, budget {budget['min_cosine']:g})"
                 if drift["features"] else
                 f"agreement with FP32 {100 * drift['top1_agreement']:.2f}%")
    console.print(f"{closeness} on {drift['samples']} samples"
                  + ("" if drift["features"] else f", KL {drift['kl']:.4f}, cosine {drift['cosine']:.4f}")
                  + f"; {100 * report['int8_linear_mac_share']:.1f}% of Linear MACs in INT8 "
                  f"({report['chosen']})")
    console.print(f"ONNX Runtime CPU p50 batch {latency['batch']}: FP32 {latency['fp32']['p50']:.2f} ms, "
                  f"INT8 {latency['int8']['p50']:.2f} ms; lint "
                  f"{'passed' if report['lint']['passed'] else 'FAILED'}", highlight=False)
    console.print(f"wrote {out_dir}/model.onnx and quant_report.md", highlight=False)


# The other command groups live in their own modules; importing them registers them on `app`.
from vitedge.cli import deploy as _deploy  # noqa: E402,F401
from vitedge.cli import watch as _watch  # noqa: E402,F401
