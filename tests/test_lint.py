"""The TensorRT-rules lint on QDQ graphs built in the test."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.quantize.lint import lint_qdq


def _graph(*, zero=0, weight_axis=1, act_scale=(0.1,), residual_qdq=False):
    inits = [
        numpy_helper.from_array(np.array(act_scale, np.float32).reshape(-1) if len(act_scale) > 1
                                else np.array(act_scale[0], np.float32), "a_scale"),
        numpy_helper.from_array(np.array(zero, np.int8) if len(act_scale) == 1
                                else np.zeros(len(act_scale), np.int8), "a_zero"),
        numpy_helper.from_array(np.ones((4, 8), np.int8), "w_q"),
        numpy_helper.from_array(np.full(8 if weight_axis == 1 else 4, 0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(8 if weight_axis == 1 else 4, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w",
                         axis=weight_axis),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="linear"),
        helper.make_node("Add", ["xd" if residual_qdq else "y2", "y"], ["out"], name="residual"),
    ]
    if not residual_qdq:
        nodes.insert(4, helper.make_node("Identity", ["x8"], ["y2"], name="skip"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                     helper.make_tensor_value_info("x8", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def rules(result):
    return sorted({f.rule for f in result.findings})


def test_clean_graph_passes():
    result = lint_qdq(_graph())
    assert result and result.findings == []
    assert result.quantize_nodes == 1 and result.dequantize_nodes == 2


def test_nonzero_zero_point_fails_only_for_tensorrt():
    graph = _graph(zero=3)
    assert rules(lint_qdq(graph, symmetric=True)) == ["zero-point"]
    assert lint_qdq(graph, symmetric=False)


def test_wrong_per_channel_axis():
    result = lint_qdq(_graph(weight_axis=0))
    assert not result and rules(result) == ["per-channel-axis"]


def test_per_channel_activation_scale_is_rejected():
    result = lint_qdq(_graph(act_scale=(0.1, 0.2, 0.3, 0.4)))
    assert "per-tensor-activations" in rules(result) and not result


def test_qdq_on_residual_add_breaks_vit_safe():
    graph = _graph(residual_qdq=True)
    result = lint_qdq(graph, vit_safe=True)
    assert rules(result) == ["vit-safe"] and result.errors[0].node == "residual"
    assert lint_qdq(graph, vit_safe=False)
    onnx.checker.check_model(graph)
