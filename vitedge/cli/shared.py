"""What every command shares: consoles, one-line errors, option types, the source options.

Nothing heavy is imported at module level: `vitedge --help` must not pay for torch.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import sys
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from vitedge.card import Interpolation
from vitedge.errors import VitedgeError

# Markup off: labels, paths and architectures are user strings; "[/]" in one must print as is.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def styled(label: str, style: str, message: str = "") -> Text:
    """`label` in `style`, then the message as plain text."""
    return Text.assemble((label, style), (" " + message) if message else "")


# What a value is, by option: what --help shows after the flag (Typer would show `<str>`).
METAVARS = {
    "--model-kwargs": "KEY=VALUE", "--mean": "R,G,B", "--std": "R,G,B", "--input-size": "SIZE[,SIZE]",
    "--data": "DIR", "--calib": "DIR", "--eval": "DIR", "--target": "TARGET", "--reference": "MODEL",
    "--source": "SOURCE", "--serve": "HOST:PORT", "--metrics": "HOST:PORT", "--frame-size": "HxW",
    "--camera-size": "HxW", "--channel-order": "RGB|BGR", "--time-budget": "DURATION",
    "--prune": "P,...|auto", "--exclude": "NODE|OP", "--name": "NAME",
}
COMMAND_METAVARS = {("compile", "--batch"): "N|MIN:OPT:MAX", ("bench", "--batch"): "N,...",
                    ("optimize", "--tome"): "R,..."}
_TYPE_METAVARS = {int: "N", float: "NUMBER", str: "TEXT"}


def _metavar(command: str, param: Any) -> str:
    """A placeholder that says what the value is (PATH, N, HOST:PORT), never Typer's `<list[str]>`."""
    described = param.type_descriptor
    repeated = "..." if described.is_list else ""
    if param.param_type_name == "argument":
        return param.name.upper() + repeated
    if getattr(param, "is_flag", False):
        return ""
    long = next((o for o in param.opts if o.startswith("--")), param.opts[0])
    if (command, long) in COMMAND_METAVARS:
        return COMMAND_METAVARS[command, long]
    if long in METAVARS:
        return METAVARS[long] + repeated
    if described.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in described.choices or ())
    if described.is_path:
        return {"file": "FILE", "directory": "DIR"}.get(str(described.path_type), "PATH") + repeated
    annotation = described.annotation
    inner = typing.get_args(annotation)[0] if described.is_list and typing.get_args(annotation) else annotation
    return _TYPE_METAVARS.get(inner, "VALUE") + repeated


def apply_conventions(group: Any, path: str = "") -> None:
    """Every command's placeholders (`--out PATH`, `BUNDLE`, no value after a flag), set once for
    the whole app instead of a metavar= on each of ~250 options."""
    for name, command in getattr(group, "commands", {}).items():
        apply_conventions(command, f"{path} {name}".strip())
    for param in getattr(group, "params", []):
        if param.metavar is None:
            param.metavar = _metavar(path.rsplit(" ", 1)[-1], param)


_NAME_COLUMN = 30  # longer flags get a line of their own, their help the next


def help_rows(command: Any, ctx: Any) -> tuple[str, dict[str, list[tuple[str, str]]]]:
    """A command's usage after its name (`[OPTIONS] BUNDLE`) and its parameters as (flags with
    their placeholder, help) rows by help panel: arguments, its own options, then the shared ones.
    What `--help` prints and what the docs' option tables show (scripts/cli_reference.py)."""
    params = command.get_params(ctx)
    arguments = [p for p in params if p.param_type_name == "argument"]
    usage = " ".join(["[OPTIONS]"] + [(a.metavar or a.name.upper()) if a.required
                                      else f"[{a.metavar or a.name.upper()}]" for a in arguments])
    panels: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
    for param in params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        name, text = record
        if param.param_type_name == "argument":
            name = param.metavar or param.name.upper()
            text = (param.help or "") + ("" if param.required else " [optional]")
        panel = param.rich_help_panel or ("Arguments" if param.param_type_name == "argument" else "Options")
        panels.setdefault(panel, []).append((name, text))
    return usage, {title: rows for title, rows in panels.items() if rows}


class Command(TyperCommand):
    """A command whose --help reads at 80 columns: two columns (flags with what their value is,
    then the help), one panel per `rich_help_panel`. Typer's own layout spends six columns on
    flag, short flag, negations and type, and wraps the help to a few words a line at 80
    columns (hand-written for that; the rest of the help machinery is Typer's)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from rich.console import Group
        from rich.padding import Padding
        from rich.panel import Panel

        out = Console(highlight=False, markup=False, width=min(Console().width, 120))
        usage, panels = help_rows(self, ctx)
        out.print(Text.assemble(("Usage: ", "bold"), f"{ctx.command_path} {usage}"))
        for paragraph in inspect.cleandoc(self.help or "").split("\n\n"):
            if paragraph.strip():
                out.print(Padding(Text(" ".join(paragraph.split())), (1, 0, 0, 1)))
        for title, rows in panels.items():
            parts: list[Any] = []
            table: Table | None = None
            for name, text in rows:
                if len(name) > _NAME_COLUMN:  # the flag on a line of its own, its help below
                    parts.append(Padding(Text(name, style="bold cyan"), (0, 1)))
                    name, table = "", None
                if table is None:
                    table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
                    table.add_column(no_wrap=True, width=_NAME_COLUMN, style="bold cyan")
                    table.add_column(ratio=1)
                    parts.append(table)
                table.add_row(name, text)
            out.print(Panel(Group(*parts), title=title, title_align="left", border_style="dim"))


class OneLineErrors(TyperGroup):
    """Bad options (a value out of range, a missing option) are one line and exit code 1, like
    every other bad input, instead of Click's usage box and exit code 2. Its commands' value
    placeholders follow one convention (`apply_conventions`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        apply_conventions(self)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        for stream in (sys.stdout, sys.stderr):  # PYTHONIOENCODING=ascii, a C locale: "—" prints as "?"
            if "utf" not in (getattr(stream, "encoding", "") or "").lower() and hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="replace")
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            err_console.print(styled("error:", "bold red", "aborted"))
            sys.exit(1)
        except typer.exceptions.TyperException as exc:  # Click's usage errors, as Typer ships them
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "vitedge"
            message = exc.format_message().replace("Value error, ", "")  # Typer's enum wording
            err_console.print(styled("error:", "bold red", f"{message} — see {where} --help"), soft_wrap=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


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
    from vitedge import locks

    notes = _Notes(logging.WARNING)
    locks.log.addHandler(notes)
    locks.log.propagate = False
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
            for name in ("torch.onnx", "onnxscript", "torch._export", "torch.export", "onnx_ir",
                         "torch.utils.cpp_extension", "nncf"):
                logging.getLogger(name).setLevel(logging.ERROR)
        try:
            locks.clean_temporary()
            locks.clean_leftovers(Path.cwd())
            yield
        except VitedgeError as exc:
            hint = f" — {exc.hint}" if exc.hint else ""
            err_console.print(styled("error:", "bold red", exc.message + hint), soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            locks.release()
            locks.log.removeHandler(notes)


@contextlib.contextmanager
def live_progress(quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """What long library calls report, shown as it happens on a terminal: one spinner line on
    stderr with the current step and the time it has taken so far (replaced as steps change, gone
    at the end). Quiet, or not a terminal (a log, a pipe): nothing, the result says it all."""
    if quiet or not err_console.is_terminal:
        yield lambda _m: None
        return
    import time

    started = time.perf_counter()
    with err_console.status("starting", spinner="dots") as status:
        def update(message: str) -> None:
            status.update(Text(f"{message}  ({time.perf_counter() - started:.0f} s)", style="dim"))

        yield update


@contextlib.contextmanager
def step_bar(quiet: bool, first: str = "working") -> Iterator[Callable[[int, int, str], None] | None]:
    """A progress bar on stderr fed by `tick(index, total, label)`: a new label (or index 0)
    starts the bar again with that label; nothing when quiet. Calibration passes are numbered."""
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(first, total=None)
        passes = [0]

        def tick(index: int, total: int, label: str = "calibration") -> None:
            if index == 0:
                if label == "calibration":
                    passes[0] += 1
                    label = f"calibration pass {passes[0]}"
                bar.reset(task, total=total, description=label)
            bar.update(task, completed=index + 1)

        yield tick


def warn_if_busy(load: Any, what: str, consequence: str = "") -> None:
    """The one-line warning when other processes used the cores while `what` (a LoadDoc, or None)."""
    if load is not None and load.busy:
        print_warnings([load.warning(what) + (f" ({consequence})" if consequence else "")])


def progress_printer(quiet: bool) -> Any:
    """What library functions call with progress messages: dim lines on stderr, or nothing."""
    return (lambda _m: None) if quiet else (lambda m: err_console.print(Text(m, style="dim")))


# Options shared by every command that loads a model.
Source = Annotated[str, typer.Argument(
    help="Model: timm:NAME, torchvision:NAME, a Hugging Face folder, .pt2, TorchScript .pt, "
         ".onnx, a vitedge artifact folder, or builtin:digits-vit.")]
SOURCE_PANEL = "Model source options"
PREPROCESSING_PANEL = "Preprocessing and label overrides"
Weights = Annotated[Optional[Path], typer.Option(
    "--weights", "-w", rich_help_panel=SOURCE_PANEL,
    help="Checkpoint for timm:/torchvision: sources (.safetensors, .pth, .pt, .bin).")]
ModelKwargs = Annotated[Optional[list[str]], typer.Option(
    "--model-kwargs", "-k", rich_help_panel=SOURCE_PANEL,
    help="Architecture override key=value, repeatable (img_size=32, num_classes=10).")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", rich_help_panel=SOURCE_PANEL,
    help="Allow what PyTorch loads with pickle: whole pickled modules, TorchScript, torch.export .pt2, "
         "checkpoints holding Python objects (can run code from the file).")]
Mean = Annotated[Optional[str], typer.Option(rich_help_panel=PREPROCESSING_PANEL,
                                             help="Override preprocessing mean, e.g. 0.5,0.5,0.5.")]
Std = Annotated[Optional[str], typer.Option(rich_help_panel=PREPROCESSING_PANEL,
                                            help="Override preprocessing std, e.g. 0.5,0.5,0.5.")]
CropPct = Annotated[Optional[float], typer.Option(rich_help_panel=PREPROCESSING_PANEL,
                                                  callback=floats(0, 1, low_open=True),
                                                  help="Override crop ratio (1.0 = no crop).")]
Interp = Annotated[Optional[Interpolation], typer.Option(rich_help_panel=PREPROCESSING_PANEL,
                                                         help="Override resize interpolation.")]
InputSize = Annotated[Optional[str], typer.Option(rich_help_panel=PREPROCESSING_PANEL,
                                                  help="Override input size, e.g. 224 or 224,224.")]
Labels = Annotated[Optional[Path], typer.Option(
    exists=True, dir_okay=False, rich_help_panel=PREPROCESSING_PANEL,
    help="Class names: a text file (one per line) or a JSON list.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show third-party warnings.")]


# The shared source options, declared once: (parameter, its option type, default).
_LOADING_OPTIONS = (("weights", Weights, None), ("model_kwargs", ModelKwargs, None),
                    ("trust_pickle", TrustPickle, False))
_PREPROCESSING_OPTIONS = (("mean", Mean, None), ("std", Std, None), ("crop_pct", CropPct, None),
                          ("interpolation", Interp, None), ("input_size", InputSize, None),
                          ("labels", Labels, None))


def takes_source_options(*, preprocessing: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command decorator: Typer sees the shared source options (--weights, -k, --trust-pickle
    and, with `preprocessing`, the preprocessing and label overrides) after the command's leading
    required parameters, and the command receives them parsed as its keyword `options`.

    Bad values (e.g. --mean 0.5) are refused as one-line errors before the command runs.
    """
    shared = _LOADING_OPTIONS + (_PREPROCESSING_OPTIONS if preprocessing else ())

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        if "options" not in signature.parameters:
            raise TypeError(f"{command.__name__} must take a keyword `options` to use the source options")
        # Typer needs the annotations as objects; `options` names a TYPE_CHECKING import.
        hints = typing.get_type_hints(command, localns={"SourceOptions": Any}, include_extras=True)
        own = [p.replace(annotation=hints.get(name, p.annotation))
               for name, p in signature.parameters.items() if name != "options"]
        lead = next((i for i, p in enumerate(own) if p.default is not inspect.Parameter.empty), len(own))
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                   annotation=kind) for name, kind, default in shared]
        parameters = own[:lead] + added + own[lead:]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            from vitedge.models.options import SourceOptions

            given = {name: values.pop(name) for name, _, _ in shared if name in values}
            with user_errors(bool(values.get("verbose", False))):
                options = SourceOptions.parse(**given)  # parsed there, once
            return command(**values, options=options)

        del wrapper.__wrapped__  # Typer must read the signature below, not the command's
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only print the result.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output folder.")]


def print_table(table: Table) -> None:
    """Full-width tables when output is piped or logged (rich assumes 80 columns there)."""
    (console if console.is_terminal else Console(width=200, markup=False, highlight=False)).print(table)


def print_warnings(messages: list[str]) -> None:
    for message in messages:
        err_console.print(styled("warning:", "yellow", message), soft_wrap=True)
