"""Runtimes: `load(anything)` returns a Session (ONNX Runtime, OpenVINO, TensorRT or the PyTorch
reference).

A bundle is verified first (file hashes, then its passport against this machine): a bundle made
for another runtime version or GPU is refused with the reason, or rebuilt when `rebuild=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vitedge.errors import InputError
from vitedge.models.options import SourceOptions
from vitedge.targets import Backend

if TYPE_CHECKING:
    from vitedge.card import ModelCard
    from vitedge.compile.bundle import Bundle
    from vitedge.runtime.base import Session


def load(source: str | Path, options: SourceOptions | None = None, *, rebuild: bool = False,
         backend: Backend | str | None = None) -> Session:
    """A session for a bundle, an artifact, or any source `vitedge.models.load` accepts.

    backend="onnxruntime" runs a TensorRT bundle's ONNX with ONNX Runtime instead of its engine
    (to check the graph on a machine without TensorRT; the session says so in its description).
    backend="openvino" runs an ONNX graph, or a bundle's plain ONNX, on OpenVINO's CPU plugin with
    FP32 requested (OpenVINO would pick BF16 on CPUs that have it; the session reports what runs).
    The session's `card` holds the model card (labels, preprocessing).
    """
    from vitedge.compile.bundle import is_bundle

    options = options or SourceOptions()
    backend = _backend(backend)
    path = Path(str(source))
    if is_bundle(path):
        given = options.model_specific()
        if given:
            raise InputError(f"{', '.join(given)} cannot apply to the bundle {path}: it holds its model "
                             "and card", "drop them, or vitedge relabel the bundle to change its labels")
        return _load_bundle(path, rebuild=rebuild, backend=backend)
    if backend is Backend.TENSORRT:
        raise InputError(f"backend tensorrt runs TensorRT bundles; {source} is not one",
                         "compile it for a TensorRT target first, or use onnxruntime, openvino or torch")
    from vitedge.models.load import load as load_model

    loaded = load_model(source, **options.kwargs())
    if backend is Backend.OPENVINO and loaded.onnx_path is None:
        raise InputError(f"backend openvino runs ONNX graphs; {source} is a PyTorch model",
                         f"export it first (vitedge export {source} -o DIR), or use torch or onnxruntime")
    if loaded.onnx_path is not None and backend is not Backend.TORCH:
        int8 = _has_qdq(loaded.onnx_path)
        if backend is Backend.OPENVINO:
            from vitedge.runtime.openvino.runner import OpenVinoSession

            return OpenVinoSession(loaded.onnx_path, int8=int8, card=loaded.card, origin=loaded.origin)
        from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession

        return OnnxRuntimeSession(loaded.onnx_path, precision="int8" if int8 else "fp32",
                                  card=loaded.card, origin=loaded.origin)
    from vitedge.runtime.torch import TorchSession

    return TorchSession(loaded)


def _has_qdq(path: Path) -> bool:
    import onnx

    from vitedge.quantize.qdq import quantized_node_names

    return bool(quantized_node_names(onnx.load(str(path), load_external_data=False)))


def _backend(value: Backend | str | None) -> Backend | None:
    if value is None or isinstance(value, Backend):
        return value
    try:
        return Backend(value)
    except ValueError:
        raise InputError(f"backend {value!r} is not known",
                         f"use one of {', '.join(b.value for b in Backend)}") from None


def _load_bundle(path: Path, *, rebuild: bool, backend: Backend | None) -> Session:
    from vitedge.compile.bundle import read_bundle

    bundle = read_bundle(path)
    session = _bundle_session(bundle, rebuild=rebuild, backend=backend)
    session.pixels = bundle.pixels  # every graph of the bundle takes the same input
    return session


def _bundle_session(bundle: Bundle, *, rebuild: bool, backend: Backend | None) -> Session:
    from vitedge.compile.bundle import MODEL, SOURCE
    from vitedge.compile.passport import machine_facts, mismatches
    from vitedge.compile.rebuild import build_bundle
    from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession, available_providers

    path, settings = bundle.path, bundle.settings
    low, _opt, high = settings.batch
    origin = (path.resolve(),)
    if backend is Backend.TORCH:
        raise InputError(f"backend torch cannot run the bundle {path} (it holds ONNX or an engine)",
                         "use onnxruntime, or pass the PyTorch artifact the bundle came from")
    if bundle.runtime == "openvino" and backend in (None, Backend.OPENVINO):
        return _openvino_bundle(bundle, rebuild=rebuild, origin=origin)
    if backend is Backend.OPENVINO:
        from vitedge.runtime.openvino.runner import OpenVinoSession

        if bundle.pixels is not None and bundle.pixels.resize:  # OpenVINO would not resize as compiled
            from vitedge.compile.ingraph import resize_problem

            problem = resize_problem(bundle.card.preprocessing, bundle.pixels, "openvino")
            if problem:
                raise InputError(f"--backend openvino cannot run {path}: it resizes in the graph and {problem}",
                                 "run it on its own runtime (drop --backend)")
        # An ONNX Runtime bundle's model.onnx may hold ONNX Runtime's own fused operators: OpenVINO
        # reads the plain graph it was made from; a TensorRT bundle's model.onnx is plain ONNX.
        plain = bundle.member(SOURCE if bundle.runtime == "onnxruntime" else MODEL)
        session = OpenVinoSession(plain, int8=_has_qdq(plain), min_batch=low, max_batch=high,
                                  card=bundle.card, origin=origin)
        session.description += f" on the bundle's {plain.name} (NOT its {bundle.runtime} runtime)"
        return session
    if bundle.runtime == "onnxruntime":
        if backend is Backend.TENSORRT:
            raise InputError(f"backend tensorrt cannot run the ONNX Runtime bundle {path}",
                             "compile for a TensorRT target, or drop --backend")
        bundle = _matching_cpu_bundle(bundle, rebuild, "re-optimize it here from its source.onnx")
        settings = bundle.settings
        assert settings.session is not None  # an ONNX Runtime bundle's settings have it (schema)
        return OnnxRuntimeSession(
            bundle.file("model"), providers=available_providers(list(settings.session.providers)),
            threads=settings.session.intra_op_threads,
            optimization=settings.session.optimization, precision=bundle.passport.precision,
            min_batch=low, max_batch=high, card=bundle.card, origin=origin)
    if backend is Backend.ONNXRUNTIME:  # a TensorRT or OpenVINO bundle's plain ONNX
        plain = bundle.member(SOURCE if bundle.runtime == "openvino" else MODEL)
        what = "OpenVINO IR" if bundle.runtime == "openvino" else "TensorRT engine"
        return OnnxRuntimeSession(
            plain, precision="int8" if _has_qdq(plain) else "fp32", min_batch=low,
            max_batch=high, card=bundle.card, origin=origin,
            description=f"ONNX Runtime CPU on the bundle's {plain.name} (NOT the {what})")
    if bundle.runtime == "openvino":
        raise InputError(f"backend {backend} cannot run the OpenVINO bundle {path}",
                         "drop --backend, or use onnxruntime to check its source.onnx")
    from vitedge.runtime.tensorrt.runner import TensorRTSession

    if not settings.engine:
        if not rebuild:
            reason = bundle.passport.built.not_built_because
            raise InputError(f"bundle {path} has no TensorRT engine yet ({reason})",
                             f"build it on the {bundle.passport.target.name}: vitedge build "
                             f"{path} (or its trtexec.sh); --backend onnxruntime checks the ONNX")
        bundle = build_bundle(path)
    problems = mismatches(bundle.passport, machine_facts(gpu=True))
    if problems and not rebuild:
        raise InputError(f"bundle {path} does not match this machine: {problems[0]}",
                         "pass --rebuild to build a new engine here, or run it on the machine "
                         "it was built on")
    if problems:
        bundle = build_bundle(path)
    return TensorRTSession(bundle.file("engine"), precision=bundle.passport.precision,
                           card=bundle.card, origin=origin)


def _matching_cpu_bundle(bundle: Bundle, rebuild: bool, fix: str) -> Bundle:
    """The CPU bundle if its passport matches this machine, rebuilt in place with `rebuild`,
    else refused with the first mismatch."""
    from vitedge.compile.passport import machine_facts, mismatches
    from vitedge.compile.rebuild import reoptimize_bundle

    problems = mismatches(bundle.passport, machine_facts())
    if problems and not rebuild:
        raise InputError(f"bundle {bundle.path} does not match this machine: {problems[0]}",
                         f"pass --rebuild to {fix}")
    return reoptimize_bundle(bundle.path) if problems else bundle


def _openvino_bundle(bundle: Bundle, *, rebuild: bool, origin: tuple[Path, ...]) -> Session:
    """An OpenVINO bundle's IR compiled here as its passport says, or refused (or rebuilt)."""
    from vitedge.runtime.openvino.runner import OpenVinoSession

    path = bundle.path
    bundle = _matching_cpu_bundle(bundle, rebuild, "convert its source.onnx again with this OpenVINO")
    settings, passport = bundle.settings, bundle.passport
    assert settings.openvino is not None  # an OpenVINO bundle's settings have it (schema)
    low, _opt, high = settings.batch
    session = OpenVinoSession(bundle.file("model"), weights=bundle.file("weights"),
                              precision=settings.openvino.precision, threads=settings.openvino.threads,
                              performance_hint=settings.openvino.performance_hint,
                              int8=passport.precision in ("int8", "best"), min_batch=low,
                              max_batch=high, card=bundle.card, origin=origin)
    recorded = passport.built.openvino.inference_precision if passport.built.openvino else None
    if recorded and session.inference_precision != recorded:
        session.close()
        raise InputError(f"bundle {path} was compiled to run its float layers in {recorded}; "
                         f"OpenVINO runs them in {session.inference_precision} here",
                         "pass --rebuild to convert it again here, or compile it for this machine")
    return session


# how many folder entries find_reference looks at beyond the recorded paths: a bundle kept in a
# big folder (the home folder's children) is not worth a long walk
_REFERENCE_SCAN = 2000


def find_reference(path: str | Path, *, search: tuple[Path, ...] = ()) -> Path | None:
    """The full-precision artifact a bundle or quantized artifact descends from, if it can be found.

    Cards record their parents by artifact hash and by the folder they were read from. Candidates,
    in order: each recorded folder (used only when the artifact there has the recorded hash: a
    moved or replaced parent is not taken), the shipped models, the artifact folders beside `path`,
    those one level into the folders beside its folder (`bundles/B` finds `artifacts/A`), and
    those in `search`. The newest float ancestor found wins, so an exported ONNX is preferred over
    the PyTorch model it came from; among artifacts with the same files (a relabelled copy), one
    with `path`'s labels.
    """
    from vitedge.artifact import artifact_hash, is_artifact, lineage_parents, read_card
    from vitedge.models.load import BUILTIN_MODELS

    path = Path(path).resolve()
    card = read_card(path)
    parents = lineage_parents(card)
    recorded = [Path(parent["path"]) for parent in parents if isinstance(parent.get("path"), str)
                and Path(parent["path"]).is_absolute()]
    budget = [_REFERENCE_SCAN]

    def children(folder: Path) -> list[Path]:
        try:
            entries = sorted(folder.iterdir())[:max(budget[0], 0)]
        except OSError:
            return []
        budget[0] -= len(entries)
        return [entry for entry in entries if entry.is_dir()]

    def nearby() -> list[Path]:
        folders = [path.parent]
        for sibling in children(path.parent.parent if path.parent.parent != path.parent else path.parent):
            if sibling != path.parent:
                folders.append(sibling)
        return [d for folder in [*folders, *search] for d in children(folder)]

    by_hash: dict[str, list[tuple[Path, ModelCard]]] = {}
    seen: set[Path] = set()
    for candidate in [*recorded, *BUILTIN_MODELS.values(), *nearby()]:
        try:
            key = candidate.resolve()
            if key in seen or key == path or not is_artifact(candidate):
                continue
            seen.add(key)
            other = read_card(candidate)
        except (InputError, OSError):
            continue
        if other.format in ("onnx", "torch") and "quantization" not in other.metrics:
            by_hash.setdefault(artifact_hash(other), []).append((candidate, other))
    for parent in reversed(parents):
        found = by_hash.get(parent["artifact_hash"], [])
        for candidate, other in found:
            if other.labels == card.labels:
                return candidate
        if found:
            return found[0][0]
    return None
