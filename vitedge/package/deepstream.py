"""`vitedge package BUNDLE --for deepstream`: an nvinfer classifier config and a deepstream-app config.

What DeepStream's Gst-nvinfer does before the model, and what vitedge writes for it:
- It scales each frame (or object crop) to the network's size as a whole: no centre crop. The
  config says `maintain-aspect-ratio=0` (squash) and the card's filter as `scaling-filter`; a
  card with a centre crop (timm's crop_pct) is not reproduced, and the README says so.
- It normalizes with one factor for all channels: y = net-scale-factor * (x - offsets[c]), x in
  0..255. A card whose std is the same for every channel maps exactly (net-scale-factor =
  scale / std, offsets = mean / scale). ImageNet's per-channel std cannot: such bundles are
  refused unless compiled with `--preprocess-in-graph --input-dtype float32` (nvinfer feeds float
  tensors), whose graph normalizes itself; nvinfer then passes the pixels through
  (net-scale-factor 1, no offsets; the 1/255 is inside the graph, so nvinfer must not apply it too).
- Its default classifier parser reads the output as probabilities: the packaged ONNX is the
  bundle's graph with a Softmax appended (output `probabilities`), checked against the bundle's
  graph run by ONNX Runtime here. The bundle's own engine was built from the graph without the
  Softmax, so `build_engine.sh` builds this one on the device with the bundle's trtexec settings.

Every key written is checked against the nvinfer property table and the deepstream-app groups
(vitedge/assets/deepstream_keys.json, which cites the DeepStream versions).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vitedge.errors import InputError

if TYPE_CHECKING:
    import onnx

    from vitedge.compile.bundle import Bundle

KEYS = Path(__file__).resolve().parents[1] / "assets" / "deepstream_keys.json"
INFER_CONFIG = "config_infer_primary.txt"
APP_CONFIG = "deepstream_app_config.txt"
MODEL = "model.onnx"
LABELS = "labels.txt"
OUTPUT = "probabilities"
SOFTMAX = "vitedge/softmax"
NETWORK_MODE = {"fp32": 0, "int8": 1, "best": 1, "fp16": 2}  # nvinfer: 0=FP32, 1=INT8, 2=FP16
# nvbufsurftransform.h NvBufSurfTransform_Inter: 0 Nearest, 1 Bilinear, 2 Algo1 (GPU cubic),
# 4 Algo3 (GPU Lanczos)
SCALING_FILTER = {"nearest": 0, "bilinear": 1, "bicubic": 2, "lanczos": 4}


@dataclass(frozen=True)
class DeepStreamOptions:
    camera: int = 0  # /dev/videoN for the deepstream-app source
    camera_size: tuple[int, int] | None = None  # (height, width); default: the bundle's frame size or 720p
    threshold: float = 0.0  # classifier-threshold: attach the top label when its probability exceeds it


@cache
def known_keys() -> dict[str, Any]:
    return json.loads(KEYS.read_text())


def check_keys(sections: dict[str, dict[str, Any]], table: dict[str, list[str]]) -> None:
    """Refuse any group or key the DeepStream table does not list (sourceN/sinkN share a group)."""
    for section, values in sections.items():
        group = re.sub(r"\d+$", "", section)
        if group not in table:
            raise InputError(f"[{section}] is not a DeepStream config group vitedge knows", "report this")
        unknown = sorted(set(values) - set(table[group]))
        if unknown:
            raise InputError(f"[{section}] keys {unknown} are not in DeepStream's table", "report this")


def config_text(sections: dict[str, dict[str, Any]], comments: dict[str, str] | None = None) -> str:
    """GLib key-file text (what nvinfer and deepstream-app parse); `comments` by "section.key"."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if comments and f"{section}.{key}" in comments:
                lines.append(f"# {comments[section + '.' + key]}")
            lines.append(f"{key}={value}")
        lines.append("")
    return "\n".join(lines)


def parse_config(text: str) -> dict[str, dict[str, str]]:
    """A key file read back (configparser reads the same INI subset GLib's key files use)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=("#",))
    parser.optionxform = str  # keys are case sensitive
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def normalization(bundle: Bundle) -> tuple[dict[str, Any], str]:
    """nvinfer's preprocessing keys for the bundle, and a sentence on how exact they are."""
    pre = bundle.card.preprocessing
    pixels = bundle.pixels
    if pixels is not None:
        if pixels.dtype != "float32":
            raise InputError("nvinfer feeds float tensors, and this bundle's graph takes uint8 pixels",
                             "compile it again with --preprocess-in-graph --input-dtype float32")
        return ({"net-scale-factor": 1.0, "offsets": "0;0;0",
                 "model-color-format": 0 if pixels.channel_order == "RGB" else 1,
                 "network-input-order": 0 if pixels.layout == "NCHW" else 1},
                "the graph normalizes (compiled with --preprocess-in-graph): nvinfer passes 0..255 "
                "pixels through")
    if max(pre.std) - min(pre.std) > 1e-6 * max(pre.std):
        raise InputError(f"DeepStream's nvinfer normalizes with one net-scale-factor for all channels, "
                         f"and this model's std {list(pre.std)} differs per channel",
                         "compile with --preprocess-in-graph --input-dtype float32 --input-layout NCHW "
                         "so the graph normalizes, then package that bundle")
    factor = pre.scale / pre.std[0]
    offsets = ";".join(f"{m / pre.scale:.6g}" for m in pre.mean)
    return ({"net-scale-factor": f"{factor:.9g}", "offsets": offsets,
             "model-color-format": 0 if pre.channel_order == "RGB" else 1, "network-input-order": 0},
            f"exact: (x * {pre.scale:.6g} - mean) / std = {factor:.6g} * (x - mean / {pre.scale:.6g})")


def with_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its logits turned into probabilities, output `probabilities`."""
    import onnx
    from onnx import helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    logits = graph.output[0]
    if len(graph.output) != 1 or len(logits.type.tensor_type.shape.dim) != 2:
        raise InputError("nvinfer's classifier takes one (batch, classes) output; this graph has "
                         f"{len(graph.output)} output(s)", "package a classifier bundle")
    graph.node.append(helper.make_node("Softmax", [logits.name], [OUTPUT], name=SOFTMAX, axis=-1))
    probabilities = onnx.ValueInfoProto()
    probabilities.CopyFrom(logits)
    probabilities.name = OUTPUT
    del graph.output[0]
    graph.output.append(probabilities)
    onnx.checker.check_model(result)
    return result


def same_model(original: Path, packaged: Path, batch: int) -> dict[str, Any]:
    """ONNX Runtime runs the bundle's graph and the packaged one: softmax(logits) == probabilities."""
    import numpy as np

    from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession
    from vitedge.runtime.parity import max_abs_diff

    bundle_graph, packaged_graph = OnnxRuntimeSession(original), OnnxRuntimeSession(packaged)
    inputs = bundle_graph.random_batch(batch)
    logits = bundle_graph.infer(inputs).astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    diff = max_abs_diff(packaged_graph.infer(inputs), expected)
    if diff > 1e-5:
        raise InputError(f"the packaged graph's probabilities differ from the bundle's (max |diff| {diff:.3g})",
                         "report this with the bundle")
    return {"checked": True, "how": "ONNX Runtime ran the bundle's graph and the packaged one (softmax "
            "appended) on seeded inputs", "max_abs_diff": diff, "samples": batch}


def package_deepstream(bundle_path: str | Path, out: str | Path, *, options: DeepStreamOptions | None = None,
                       overwrite: bool = False, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the nvinfer and deepstream-app configs for the TensorRT bundle at `bundle_path`."""
    import onnx

    from vitedge.compile.bundle import read_bundle
    from vitedge.locks import atomic_write_text
    from vitedge.outputs import OutputKind, check_output, writing
    from vitedge.package import write_manifest
    from vitedge.runtime.tensorrt.loader import ENGINE, BuildSettings, trtexec_command

    say = say or (lambda _message: None)
    options = options or DeepStreamOptions()
    bundle = read_bundle(bundle_path)
    if bundle.runtime != "tensorrt":
        raise InputError(f"--for deepstream needs a TensorRT bundle; {bundle_path} runs {bundle.runtime} "
                         f"(target {bundle.passport.target.name})",
                         "compile it for the device: vitedge compile SRC --target jetson-orin-nano "
                         "(or desktop-gpu, jetson-orin-nx, ...) -o BUNDLE")
    keys, exactness = normalization(bundle)
    labels = bundle.card.labels or [str(i) for i in range(bundle.card.num_classes or 0)]
    if not labels:
        raise InputError("nvinfer's classifier needs the class count; this bundle's card has no labels "
                         "or num_classes", "vitedge relabel the source with --labels, then compile again")
    check_output(out, OutputKind.PACKAGE, overwrite=overwrite, inputs=[Path(bundle_path)])
    settings = bundle.settings
    assert settings.build is not None  # a TensorRT bundle's settings have it (schema)
    build = BuildSettings.from_dict(settings.build.to_dict())
    source = bundle.file("onnx")
    packaged = with_softmax(onnx.load(str(source)))
    pre = bundle.card.preprocessing
    low, opt, high = settings.batch
    pixels = bundle.pixels
    camera = options.camera_size or (tuple(pixels.size) if pixels is not None and pixels.resize else (720, 1280))
    infer = {"property": {
        "gpu-id": 0, "onnx-file": MODEL, "model-engine-file": ENGINE, "labelfile-path": LABELS,
        "batch-size": high, "network-mode": NETWORK_MODE[str(bundle.passport.precision)],
        "network-type": 1, "process-mode": 1, "gie-unique-id": 1, "output-blob-names": OUTPUT,
        "classifier-threshold": options.threshold, **keys,
        "maintain-aspect-ratio": 0, "scaling-filter": SCALING_FILTER[str(pre.interpolation)]}}
    comments = {
        "property.network-mode": "only used when nvinfer builds the engine itself (no model.engine): run "
                        "./build_engine.sh first for vitedge's exact build (INT8 scales come from the "
                        "graph's Q/DQ nodes; no calibration file is used)",
        "property.net-scale-factor": f"normalization: {exactness}",
        "property.maintain-aspect-ratio": f"nvinfer squashes the whole frame to {pre.input_size[0]}x"
                                 f"{pre.input_size[1]}; the card's {pre.resize_mode} (crop_pct "
                                 f"{pre.crop_pct}) is not reproduced",
    }
    app = {
        "application": {"enable-perf-measurement": 1, "perf-measurement-interval-sec": 5},
        "tiled-display": {"enable": 0},
        "source0": {"enable": 1, "type": 1, "camera-v4l2-dev-node": options.camera,
                    "camera-width": camera[1], "camera-height": camera[0], "camera-fps-n": 30,
                    "camera-fps-d": 1},
        "streammux": {"gpu-id": 0, "live-source": 1, "batch-size": 1, "batched-push-timeout": 40000,
                      "width": camera[1], "height": camera[0], "enable-padding": 0},
        "primary-gie": {"enable": 1, "gpu-id": 0, "gie-unique-id": 1, "config-file": INFER_CONFIG,
                        "batch-size": 1},
        "osd": {"enable": 1, "text-size": 15},
        "sink0": {"enable": 1, "type": 2, "sync": 0},
    }
    table = known_keys()
    with writing(out, OutputKind.PACKAGE, overwrite=overwrite, inputs=[Path(bundle_path)]) as staging:
        onnx.save_model(packaged, str(staging / MODEL))
        say("checking the packaged graph against the bundle's")
        parity = same_model(source, staging / MODEL, min(max(opt, low), high))
        infer_text = config_text(infer, comments)
        app_text = config_text(app, {"source0.type": "1 = V4L2 camera (/dev/videoN); 2 = URI, e.g. an RTSP stream",
                                     "sink0.type": "2 = EGL window; 1 = fakesink on headless devices"})
        for text, table_part in ((infer_text, table["nvinfer"]), (app_text, table["deepstream_app"])):
            check_keys(parse_config(text), table_part)  # what DeepStream will read
        atomic_write_text(staging / INFER_CONFIG, infer_text)
        atomic_write_text(staging / APP_CONFIG, app_text)
        # nvinfer's classifier label file: one line per output layer, the classes separated by ';'
        atomic_write_text(staging / LABELS, ";".join(label.replace(";", ",") for label in labels) + "\n")
        # the appended Softmax stays FP32 in an FP16 build, like the graph's own (compile's FP32_OPS)
        command = trtexec_command(replace(build, onnx=MODEL, fp32_layers=(*build.fp32_layers, SOFTMAX)))
        script = staging / "build_engine.sh"
        atomic_write_text(script, "#!/bin/sh\n# Builds model.engine on the device with the bundle's TensorRT "
                                  f'settings (precision {bundle.passport.precision}).\ncd "$(dirname "$0")" && '
                                  f"{command}\n")
        script.chmod(0o755)
        atomic_write_text(staging / "README.md", _readme(bundle, exactness, parity, camera))
        write_manifest(staging, bundle, "deepstream", normalization=exactness, parity=parity)
    return {"out": Path(out), "infer_config": Path(out) / INFER_CONFIG, "app_config": Path(out) / APP_CONFIG,
            "parity": parity, "normalization": exactness}


def _readme(bundle: Bundle, exactness: str, parity: dict[str, Any], camera: tuple[int, int]) -> str:
    pre = bundle.card.preprocessing
    engine = bundle.passport.built.engine
    return "\n".join([
        f"# DeepStream classifier: {bundle.card.architecture}", "",
        f"From the TensorRT bundle for {bundle.passport.target.name} ({bundle.passport.precision}).", "",
        "## Run it on the device", "", "```",
        "./build_engine.sh        # model.engine with the bundle's TensorRT settings (minutes on a Jetson)",
        f"deepstream-app -c {APP_CONFIG}   # camera /dev/video0 at {camera[1]}x{camera[0]}, labels on screen",
        "```", "",
        f"`{INFER_CONFIG}` is the nvinfer config (primary classifier, full frames); use it in your own "
        "pipeline as `nvinfer config-file-path=" + INFER_CONFIG + "`.", "",
        "## What nvinfer does differently from vitedge", "",
        f"- Normalization: {exactness}.",
        f"- Geometry: nvinfer scales the whole frame to {pre.input_size[0]}x{pre.input_size[1]} "
        f"(aspect not kept, no centre crop); vitedge's path is {pre.resize_mode} with crop_pct {pre.crop_pct}. "
        "Expect agreement to depend on how the camera frames the object.",
        "- Output: the packaged graph ends in a Softmax (`probabilities`), which nvinfer's classifier "
        "parser expects; `classifier-threshold` drops labels below it.", "",
        "## Checked when packaged", "",
        "- Every key is one of nvinfer's / deepstream-app's (vitedge/assets/deepstream_keys.json, "
        "DeepStream 6.0-8.0 tables), and both files parse as key files.",
        f"- Packaged graph vs the bundle's: {parity['how']}; max |diff| {parity['max_abs_diff']:.3g}.",
        f"- TensorRT: build_engine.sh runs the bundle's settings (written for TensorRT "
        f"{bundle.settings.build.tensorrt if bundle.settings.build else '?'})"
        + (f"; the bundle's engine was built with {engine.tensorrt}" if engine else
           "; the bundle's engine was not built here") + ".",
        "- Not run here: DeepStream or TensorRT (no GPU with them in the packaging environment).", ""])
