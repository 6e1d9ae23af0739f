"""The quantization report as Markdown (the JSON report is the dict itself)."""

from __future__ import annotations

from typing import Any


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    s, b, d = report["settings"], report["budget"], report["drift"]
    lines = [
        "# INT8 quantization report", "",
        f"Recipe **{s['recipe']}**, {s['scheme']} activations, {s['calibration']} calibration on "
        f"{s['calibration_samples']} samples ({s['calibration_data']}); evaluated on "
        f"{s['eval_samples']} samples ({s['eval_data']}).", "",
        f"Budget: drop ≤ {b['max_drop']:g} {b['metric']} — measured {b['drop']:.2f}: "
        f"**{'met' if b['met'] else 'MISSED'}**. Chosen: {report['chosen']}.", "",
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
        f"Against FP32 on {d['samples']} samples: top-1 agreement **{_pct(d['top1_agreement'])}**, "
        f"top-5 overlap {_pct(d['top5_overlap'])}, KL {_num(d['kl'])}, logit cosine "
        f"{_num(d['cosine'], 5)} ({d['verdict']} at ≥ {100 * d['thresholds']['min_agreement']:.0f}% "
        "agreement).", "",
        f"Linear-layer MACs in INT8: **{_pct(report['int8_linear_mac_share'])}**. Latency is "
        "reported as measured: on CPUs without VNNI/AMX, INT8 is often no faster than FP32.", "",
        "## Attempts", "", "| candidate | drop | INT8 Linear MACs | agreement |", "| --- | --- | --- | --- |",
    ]
    for attempt in report["attempts"]:
        lines.append(f"| {attempt['label']} | {attempt['drop']:.2f} | "
                     f"{_pct(attempt['int8_linear_mac_share'])} | {_pct(attempt['top1_agreement'])} |")
    floats = report["float_nodes"]
    lines += ["", "## Kept in float", "",
              f"Linear nodes: {', '.join(floats['linear']) or 'none'}.",
              f"Attention MatMuls: {len(floats['attention'])} "
              f"({', '.join(floats['attention'][:6])}{' …' if len(floats['attention']) > 6 else ''}).",
              "Residual adds, LayerNorm, Softmax and GELU stay float in linear-only and vit-safe "
              "graphs.", "",
              "## Per-layer error (SQNR of each INT8 node's output vs FP32; lower is worse)", "",
              "| node | op | kind | MACs | SQNR dB |", "| --- | --- | --- | --- | --- |"]
    for layer in sorted(report["layers"], key=lambda r: r["sqnr_db"]):
        lines.append(f"| {layer['node']} | {layer['op_type']} | {layer['kind']} | "
                     f"{layer['macs'] or '?'} | {layer['sqnr_db']:.1f} |")
    if report["sensitivity"]:
        lines += ["", "## Sensitivity ranking (KL vs FP32 when the node alone is float)", "",
                  "| node | KL if float | KL gain |", "| --- | --- | --- |"]
        for row in report["sensitivity"][:20]:
            lines.append(f"| {row['node']} | {row['kl_if_float']:.5f} | {row['kl_gain']:.5f} |")
    lint = report["lint"]
    lines += ["", "## TensorRT-rules lint", "",
              f"{'passed' if lint['passed'] else 'FAILED'}: {lint['quantize_nodes']} QuantizeLinear, "
              f"{lint['dequantize_nodes']} DequantizeLinear."]
    for finding in lint["findings"][:30]:
        lines.append(f"- {finding['severity']} [{finding['rule']}] {finding['node']}: {finding['message']}")
    for warning in report["warnings"]:
        lines += ["", f"> warning: {warning}"]
    return "\n".join(lines) + "\n"
