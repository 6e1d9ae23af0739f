"""The quantization report: measured evidence (latency, per-layer SQNR, drift) and its Markdown."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.drift import DriftThresholds, compare, topk_accuracy
from vitedge.formatting import number, percent
from vitedge.machine_load import LoadWatch
from vitedge.models.names import module_names
from vitedge.quantize.qdq import dq_consumers, quantized_node_names
from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession
from vitedge.versions import tool_versions

if TYPE_CHECKING:
    import onnx

    from vitedge.card import ModelCard
    from vitedge.data import DataSet
    from vitedge.quantize.lint import LintResult
    from vitedge.quantize.qdq import ComputeNode
    from vitedge.quantize.recipes import Budget, QuantSettings
    from vitedge.quantize.search import Evaluation, Search
    from vitedge.targets import Target


REPORT_JSON = "quant_report.json"  # beside a quantized model: what quantize measured (sealed)
REPORT_MD = "quant_report.md"


def latency_ms(model: onnx.ModelProto | Path, shape: tuple[int, ...], runs: int = 30,
               warmup: int = 5) -> dict[str, float]:
    """ONNX Runtime CPU latency at one shape: median and p95 in milliseconds."""
    timed = OnnxRuntimeSession(model).latency(shape[0], runs, warmup)
    return {"p50": timed["p50_ms"], "p95": timed["p95_ms"]}


def layer_sqnr(float_model: onnx.ModelProto, quantized: onnx.ModelProto, names: list[str],
               data: np.ndarray) -> dict[str, float]:
    """SQNR (dB) of each named node's output in the QDQ graph against the float graph.

    Hand-written rather than onnxruntime.quantization.qdq_loss_debug: that tool matches tensors
    by the names ONNX Runtime's own quantizer gives them, which NNCF's graphs do not use.
    """
    import onnx

    def with_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        by_name = {n.name: n for n in copy.graph.node}
        tensors = [by_name[n].output[0] for n in names if n in by_name]
        existing = {o.name for o in copy.graph.output}
        for tensor in tensors:
            if tensor not in existing:
                copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
        return copy, tensors

    results: dict[str, float] = {}
    float_copy, tensors = with_outputs(float_model)
    quant_copy, _ = with_outputs(quantized)
    outputs = [OnnxRuntimeSession(m).infer_outputs(data) for m in (float_copy, quant_copy)]
    for name, tensor in zip(names, tensors):
        reference, candidate = outputs[0][tensor], outputs[1][tensor]
        noise = float(np.sum((reference - candidate) ** 2))
        signal = float(np.sum(reference ** 2))
        results[name] = float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)
    return results


def float_layers_run_as(target: Target | None) -> str:
    """What the layers kept out of INT8 run as once `vitedge compile` builds the graph for target."""
    from vitedge.targets import Precision, Runtime

    if target is None:
        return ("FP32 in ONNX Runtime; compiled for a TensorRT target they run FP16 (the default "
                "--precision best), for a CPU target BF16 with --precision best where the CPU has it "
                "and it times faster than FP32")
    if target.runtime is Runtime.TENSORRT:
        if Precision.FP16 in target.precisions:
            return (f"FP16 on {target.name}: vitedge compile builds INT8 graphs with --precision best "
                    "(trtexec --fp16 --int8)")
        return f"FP32 on {target.name} (it has no FP16)"
    if Precision.BF16 in target.precisions:
        return (f"FP32 on {target.name} by default; BF16 with vitedge compile --precision best on a "
                "CPU with AVX512-BF16 or AMX (OpenVINO) where it times faster than FP32")
    return f"FP32 on {target.name}"


def build_report(card: ModelCard, float_model: onnx.ModelProto, nodes: list[ComputeNode],
                 evaluation: Evaluation, calibration_data: DataSet, search: Search, lint: LintResult,
                 budget: Budget, settings: QuantSettings, warnings_: list[str]) -> dict[str, Any]:
    """quant_report.json: what was asked, what was tried, what was chosen and how it measures."""
    best, tried, sensitivity, met = search.best, search.tried, search.sensitivity, search.met
    fp32, labels = evaluation.fp32, evaluation.labels
    drift = compare(fp32, best.logits, DriftThresholds(min_agreement=budget.min_agreement or 0.99,
                                                       min_cosine=budget.min_cosine),
                    features=budget.features)
    quantized = quantized_node_names(best.model)
    float_linear = [n.name for n in nodes if n.kind == "linear" and n.name not in quantized]
    float_attention = [n.name for n in nodes if n.kind == "attention" and n.name not in quantized]
    sample = evaluation.data.head(32)
    sqnr = layer_sqnr(float_model, best.model, [n.name for n in nodes if n.name in quantized], sample)
    h, w = card.preprocessing.input_size
    fixed = float_model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    shape = (fixed or 1, 3, h, w)
    with LoadWatch() as watch:
        latency = {"fp32": latency_ms(float_model, shape), "int8": latency_ms(best.model, shape),
                   "batch": shape[0], "provider": "CPUExecutionProvider"}
    assert watch.load is not None
    latency["load"] = watch.load.to_dict()
    if watch.load.busy:
        warnings_.append(watch.load.warning("FP32 and INT8 were timed"))
    accuracy = None
    if labels is not None:
        accuracy = {"fp32_top1": topk_accuracy(fp32, labels), "int8_top1": topk_accuracy(best.logits, labels),
                    "fp32_top5": topk_accuracy(fp32, labels, 5),
                    "int8_top5": topk_accuracy(best.logits, labels, 5)}
    macs = {n.name: n.macs for n in nodes}
    modules = module_names(float_model)  # the model's own layer names, where export recorded them
    return {
        "settings": {"recipe": str(settings.recipe), "scheme": str(settings.scheme),
                     "target": settings.target.name if settings.target else None,
                     "calibration": str(settings.calibration),
                     "calibration_samples": len(calibration_data),
                     "calibration_skipped": len(calibration_data.skipped),
                     "calibration_data": calibration_data.origin, "eval_samples": len(evaluation.data),
                     "eval_data": evaluation.data.origin, "labeled": labels is not None,
                     "smooth_quant": settings.smooth_quant, "bias_correction": settings.bias_correction,
                     "shift": settings.shift, "tune_ranges": settings.tune_ranges,
                     "exclude": list(settings.exclude), "engine": tool_versions("nncf", "onnxruntime", "onnx")},
        "budget": {"features": budget.features, "wanted": budget.describe(), "met": met,
                   "max_drop": None if budget.features else budget.max_drop, "drop": best.drop,
                   "min_agreement": budget.min_agreement, "agreement": None if budget.features else best.agreement,
                   "min_cosine": budget.min_cosine if budget.features else None, "cosine": best.cosine,
                   "rel_error": best.rel_error,
                   "metric": "cosine to FP32 features" if budget.features else
                   "top-1 points" if labels is not None else "FP32-agreement points"},
        "accuracy": accuracy,
        "drift": drift.to_dict(),
        "int8_linear_mac_share": best.int8_share,
        "float_nodes": {"linear": float_linear, "attention": float_attention,
                        "run_as": float_layers_run_as(settings.target),
                        "modules": {n: modules[n] for n in float_linear + float_attention if n in modules}},
        "attempts": [{"label": c.label, "drop": c.drop, "int8_linear_mac_share": c.int8_share,
                      "top1_agreement": None if budget.features else c.agreement, "cosine": c.cosine,
                      "rel_error": c.rel_error, "range_tuning": c.tuning} for c in tried],
        "chosen": best.label,
        "graph": {"quantize_linear": lint.quantize_nodes, "dequantize_linear": lint.dequantize_nodes,
                  "dq_consumers": dict(dq_consumers(best.model))},
        "layers": [{"node": name, "module": modules.get(name),
                    "op_type": next(n.op_type for n in nodes if n.name == name),
                    "kind": next(n.kind for n in nodes if n.name == name), "macs": macs.get(name),
                    "sqnr_db": value if np.isfinite(value) else None}  # None: identical to FP32
                   for name, value in sqnr.items()],
        "sensitivity": [{**row, "module": modules.get(row["node"])} for row in sensitivity],
        "size_bytes": {"fp32": float_model.ByteSize(), "int8": best.model.ByteSize()},
        "latency_ms": latency,
        "lint": lint.to_dict(),
        "warnings": warnings_,
    }




def sqnr_order(layer: dict[str, Any]) -> float:
    """Worst first; a layer whose output is identical to FP32 (no SQNR: null) last."""
    return float("inf") if layer["sqnr_db"] is None else layer["sqnr_db"]


def sqnr_text(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f}"


_pct = partial(percent, missing="n/a")
_num = partial(number, missing="n/a")


def markdown(report: dict[str, Any]) -> str:
    s, b, d = report["settings"], report["budget"], report["drift"]
    lines = [
        "# INT8 quantization report", "",
        f"Recipe **{s['recipe']}**, {s['scheme']} activations, {s['calibration']} calibration on "
        f"{s['calibration_samples']} samples ({s['calibration_data']}); evaluated on "
        f"{s['eval_samples']} samples ({s['eval_data']}).", "",
        (f"Budget: cosine to the FP32 features ≥ {b['min_cosine']:g} — measured {b['cosine']:.4f} "
         f"(relative error {b['rel_error']:.4f})" if b["features"] else
         f"Budget: drop ≤ {b['max_drop']:g} {b['metric']} — measured {b['drop']:.2f}")
        + f": **{'met' if b['met'] else 'MISSED'}**. Chosen: {report['chosen']}.", "",
        "| metric | FP32 | INT8 |", "| --- | --- | --- |",
    ]
    accuracy = report.get("accuracy")
    if accuracy:
        lines += [f"| top-1 | {_pct(accuracy['fp32_top1'])} | {_pct(accuracy['int8_top1'])} |",
                  f"| top-5 | {_pct(accuracy['fp32_top5'])} | {_pct(accuracy['int8_top5'])} |"]
    latency = report["latency_ms"]
    size = report["size_bytes"]
    lines += [
        f"| ONNX Runtime CPU latency p50, batch {latency['batch']} | {latency['fp32']['p50']:.2f} ms "
        f"| {latency['int8']['p50']:.2f} ms |",
        f"| model size | {size['fp32'] / 2**20:.2f} MiB | {size['int8'] / 2**20:.2f} MiB |", "",
        (f"Against FP32 on {d['samples']} samples: feature cosine **{_num(d['cosine'], 5)}** (worst "
         f"sample {_num(d['min_cosine'], 5)}), relative error {_num(d['rel_error'])} ({d['verdict']} at "
         f"cosine ≥ {d['thresholds']['min_cosine']:g})." if d["features"] else
         f"Against FP32 on {d['samples']} samples: top-1 agreement **{_pct(d['top1_agreement'])}**, "
         f"top-5 overlap {_pct(d['top5_overlap'])}, KL {_num(d['kl'])}, logit cosine "
         f"{_num(d['cosine'], 5)} ({d['verdict']} at ≥ {100 * d['thresholds']['min_agreement']:.0f}% "
         "agreement)."), "",
        f"Linear/Conv MACs in INT8: **{_pct(report['int8_linear_mac_share'])}**. Latency is "
        "reported as measured: on CPUs without VNNI/AMX, INT8 is often no faster than FP32.", "",
        "## Attempts", "", "| candidate | drop | INT8 Linear/Conv MACs | agreement | cosine |",
        "| --- | --- | --- | --- | --- |",
    ]
    for attempt in report["attempts"]:
        lines.append(f"| {attempt['label']} | {attempt['drop']:.2f} | "
                     f"{_pct(attempt['int8_linear_mac_share'])} | {_pct(attempt['top1_agreement'])} | "
                     f"{_num(attempt.get('cosine'), 5)} |")
    tuned = [a for a in report["attempts"] if a.get("range_tuning")]
    if tuned:
        error = "relative error" if b["features"] else "KL"
        lines += ["", f"Activation ranges tuned end to end (`--tune-ranges`, {error} to FP32):", ""]
        for attempt in tuned:
            t = attempt["range_tuning"]
            check = (f"; on {t['check_samples']} other calibration samples {t['check_error'][0]:.3g} → "
                     f"{t['check_error'][1]:.3g}" if t.get("check_error") else "")
            outcome = ("not applied (worse on the check samples)" if t.get("rejected") else
                       f"{len(t['changed'])} of {t['scales']} scales changed")
            lines.append(f"- {attempt['label']}: {t['error_before']:.3g} → {t['error_after']:.3g} on "
                         f"{t['samples']} samples{check}: {outcome}.")
    floats = report["float_nodes"]
    named = floats.get("modules") or {}
    linear = [named.get(n, n) for n in floats["linear"]]
    attention = [named.get(n, n) for n in floats["attention"]]
    lines += ["", "## Kept in float", "",
              f"Linear layers: {', '.join(linear) or 'none'}.",
              f"Attention MatMuls: {len(attention)} "
              f"({', '.join(attention[:6])}{' …' if len(attention) > 6 else ''}).",
              "Residual adds, LayerNorm, Softmax and GELU stay float in linear-only and vit-safe "
              "graphs.", "", f"Float layers run as: {floats['run_as']}." if floats.get("run_as") else "",
              "",
              "## Per-layer error (SQNR of each INT8 node's output vs FP32; lower is worse)", "",
              "| layer | ONNX node | op | kind | MACs | SQNR dB |", "| --- | --- | --- | --- | --- | --- |"]
    for layer in sorted(report["layers"], key=sqnr_order):
        lines.append(f"| {layer.get('module') or layer['node']} | {layer['node']} | {layer['op_type']} | "
                     f"{layer['kind']} | {layer['macs'] or '?'} | {sqnr_text(layer['sqnr_db'])} |")
    if report["sensitivity"]:
        error = "relative error" if b["features"] else "KL"
        lines += ["", f"## Sensitivity ranking ({error} vs FP32 when the layer alone is float)", "",
                  f"| layer | {error} if float | gain |", "| --- | --- | --- |"]
        for row in report["sensitivity"][:20]:
            lines.append(f"| {row.get('module') or row['node']} | {row['error_if_float']:.5f} | "
                         f"{row['error_gain']:.5f} |")
    lint = report["lint"]
    lines += ["", "## TensorRT-rules lint", "",
              f"{'passed' if lint['passed'] else 'FAILED'}: {lint['quantize_nodes']} QuantizeLinear, "
              f"{lint['dequantize_nodes']} DequantizeLinear."]
    for finding in lint["findings"][:30]:
        lines.append(f"- {finding['severity']} [{finding['rule']}] {finding['node']}: {finding['message']}")
    for warning in report["warnings"]:
        lines += ["", f"> warning: {warning}"]
    return "\n".join(lines) + "\n"
