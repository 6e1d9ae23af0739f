"""Artifact + target -> bundle: the model prepared for one runtime, with its passport.

ONNX Runtime targets get the graph optimized offline for ONNX Runtime's CPU provider (when this
machine has the target's ISA), the unoptimized graph for `--rebuild`, and session settings.
TensorRT targets get the ONNX the engine is built from, the build settings and the equivalent
trtexec line; the engine itself is built here only when TensorRT imports and the local GPU is
the target's, otherwise on the device with `vitedge build BUNDLE`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.artifact import artifact_hash, atomic_write_text, derive_card, sha256_file
from vitedge.card import ModelCard, Preprocessing
from vitedge.compile.bundle import BUNDLE_NAME, MODEL, Bundle, read_bundle, seal
from vitedge.compile.cpu import cpu_bundle
from vitedge.compile.passport import machine_facts, make_passport
from vitedge.documents import write_document
from vitedge.errors import InputError
from vitedge.locks import releasing, temporary_directory
from vitedge.models.loaded import LoadedModel
from vitedge.models.options import SourceOptions
from vitedge.outputs import OutputKind, check_output, writing
from vitedge.preprocess import Layout, PixelInput, PixelType, parse_size
from vitedge.quantize.lint import Finding, check_tensorrt_ops, lint_qdq
from vitedge.runtime.openvino.loader import bf16_here
from vitedge.runtime.tensorrt.loader import (
    FP16_MODEL,
    BuildSettings,
    build_settings,
    fp16_onnx,
    image_input,
    trtexec_command,
)
from vitedge.targets import (
    CompilePrecision,
    CompileRuntime,
    Precision,
    Runtime,
    Scheme,
    Target,
    load_target,
)

if TYPE_CHECKING:
    import onnx


TRTEXEC_SCRIPT = "trtexec.sh"


def parse_batch(text: str | None, target: Target) -> tuple[int, int, int]:
    """'8' is a fixed batch (8, 8, 8); '1:8:16' is min:opt:max; None is the target's profile."""
    if text is None:
        return target.batch.min, target.batch.opt, target.batch.max
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise InputError(f"--batch {text!r} is not a batch size or min:opt:max",
                         "give e.g. 1 (fixed) or 1:8:16 (1 <= min <= opt <= max)")
    return values[0], values[1], values[2]


def pixel_input(pre: Preprocessing, in_graph: bool, size: str | tuple[int, int] | None,
                channel_order: str, layout: Layout | str, dtype: PixelType | str) -> PixelInput | None:
    """The raw-pixel input asked for, checked (None without --preprocess-in-graph)."""
    asked = [name for name, value, default in (("--frame-size", size, None),
                                               ("--channel-order", channel_order, "RGB"),
                                               ("--input-layout", layout, Layout.NHWC),
                                               ("--input-dtype", dtype, PixelType.UINT8))
             if value is not None and str(value) != str(default)]
    if not in_graph:
        if asked:
            raise InputError(f"{', '.join(asked)} describe(s) the raw frames of a graph with the "
                             "preprocessing inside", "add --preprocess-in-graph")
        return None
    if isinstance(size, str):
        size = parse_size(size, "--frame-size", "480x640 (the capture size)")
    if str(channel_order).upper() not in ("RGB", "BGR"):
        raise InputError(f"--channel-order {channel_order!r} is not RGB or BGR",
                         "BGR for OpenCV frames, RGB for most others")
    try:
        layout, dtype = Layout(str(layout).upper()), PixelType(str(dtype).lower())
    except ValueError as exc:
        raise InputError(f"{exc}", "--input-layout NHWC|NCHW, --input-dtype uint8|float32") from None
    return PixelInput(size=size or pre.input_size, layout=layout,
                      channel_order=str(channel_order).upper(), dtype=dtype, resize=size is not None)


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def resolve_precision(requested: CompilePrecision | None, target: Target, int8_graph: bool,
                      source: str, *, bf16: bool | None = False) -> CompilePrecision:
    """What the bundle runs: the request checked against the target and the graph (BEST is
    resolved to what it means here; it stays BEST only for INT8 with FP16 float layers on
    TensorRT, or BF16 float layers on OpenVINO). `bf16`: whether this machine, which has the
    target's ISA, runs bf16 natively (None: another ISA, unknown until the device runs it)."""
    if requested is None:  # a quantized graph runs INT8 (+ FP16 float layers where the target has it)
        requested = CompilePrecision.BEST if int8_graph and target.runtime is Runtime.TENSORRT \
            else CompilePrecision.INT8 if int8_graph else CompilePrecision(target.default_precision)
    if requested is CompilePrecision.BEST:
        half = Precision.FP16 if target.runtime is Runtime.TENSORRT else Precision.BF16
        has_half = half in target.precisions and (half is Precision.FP16 or bool(bf16))
        if int8_graph:
            return CompilePrecision.BEST if has_half else CompilePrecision.INT8
        return CompilePrecision(half.value) if has_half else CompilePrecision.FP32
    if requested is CompilePrecision.BF16 and Precision.BF16 in target.precisions and bf16 is False:
        raise InputError("--precision bf16: this CPU has no native BF16 (AVX512_BF16 or AMX), so "
                         "OpenVINO would not run it as bf16 here",
                         "compile bf16 on a CPU that has it, or use --precision fp32")
    if Precision(requested.value) not in target.precisions:
        raise InputError(f"target {target.name} cannot run {requested} (it supports "
                         f"{', '.join(target.precisions)})",
                         f"pass --precision {target.default_precision}, or pick another --target")
    if requested is CompilePrecision.INT8 and not int8_graph:
        raise InputError(f"--precision int8 needs a quantized (QDQ) model, and {source} is float",
                         f"quantize it first: vitedge quantize {source} --calib DATA "
                         f"--target {target.name} -o INT8_DIR, then compile INT8_DIR")
    if requested is not CompilePrecision.INT8 and int8_graph:
        raise InputError(f"{source} is quantized (QDQ INT8); it cannot be compiled as {requested}",
                         "compile it with --precision int8 (or best), or compile its float parent")
    return requested


def _findings(model: onnx.ModelProto, target: Target, int8_graph: bool) -> list[Finding]:
    findings: list[Finding] = []
    if int8_graph:
        # compile enforces the runtime's rules only; ViT-safety was the quantizer's choice
        findings += lint_qdq(model, symmetric=target.int8_scheme is Scheme.SYMMETRIC,
                             vit_safe=False).findings
    if target.runtime is Runtime.TENSORRT:
        findings += check_tensorrt_ops(model, target.tensorrt or "10")
    return findings


def local_tensorrt_match(target: Target) -> str | None:
    """None when this machine can build the target's engine, else why not."""
    facts = machine_facts()
    if not facts["tensorrt"]:
        return "TensorRT is not installed on this machine"
    gpu = facts["gpu"] or {}
    if not gpu:
        return "this machine has no CUDA GPU that torch can see"
    if target.compute_capability not in ("detect", gpu["sm"]):
        return f"this GPU is SM {gpu['sm']} ({gpu['name']}), the target is SM {target.compute_capability}"
    if target.l4t and (facts["l4t"] or "").split(".")[0] != target.l4t.split(".")[0]:
        return f"this machine runs L4T {facts['l4t'] or 'none'}, the target needs L4T {target.l4t}"
    return None


@releasing
def compile_bundle(model: LoadedModel | str | Path, target: Target | str | Path, out: str | Path, *,
                   precision: CompilePrecision | str | None = None,
                   runtime: CompileRuntime | str | None = None, batch: str | None = None,
                   dla_core: int | None = None, overwrite: bool = False, build: bool = True,
                   source_label: str | None = None, options: SourceOptions | None = None,
                   preprocess_in_graph: bool = False, frame_size: str | tuple[int, int] | None = None,
                   channel_order: str = "RGB", input_layout: Layout | str = Layout.NHWC,
                   input_dtype: PixelType | str = PixelType.UINT8, weigh_best: bool = True,
                   progress: Callable[[str], None] | None = None,
                   tick: Callable[[int, int, str], None] | None = None) -> Bundle:
    """Write the bundle of `model` (loaded, or a source read with `options`) for `target` (a
    profile, or its name / .toml path) at `out`, atomically: nothing is left on failure.

    `runtime` (CPU targets): onnxruntime, openvino, or auto (the default: every runtime the
    target lists is built and timed here when this machine has the target's ISA, the fastest kept).
    `preprocess_in_graph`: the card's preprocessing goes into the graph, which then takes raw
    0..255 pixels (`input_dtype`, `input_layout`, frames in `channel_order`) at the model's size,
    or at `frame_size` (height, width or 'HxW': a capture size, resized and cropped inside).
    `precision` best on a CPU with native BF16 times BF16 float layers against FP32 ones here and
    keeps the faster; `weigh_best=False` keeps BF16 (`vitedge optimize` weighs both as candidates).
    `progress(message)`: each step; `tick(index, total, label)`: each round of timing the runtimes."""
    import onnx

    from vitedge.models.load import as_loaded

    say = progress or (lambda _message: None)
    if not isinstance(target, Target):
        target = load_target(target)  # an unknown target fails before the model is loaded
    if source_label is None and not isinstance(model, LoadedModel):
        source_label = str(model)
    batch_profile = parse_batch(batch, target)
    requested_runtime = _runtime(runtime, target)
    if precision is not None and not isinstance(precision, CompilePrecision):
        try:
            precision = CompilePrecision(precision)
        except ValueError:
            raise InputError(f"--precision {precision!r} is not one of "
                             f"{', '.join(p.value for p in CompilePrecision)}") from None
    if dla_core is not None and not 0 <= dla_core < target.dla_cores:
        raise InputError(f"--dla-core {dla_core} does not exist on {target.name} "
                         f"({target.dla_cores} DLA core(s))",
                         "leave --dla-core out to run on the GPU" if not target.dla_cores else
                         f"pick 0..{target.dla_cores - 1}")
    loaded = as_loaded(model, options)
    pixels = pixel_input(loaded.card.preprocessing, preprocess_in_graph, frame_size, channel_order,
                         input_layout, input_dtype)
    if pixels is not None:  # refused before anything is done or said
        from vitedge.compile.ingraph import NO_ANTIALIAS, resize_problem, resize_refusal

        if target.runtime is not Runtime.TENSORRT and requested_runtime is CompileRuntime.AUTO \
                and resize_problem(loaded.card.preprocessing, pixels, "openvino"):
            say("keeping ONNX Runtime: " + NO_ANTIALIAS["openvino"])
            requested_runtime = CompileRuntime.ONNXRUNTIME
        resize_refusal(loaded.card.preprocessing, pixels, _graph_runtime(target, requested_runtime))
    inputs = loaded.origin
    check_output(out, OutputKind.BUNDLE, overwrite=overwrite, inputs=inputs)
    with temporary_directory("compile") as tmp:
        from vitedge.export import ensure_onnx

        source_path = ensure_onnx(loaded, Path(tmp), say)
        model = onnx.load(str(source_path))
        if pixels is not None:
            from vitedge.compile.ingraph import with_preprocessing

            say(f"putting the preprocessing in the graph: it takes {pixels.describe()}")
            model = with_preprocessing(model, loaded.card.preprocessing, pixels,
                                       runtime=_graph_runtime(target, requested_runtime))
            source_path = Path(tmp) / "preprocessed.onnx"
            onnx.save_model(model, str(source_path))
        int8_graph = is_qdq(model)
        facts = machine_facts()
        same_isa = target.isa in (None, facts["arch"])
        bf16 = None if not same_isa else Precision.BF16 in target.precisions and bf16_here()
        if requested_runtime is CompileRuntime.ONNXRUNTIME and precision is CompilePrecision.BEST:
            bf16 = False  # ONNX Runtime's best on the CPU is fp32 (int8 for a quantized graph)
        resolved = resolve_precision(precision, target, int8_graph,
                                     source_label or loaded.card.architecture, bf16=bf16)
        if dla_core is not None and resolved == "fp32":
            raise InputError("DLA cores run FP16 or INT8, not fp32",
                             "pass --precision fp16 (or int8 with a quantized model)")
        input_name, input_shape = image_input(model)
        findings = _findings(model, target, int8_graph)
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            raise InputError(f"{target.name} cannot take this graph: {errors[0].message} "
                             f"(at {errors[0].node}" + (f"; {len(errors) - 1} more finding(s)"
                                                        if len(errors) > 1 else "") + ")",
                             _fix_hint(errors[0], target))
        with writing(out, OutputKind.BUNDLE, overwrite=overwrite, inputs=inputs) as staging:
            if target.runtime is not Runtime.TENSORRT:
                bundle, built, resolved = cpu_bundle(staging, source_path, target, requested_runtime,
                                                     resolved, int8_graph, batch_profile, facts, say,
                                                     best=weigh_best and precision is CompilePrecision.BEST,
                                                     tick=tick)
            else:
                bundle, built = _tensorrt_bundle(staging, model, source_path, target, resolved,
                                                 batch_profile, dla_core, build, say)
            bundle.update({"target": target.name, "precision": resolved,
                           "input": {"name": input_name, "shape": list(input_shape)},
                           "batch": list(batch_profile),
                           "pixels": pixels.to_dict() if pixels is not None else None})
            write_document(staging / BUNDLE_NAME, bundle)
            card = _bundle_card(loaded.card, target, resolved, batch_profile, bundle, source_path)
            passport = make_passport(
                target={k: v for k, v in target.to_dict().items() if k != "path"}, precision=resolved,
                source_hash=(artifact_hash(loaded.card) if loaded.card.files
                             else sha256_file(source_path)),
                input_info={**bundle["input"], "batch": bundle["batch"]}, files={},
                runtime={"name": bundle["runtime"]}, built=built,
                int8_mac_share=loaded.card.int8_mac_share)
            seal(staging, card, passport)
    written = read_bundle(out)  # what a device will read, so callers see exactly that
    written.findings = findings
    return written


def _runtime(value: CompileRuntime | str | None, target: Target) -> CompileRuntime:
    try:
        runtime = CompileRuntime(value) if value is not None else CompileRuntime.AUTO
    except ValueError:
        raise InputError(f"--runtime {value!r} is not one of "
                         f"{', '.join(r.value for r in CompileRuntime)}") from None
    if target.runtime is Runtime.TENSORRT and runtime not in (CompileRuntime.AUTO, CompileRuntime.TENSORRT):
        raise InputError(f"target {target.name} runs TensorRT engines, not {runtime}",
                         "drop --runtime, or pick a CPU --target (x86-cpu, arm64-cpu)")
    return runtime


def _graph_runtime(target: Target, requested: CompileRuntime) -> str:
    return "tensorrt" if target.runtime is Runtime.TENSORRT else str(requested)


def _fix_hint(finding: Finding, target: Target) -> str:
    if finding.rule.startswith("tensorrt"):
        return (f"TensorRT {target.tensorrt} cannot parse it; vitedge exports opset 17/18 with "
                "LayerNormalization, which needs TensorRT >= 8.6 (JetPack 6 for Jetson)")
    return ("re-quantize for this target: vitedge quantize SRC --calib DATA "
            f"--target {target.name} (TensorRT needs symmetric INT8: zero-points 0)")


def _tensorrt_bundle(staging: Path, model: onnx.ModelProto, source_path: Path, target: Target,
                     precision: str, batch: tuple[int, int, int], dla_core: int | None,
                     build: bool, say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    import onnx

    shutil.copyfile(source_path, staging / MODEL)
    settings = build_settings(model, target, precision, batch, dla_core, MODEL)
    if settings.onnx == FP16_MODEL:
        say("writing the FP16 ONNX (LayerNorm, Softmax and reductions stay FP32)")
        onnx.save_model(fp16_onnx(model), str(staging / FP16_MODEL))
    command = trtexec_command(settings)
    script = staging / TRTEXEC_SCRIPT
    atomic_write_text(script, "#!/bin/sh\n# Builds the same engine as `vitedge build` on the device.\n"
                              f'cd "$(dirname "$0")" && {command}\n')
    script.chmod(0o755)
    bundle = {"runtime": "tensorrt", "build": settings.to_dict(), "trtexec": command,
              "engine": None, "layers": None}
    reason = local_tensorrt_match(target) if build else "--no-build was given"
    built: dict[str, Any] = {"engine": None, "not_built_because": reason}
    if reason is None:
        say("building the TensorRT engine (minutes on a Jetson)")
        built, bundle = build_in(staging, settings, bundle, dla_core)
    return bundle, built


def build_in(directory: Path, settings: BuildSettings, bundle: dict[str, Any],
             dla_core: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the engine into `directory`; return the passport's `built` and the updated bundle."""
    from vitedge.runtime.tensorrt.loader import ENGINE, build_engine

    started = time.perf_counter()
    layers = build_engine(directory, settings)
    facts = machine_facts(gpu=True)
    gpu = facts["gpu"] or {}
    engine = {"tensorrt": facts["tensorrt"], "sm": gpu.get("sm"), "gpu": gpu.get("name"),
              "cuda": gpu.get("cuda"), "cudnn": gpu.get("cudnn"), "driver": gpu.get("driver"),
              "l4t": facts["l4t"], "jetpack": facts["jetpack"], "dla_core": dla_core,
              "build_seconds": round(time.perf_counter() - started, 1),
              "layers_by_precision": layers["by_precision"], "layers_on_dla": layers["on_dla"]}
    return ({"engine": engine, "not_built_because": None},
            {**bundle, "engine": ENGINE, "layers": "layers.json"})


def _bundle_card(parent: ModelCard, target: Target, precision: str, batch: tuple[int, int, int],
                 bundle: dict[str, Any], source_path: Path) -> ModelCard:
    params = {"target": target.name, "runtime": bundle["runtime"], "precision": str(precision),
              "batch": list(batch), **({"preprocess_in_graph": bundle["pixels"]} if bundle["pixels"] else {})}
    card = derive_card(parent, "compile", format="bundle", params=params,
                       tools=("onnx", "onnxruntime", "openvino", "tensorrt"),
                       unsaved_parent={"onnx_sha256": sha256_file(source_path)})
    card.source = {**parent.source, "bundle": params}
    return card
