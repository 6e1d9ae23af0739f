"""The `vitedge` command: one Typer app, its commands registered here in pipeline order.

Each command module parses its options, calls one library function and renders the result;
what they share (consoles, one-line errors, option types) is in `vitedge.cli.shared`.
Nothing heavy is imported at module level: `vitedge --help` must not pay for torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vitedge import __version__
from vitedge.cli import compile as compile_commands
from vitedge.cli import device, measure, model, optimize, package, prune, quantize, run
from vitedge.cli.shared import Command, OneLineErrors, console

app = typer.Typer(
    name="vitedge",
    help="Take a trained Vision Transformer to edge devices and keep it honest there.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


COMMANDS = [  # (name, function): load -> prune -> export -> quantize -> compile -> run -> measure
    ("inspect", model.inspect),
    ("prune", prune.prune),
    ("export", model.export),
    ("quantize", quantize.quantize),
    ("compile", compile_commands.compile_command),
    ("build", compile_commands.build_command),
    ("optimize", optimize.optimize),
    ("package", package.package),
    ("run", run.run),
    ("capture", run.capture),
    ("predict", measure.predict),
    ("bench", measure.bench),
    ("eval", measure.eval_command),
    ("report", measure.report_command),
    ("relabel", model.relabel),
    ("doctor", device.doctor),
    ("example-data", device.example_data),
]
for name, command in COMMANDS:
    app.command(name, cls=Command)(command)
app.add_typer(device.targets_app, name="targets")
