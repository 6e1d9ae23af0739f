"""Running OpenVINO on the CPU: the one place vitedge compiles OpenVINO models.

OpenVINO picks its own inference precision: on CPUs with native BF16 (AVX512_BF16, AMX) it runs
float graphs in bfloat16 unless told otherwise. A session asks for the precision it is given
("fp32" sets `INFERENCE_PRECISION_HINT=f32`, "bf16" asks for bfloat16 and is refused on a CPU
without it) and reports the precision the compiled model actually runs, read back from
OpenVINO, never the one requested. A graph with Q/DQ nodes runs its quantized layers in INT8
(OpenVINO's low-precision transformations) and reports "int8". What converts graphs to
OpenVINO IR is beside this file (loader.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import InputError
from vitedge.runtime.base import Session, TensorInfo

# OpenVINO's element type names (str(ov.Type)) -> vitedge's precision names.
_PRECISIONS = {"float32": "fp32", "f32": "fp32", "bfloat16": "bf16", "bf16": "bf16",
               "float16": "fp16", "f16": "fp16"}
_HINTS = {"fp32": "f32", "bf16": "bf16"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")


def import_openvino() -> Any:
    """The openvino module, imported without its import-time telemetry.

    `import openvino` imports its model converter, which sends an "import" event to Google
    Analytics and writes ~/intel/openvino_ga_cid unless the user opted out (OpenVINO's
    `opt_in_out --opt_out`; no consent file counts as yes). openvino_telemetry has no switch of
    its own besides that file, which is the user's to write; it declines in CI, which it detects
    by JENKINS_URL among others, so that marker is set for the first import only and removed
    again. vitedge converts with Core.read_model (loader.convert_to_ir), so nothing re-enables it later.
    """
    import sys

    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    import os

    marked = "JENKINS_URL" not in os.environ
    if marked:
        os.environ["JENKINS_URL"] = "vitedge: no telemetry"
    try:
        import openvino
    finally:
        if marked:
            os.environ.pop("JENKINS_URL", None)
    return openvino


def openvino_version() -> str | None:
    """The installed OpenVINO runtime's version (None when it does not import)."""
    try:
        openvino = import_openvino()
    except ImportError:
        return None
    return openvino.get_version().split("-")[0]


def cpu_capabilities(core: Any = None) -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can run fast (e.g. FP32, BF16, INT8)."""
    if core is None:
        core = import_openvino().Core()
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _type_name(value: Any) -> str:
    text = str(value)
    return text.split("'")[1] if "'" in text else text  # "<Type: 'bfloat16'>" -> "bfloat16"


def _info(ports: Any) -> list[TensorInfo]:
    infos = []
    for port in ports:
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        name = _type_name(port.get_element_type())
        # ONNX Runtime's names for the two image input types ("uint8_t" is OpenVINO's)
        infos.append(TensorInfo(port.get_any_name(), shape, {"float32": "float", "uint8_t": "uint8"}.get(name, name)))
    return infos


class OpenVinoSession(Session):
    """An ONNX graph, or OpenVINO IR (.xml with its `weights` .bin), compiled by OpenVINO for the CPU.

    `precision` is the hint for the float layers (None: OpenVINO's pick); with `int8` (a graph
    holding Q/DQ layers) the session's precision is "int8", or "int8+bf16" when the float layers
    run BF16."""

    backend = "openvino"

    def __init__(self, model: str | Path, *, weights: str | Path | None = None,
                 precision: str | None = "fp32",
                 threads: int = 0, performance_hint: str = "LATENCY", int8: bool = False,
                 max_batch: int | None = None, min_batch: int = 1, description: str = "",
                 card: Any = None, origin: tuple[Path, ...] = ()) -> None:
        try:
            openvino = import_openvino()
        except ImportError as exc:
            raise InputError(f"OpenVINO is not importable ({exc})",
                             "pip install openvino, or use --backend onnxruntime") from None
        if precision is not None and precision not in _HINTS:
            raise InputError(f"OpenVINO runs fp32 or bf16 on the CPU, not {precision}",
                             "use --precision fp32 or bf16 (INT8 comes from a quantized graph)")
        if performance_hint not in PERFORMANCE_HINTS:
            raise InputError(f"performance hint {performance_hint!r} is not one of "
                             f"{', '.join(PERFORMANCE_HINTS)}")
        core = openvino.Core()
        if precision == "bf16" and "BF16" not in cpu_capabilities(core):
            raise InputError("this CPU has no native BF16 (AVX512_BF16 or AMX), so OpenVINO cannot run bf16",
                             "use fp32 here, or run bf16 on a CPU that has it")
        self.model_path = Path(model)
        # An IR's .bin is named explicitly: OpenVINO would otherwise look for it beside the .xml
        graph = core.read_model(str(self.model_path), str(weights)) if weights else \
            core.read_model(str(self.model_path))
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(graph, "CPU", config)
        self.request = self.compiled.create_infer_request()
        runs = _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.inference_precision = _PRECISIONS.get(runs, runs)  # what the float layers run in
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        version = openvino_version()
        super().__init__(inputs=_info(self.compiled.inputs), outputs=_info(self.compiled.outputs[:1]),
                         precision=(("int8+bf16" if self.inference_precision == "bf16" else "int8")
                                    if int8 else self.inference_precision),
                         max_batch=max_batch, min_batch=min_batch,
                         description=description or (
                             f"OpenVINO {version} CPU ({self.inference_precision}"
                             + (" float layers, INT8 Q/DQ layers" if int8 else "")
                             + f", {performance_hint.lower()} hint, {self.threads} threads)"),
                         card=card, origin=origin)
        if self.inputs[0].dtype not in ("float", "uint8"):  # uint8: preprocessing in the graph
            raise InputError(f"the model's input is {self.inputs[0].dtype}, expected float32 images",
                             "export the model with a float32 image input")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: batch})
        return np.asarray(result[self.compiled.outputs[0]], dtype=np.float32)

    def close(self) -> None:
        self.request = None  # type: ignore[assignment]
        self.compiled = None  # type: ignore[assignment]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openvino": openvino_version(),
                "inference_precision": self.inference_precision, "threads": self.threads}
