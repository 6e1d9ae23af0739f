"""`vitedge package`: a bundle laid out for a serving engine (Triton, KServe, DeepStream)."""

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
    KSERVE = "kserve"
    DEEPSTREAM = "deepstream"


class InstanceKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


def package(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by vitedge compile.",
                                           metavar="BUNDLE")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (model_repository/ or the "
                                                          "DeepStream configs, README.md, package.json).")],
    engine: Annotated[Engine, typer.Option("--for", help="The serving engine.")] = Engine.TRITON,
    name: Annotated[Optional[str], typer.Option(help="Triton/KServe: model name in the repository "
                                                     "(default: architecture_target).")] = None,
    model_version: Annotated[int, typer.Option(min=1, help="Triton/KServe: model version folder.")] = 1,
    instances: Annotated[int, typer.Option(min=1, max=64, help="Triton/KServe: model instances "
                                                                "(instance_group count).")] = 1,
    kind: Annotated[Optional[InstanceKind], typer.Option(
        help="Triton/KServe: where the instances run (default: gpu for TensorRT bundles, cpu otherwise).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(
        min=0, max=10_000_000, help="Triton/KServe dynamic batching: how long a request may wait (µs).")] = 100,
    camera: Annotated[int, typer.Option(min=0, help="DeepStream: the V4L2 camera /dev/videoN of the "
                                                    "deepstream-app config.")] = 0,
    camera_size: Annotated[Optional[str], typer.Option(
        help="DeepStream: the camera's HEIGHTxWIDTH (default: the bundle's --frame-size, else 720x1280).")] = None,
    classifier_threshold: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="DeepStream: attach the top label only above this probability.")] = 0.0,
    overwrite: Overwrite = False, quiet: Quiet = False, verbose: Verbose = False,
) -> None:
    """Package a bundle for a serving engine: a Triton model repository (config.pbtxt), the same
    plus a KServe InferenceService, or DeepStream nvinfer + deepstream-app configs.

    Example: vitedge package demo-out/digits-x86 --for triton -o demo-out/digits-triton
    """
    with user_errors(verbose):
        if engine is Engine.DEEPSTREAM:
            from vitedge.package.deepstream import DeepStreamOptions, package_deepstream
            from vitedge.preprocess import parse_size

            size = parse_size(camera_size, "--camera-size", "720x1280") if camera_size else None
            result = package_deepstream(bundle, out, options=DeepStreamOptions(
                camera=camera, camera_size=size, threshold=classifier_threshold),
                overwrite=overwrite, say=progress_printer(quiet))
            console.print(f"wrote the DeepStream configs {result['infer_config']} (nvinfer) and "
                          f"{result['app_config']} (deepstream-app); normalization {result['normalization']}; "
                          f"packaged graph checked (max |diff| {result['parity']['max_abs_diff']:.3g})",
                          highlight=False, soft_wrap=True)
            console.print(f"on the device: cd {shlex.quote(str(out))} && ./build_engine.sh && "
                          f"deepstream-app -c {result['app_config'].name}", highlight=False)
            return
        from vitedge.package.triton import TritonOptions, package_triton

        result = package_triton(bundle, out, options=TritonOptions(
            name=name, version=model_version, instances=instances, kind=kind.value if kind else None,
            max_queue_delay_us=max_queue_delay_us), overwrite=overwrite, say=progress_printer(quiet),
            kserve=engine is Engine.KSERVE)
    parity = result.parity
    checked = (f"same outputs as the bundle (max |diff| {parity['max_abs_diff']:.3g})" if parity.get("checked")
               else f"outputs not compared: {parity['how']}")
    console.print(f"wrote the Triton model repository {result.repository} (model {result.model_name}); "
                  f"{checked}", highlight=False)
    if engine is Engine.KSERVE:
        console.print(f"KServe: set storageUri in {result.out_dir}/inferenceservice.yaml to where you upload "
                      "model_repository/, then kubectl apply -f inferenceservice.yaml", highlight=False)
    else:
        console.print(f"serve it: tritonserver --model-repository={shlex.quote(str(result.repository))} "
                      f"(see {result.out_dir}/README.md)", highlight=False)
