"""How much memory a model may ask for by its declared shapes, checked before anything is allocated.

A model file is a user's input like an image: a 300-byte ONNX whose input is declared
1x3x100000x100000 makes preprocessing resize every image to 30 GB and the runtime allocate
120 GB. Every model source (`vitedge.models.load`) and every bundle (`read_bundle`) is checked
here: its input tensor from the card's input size, and every tensor whose shape ONNX shape
inference can tell (dynamic dimensions counted as 1). Above the limit it is refused with one line;
the limit is raised with VITEDGE_MAX_TENSOR_MIB.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vitedge.errors import InputError

if TYPE_CHECKING:
    import onnx

# 2 GiB for one tensor: DeiT-Base's largest at 224x224 and batch 1 is 1.8 MB, ViT-Huge's at
# 518x518 (its attention scores) 120 MB; 2 GiB is also ONNX's own limit for a tensor inside a file.
DEFAULT_MAX_TENSOR_MIB = 2048
MAX_TENSOR_VARIABLE = "VITEDGE_MAX_TENSOR_MIB"

# ONNX TensorProto data types -> bytes per element (unknown types count as 4).
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
                  14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}


def max_tensor_bytes() -> int:
    """The largest tensor a model may declare (VITEDGE_MAX_TENSOR_MIB, default 2048 MiB)."""
    text = os.environ.get(MAX_TENSOR_VARIABLE)
    if text is None:
        return DEFAULT_MAX_TENSOR_MIB << 20
    if not text.strip().isdigit() or int(text) < 1:
        raise InputError(f"{MAX_TENSOR_VARIABLE}={text!r} is not a positive whole number of MiB",
                         f"e.g. {MAX_TENSOR_VARIABLE}=8192 (8 GiB)")
    return int(text) << 20


def _refuse(what: str, tensor: str, shape: tuple[int, ...], size: int) -> None:
    dims = "x".join(str(d) for d in shape)
    raise InputError(f"{what} declares {tensor} of shape {dims} ({_human(size)}), above the "
                     f"{_human(max_tensor_bytes())} limit for one tensor",
                     f"check the model's input size; raise the limit with {MAX_TENSOR_VARIABLE} "
                     "if the model is genuine")


def _human(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def check_input_size(input_size: tuple[int, int], what: object) -> None:
    """Refuse a model whose one-image input (3 x H x W, float32) is above the limit: preprocessing
    would resize every image to that size before any runtime is involved."""
    height, width = (int(v) for v in input_size)
    size = 3 * height * width * 4
    if size > max_tensor_bytes():
        _refuse(str(what), "an input", (1, 3, height, width), size)


def check_graph(model: onnx.ModelProto, what: object) -> None:
    """Refuse a graph with a tensor above the limit: its declared inputs and outputs and every
    shape ONNX shape inference derives (custom operators stop inference, not the check)."""
    import onnx

    graph = model.graph
    if graph.node:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
        except Exception:  # noqa: BLE001 - inference fails on what it does not know; declared shapes remain
            inferred = graph
    else:
        inferred = graph
    limit = max_tensor_bytes()
    for info in (*graph.input, *graph.output, *inferred.value_info, *inferred.output):
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                      for d in tensor.shape.dim)
        count = 1
        for dim in shape:
            count *= dim
        size = count * _ELEMENT_BYTES.get(tensor.elem_type, 4)
        if size > limit:
            _refuse(str(what), f"tensor {info.name!r}", shape, size)
