"""The card's preprocessing as ONNX nodes in front of the model (`compile --preprocess-in-graph`).

The bundle then takes raw 0..255 pixels (uint8, or float for DeepStream's nvinfer), so Triton
clients, DeepStream or a C++ program send frames and cannot get the normalization wrong. Every
number comes from the card and from `vitedge.preprocess` (the geometry, the mean/std order), so
the two paths are one contract; tests hold them to each other:

- normalization and channel order: the same float32 operations in the same order as
  `preprocess` (scale, then mean, then std), so outputs match it to the last bits;
- resize and crop (`--frame-size`, a fixed capture size): ONNX Resize-18 with half-pixel
  centres, Pillow's cubic coefficient (-0.5) and its antialiasing filter when downscaling, then
  rounding to whole pixel values as Pillow does, then Slice for the centre crop. Pillow resamples
  in two 8-bit passes, so pixels differ by a level or two (tolerance per interpolation in
  tests/test_ingraph.py). TensorRT's ONNX parser rejects antialiasing (NVIDIA/TensorRT#3560),
  OpenVINO's ignores it, and ONNX has no Lanczos: those are refused (`compile --runtime auto`
  keeps ONNX Runtime) rather than run differently from the model's training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vitedge.card import Interpolation, Preprocessing
from vitedge.errors import InputError
from vitedge.preprocess import Layout, PixelInput, PixelType, geometry

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "image"
_MODES = {Interpolation.NEAREST: "nearest", Interpolation.BILINEAR: "linear", Interpolation.BICUBIC: "cubic"}


# Runtimes whose Resize cannot antialias as Pillow does (downscaling there is another preprocessing)
NO_ANTIALIAS = {
    "tensorrt": "TensorRT's ONNX parser does not support Resize antialiasing (NVIDIA/TensorRT#3560)",
    "openvino": "OpenVINO's ONNX Resize-18 ignores antialias (measured on 2026.4: up to 68 pixel "
                "levels from Pillow's bilinear)",
}


def resize_problem(pre: Preprocessing, pixels: PixelInput, runtime: str) -> str | None:
    """Why a graph for `runtime` cannot resize as the card says (None when it can)."""
    if not pixels.resize:
        return None
    if pre.interpolation not in _MODES:
        return f"ONNX Resize has no {pre.interpolation} interpolation, which this model's card uses"
    new_w, new_h, _left, _top = geometry((pixels.size[1], pixels.size[0]), pre)
    downscale = new_w < pixels.size[1] or new_h < pixels.size[0]
    if runtime in NO_ANTIALIAS and downscale and pre.interpolation is not Interpolation.NEAREST:
        return (f"{NO_ANTIALIAS[runtime]}, and downscaling without it is not the preprocessing the "
                "model was trained with")
    return None


def resize_refusal(pre: Preprocessing, pixels: PixelInput, runtime: str) -> None:
    """Raise the one-line error for a resize `runtime` cannot do as the card says."""
    problem = resize_problem(pre, pixels, runtime)
    if problem:
        raise InputError(f"--frame-size {pixels.size[0]}x{pixels.size[1]}: {problem}",
                         ("compile with --runtime onnxruntime, or " if runtime == "openvino" else "")
                         + "send frames at the model's size (drop --frame-size: the graph still "
                         "normalizes) and resize on the client")


def with_preprocessing(model: onnx.ModelProto, pre: Preprocessing, pixels: PixelInput,
                       *, runtime: str = "onnxruntime") -> onnx.ModelProto:
    """`model` (one NCHW float32 image input) behind the preprocessing nodes, for `runtime`; a new
    model whose input `image` takes `pixels`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    resize_refusal(pre, pixels, runtime)
    if pixels.resize and opset < 18:
        raise InputError(f"the graph is opset {opset}; resizing in the graph as Pillow does needs "
                         "opset 18 (Resize antialiasing)", "export with --opset 18 (the default)")
    original = model.graph.input[0]
    dims = original.type.tensor_type.shape.dim
    if len(dims) != 4 or original.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise InputError(f"the model's input {original.name} is not one NCHW float32 image tensor",
                         "export it with vitedge export")
    names = {n for node in model.graph.node for n in (*node.input, *node.output)}
    if INPUT_NAME in names or any(i.name == INPUT_NAME for i in model.graph.initializer):
        raise InputError(f"the model already has a tensor named {INPUT_NAME!r}", "re-export it")

    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(value, f"preprocess/{name}"))
        return f"preprocess/{name}"

    def node(op: str, inputs: list[str], **attributes: object) -> str:
        output = f"preprocess/{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    current = INPUT_NAME
    if pixels.dtype is PixelType.UINT8:
        current = node("Cast", [current], to=TensorProto.FLOAT)
    if pixels.layout is Layout.NHWC:
        current = node("Transpose", [current], perm=[0, 3, 1, 2])
    if pixels.resize:
        height, width = pre.input_size
        new_w, new_h, left, top = geometry((pixels.size[1], pixels.size[0]), pre)
        if (new_w, new_h) != (pixels.size[1], pixels.size[0]):
            mode = _MODES[pre.interpolation]
            attributes: dict[str, object] = {"mode": mode, "axes": [2, 3]}
            if mode == "nearest":  # Pillow picks the source pixel whose centre is nearest, ties down
                attributes.update(coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
            else:
                attributes.update(coordinate_transformation_mode="half_pixel", antialias=1,
                                  exclude_outside=1, cubic_coeff_a=-0.5)
            current = node("Resize", [current, "", "", constant("sizes", np.array([new_h, new_w], np.int64))],
                           **attributes)
            # Pillow stores the resized image as whole 0..255 values before normalizing
            current = node("Clip", [node("Round", [current]), constant("zero", np.array(0, np.float32)),
                                    constant("full", np.array(255, np.float32))])
        if (left, top, new_w, new_h) != (0, 0, width, height):
            current = node("Slice", [current, constant("starts", np.array([top, left], np.int64)),
                                     constant("ends", np.array([top + height, left + width], np.int64)),
                                     constant("axes", np.array([2, 3], np.int64))])
    current = node("Mul", [current, constant("scale", np.array(pre.scale, np.float32))])
    if pixels.channel_order != pre.channel_order:
        current = node("Gather", [current, constant("channels", np.array([2, 1, 0], np.int64))], axis=1)
    current = node("Sub", [current, constant("mean", np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1))])
    current = node("Div", [current, constant("std", np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1))])

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for existing in graph.node:
        existing.input[:] = [current if name == original.name else name for name in existing.input]
    batch = dims[0].dim_param or dims[0].dim_value or "N"
    shape = [batch, *pixels.shape()]
    element = TensorProto.UINT8 if pixels.dtype is PixelType.UINT8 else TensorProto.FLOAT
    del graph.input[0]
    graph.input.insert(0, helper.make_tensor_value_info(INPUT_NAME, element, shape))
    graph.initializer.extend(constants)
    for position, new in enumerate(nodes):
        graph.node.insert(position, new)
    onnx.checker.check_model(result)
    return result
