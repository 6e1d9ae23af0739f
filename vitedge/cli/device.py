"""This machine and the devices: targets (the shipped profiles) and doctor (what runs fast here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from vitedge.cli.shared import Command, Overwrite, Verbose, console, print_table, user_errors

targets_app = typer.Typer(help="Device profiles (targets/*.toml): list them, or show one.",
                          no_args_is_help=False)


@targets_app.callback(invoke_without_command=True)
def targets_list(ctx: typer.Context) -> None:
    """List the shipped device profiles."""
    if ctx.invoked_subcommand is not None:
        return
    from vitedge.targets import list_targets

    with user_errors():
        profiles = list_targets()
    table = Table()
    for column in ("target", "runtimes", "GPU SM / ISA", "precisions (default)", "INT8", "DLA",
                   "software"):
        table.add_column(column, no_wrap=column in ("target", "runtimes"))
    for t in profiles:
        software = ", ".join(f"{k} {v}" for k, v in (("JetPack", t.jetpack), ("TensorRT", t.tensorrt))
                             if v) or "-"
        table.add_row(t.name, ", ".join(map(str, t.runtimes)), t.compute_capability or t.isa or "-",
                      ", ".join(map(str, t.precisions)) + f" ({t.default_precision})",
                      str(t.int8_scheme), str(t.dla_cores), software)
    print_table(table)


@targets_app.command("show", cls=Command)
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
                          f"torch CUDA {cuda['torch_cuda']}, cuDNN {cuda['cudnn'] or '-'}, "
                          f"driver {cuda['driver'] or '-'}" if cuda.get("available")
                  else f"no GPU visible (torch CUDA build: {cuda.get('torch_cuda') or 'none'})")
    trt = report.tensorrt
    table.add_row("TensorRT", trt["version"] if trt.get("available") else f"not importable ({trt['error']})")
    cpu = report.cpu
    table.add_row("CPU", f"{cpu['name']} ({cpu['machine']}, {cpu['cores']} cores)")
    features = cpu["features"]
    table.add_row("CPU features", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()))
    console.print(table)


def example_data(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write train/ and heldout/ into.")]
        = Path("calibration/digits"),
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Write the example data the docs use: scikit-learn's handwritten digits as train/ and heldout/
    ImageFolders (the split the shipped digits-vit was trained on), so the documented commands
    work from an installed vitedge as from a checkout.

    Example: vitedge example-data   (then: vitedge quantize builtin:digits-vit --calib
    calibration/digits/train --eval calibration/digits/heldout -o artifacts/digits-int8)
    """
    from vitedge.example_data import example_data as write_examples

    with user_errors(verbose):
        counts = write_examples(out, overwrite=overwrite)
    console.print(f"wrote {out}/train ({counts['train']} images) and {out}/heldout ({counts['heldout']} images): "
                  "scikit-learn's handwritten digits, one folder per digit", highlight=False)

