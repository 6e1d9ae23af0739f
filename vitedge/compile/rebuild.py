"""Finishing and refreshing bundles on the device: `vitedge build` and `--rebuild`.

Both rewrite a bundle in place through the one output writer (a staged copy swapped in
atomically) and re-seal its passport and card.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vitedge.compile.bundle import BUNDLE_NAME, MODEL, SOURCE, Bundle, read_bundle, seal
from vitedge.compile.passport import PASSPORT_NAME, machine_facts, native_bf16
from vitedge.compile.prepare import build_in, local_tensorrt_match
from vitedge.documents import write_document
from vitedge.errors import InputError, MissingDependencyError
from vitedge.outputs import OutputKind, writing
from vitedge.runtime.onnxrt.loader import optimize_here
from vitedge.runtime.openvino.loader import IR_MODEL, IR_WEIGHTS, openvino_here
from vitedge.runtime.tensorrt.loader import BuildSettings


def build_bundle(path: str | Path, *, progress: Callable[[str], None] | None = None) -> Bundle:
    """`vitedge build`: finish a TensorRT bundle's engine on this machine (atomically, in place)."""
    say = progress or (lambda _message: None)
    current = read_bundle(path)
    if current.runtime != "tensorrt":
        raise InputError(f"{path} is an {current.runtime} bundle; only TensorRT bundles are built",
                         "load it directly (vitedge predict / bench), or --rebuild to re-optimize")
    from vitedge.targets import parse_target

    target = parse_target(current.passport.target.to_dict(), f"{path}/{PASSPORT_NAME}")
    reason = local_tensorrt_match(target)
    if reason is not None:
        raise MissingDependencyError(f"cannot build {path} for {target.name} here: {reason}",
                                     "run vitedge build on the target device")
    assert current.settings.build is not None  # a TensorRT bundle's settings have it (schema)
    settings = BuildSettings.from_dict(current.settings.build.to_dict())
    with _rewriting(current, replaced=("model.engine", "layers.json")) as staging:
        say("building the TensorRT engine")
        built, bundle = build_in(staging, settings, current.settings.to_dict(), settings.dla_core)
        write_document(staging / BUNDLE_NAME, bundle)
        seal(staging, current.card, {**current.passport.to_dict(), "built": built})
    return read_bundle(path)


@contextlib.contextmanager
def _rewriting(current: Bundle, replaced: tuple[str, ...]) -> Iterator[Path]:
    """A staging copy of the bundle without `replaced` files (and passport/card), swapped in atomically."""
    with writing(current.path, OutputKind.BUNDLE, overwrite=True) as staging:
        for name in current.card.files:  # what the bundle is made of, nothing else in its folder
            if name not in (*replaced, PASSPORT_NAME):
                shutil.copy2(current.path / name, staging / name)
        yield staging


def reoptimize_bundle(path: str | Path) -> Bundle:
    """`--rebuild` for CPU bundles: re-optimize source.onnx for this machine's ONNX Runtime, or
    convert it again to IR with this machine's OpenVINO (and read back what precision it runs).
    The runtime stays the one the bundle was made for; compile again to measure the others."""
    current = read_bundle(path)
    facts = machine_facts()
    openvino = current.runtime == "openvino"
    if openvino and current.passport.precision in ("bf16", "best") and not native_bf16(facts):
        raise InputError(f"{path} runs BF16 float layers and this CPU has no native BF16; "
                         "--rebuild cannot change its precision",
                         "compile its source again here with --precision fp32 (or int8)")
    int8 = current.passport.precision in ("int8", "best")
    with _rewriting(current, replaced=(IR_MODEL, IR_WEIGHTS) if openvino else (MODEL,)) as staging:
        passport = current.passport.to_dict()
        bundle = current.settings.to_dict()
        if openvino:
            assert current.settings.openvino is not None  # an OpenVINO bundle has them (schema)
            settings = current.settings.openvino
            built, session = openvino_here(staging / SOURCE, staging / IR_MODEL, facts, settings.precision or "fp32",
                                           settings.threads, compile_here=True, int8=int8,
                                           say=lambda _message: None)
        else:
            built, session = optimize_here(staging / SOURCE, staging / MODEL, facts, int8=int8)
            bundle["session"] = {**bundle["session"], "optimization": "disabled"}
        if session is not None:
            session.close()
        passport["built"] = {**built, "rebuilt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_document(staging / BUNDLE_NAME, bundle)
        seal(staging, current.card, passport)
    return read_bundle(path)
