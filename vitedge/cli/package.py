"""`vitedge package`: a bundle laid out for a serving engine (Triton)."""

from __future__ import annotations

import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vitedge.cli.shared import (
    Overwrite,
    Quiet,
    Verbose,
    console,
    progress_printer,
    user_errors,
)


class Engine(StrEnum):
    TRITON = "triton"


class InstanceKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


def package(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by vitedge compile.",
                                           metavar="BUNDLE")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (model_repository/, README.md, "
                                                          "client.py, package.json).")],
    engine: Annotated[Engine, typer.Option("--for", help="The serving engine.")] = Engine.TRITON,
    name: Annotated[Optional[str], typer.Option(help="Model name in the repository (default: "
                                                     "architecture_target).")] = None,
    model_version: Annotated[int, typer.Option(min=1, help="Triton model version folder.")] = 1,
    instances: Annotated[int, typer.Option(min=1, max=64, help="Model instances (instance_group count).")] = 1,
    kind: Annotated[Optional[InstanceKind], typer.Option(
        help="Where the instances run (default: gpu for TensorRT bundles, cpu otherwise).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(
        min=0, max=10_000_000, help="Dynamic batching: how long a request may wait for others (µs).")] = 100,
    overwrite: Overwrite = False, quiet: Quiet = False, verbose: Verbose = False,
) -> None:
    """Package a bundle for a serving engine: a Triton model repository with its config.pbtxt.

    Example: vitedge package demo-out/digits-x86 --for triton -o demo-out/digits-triton
    """
    from vitedge.package.triton import TritonOptions, package_triton

    with user_errors(verbose):
        result = package_triton(bundle, out, options=TritonOptions(
            name=name, version=model_version, instances=instances, kind=kind.value if kind else None,
            max_queue_delay_us=max_queue_delay_us), overwrite=overwrite, say=progress_printer(quiet))
    parity = result.parity
    checked = (f"same outputs as the bundle (max |diff| {parity['max_abs_diff']:.3g})" if parity.get("checked")
               else f"outputs not compared: {parity['how']}")
    console.print(f"wrote the Triton model repository {result.repository} (model {result.model_name}); "
                  f"{checked}", highlight=False)
    console.print(f"serve it: tritonserver --model-repository={shlex.quote(str(result.repository))} "
                  f"(see {result.out_dir}/README.md)", highlight=False)
