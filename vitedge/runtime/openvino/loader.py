"""Preparing graphs for OpenVINO: ONNX to OpenVINO IR, compiled and checked on this machine,
and what the bundle's passport records about it (the precision OpenVINO actually runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.runtime.openvino.runner import (
    OpenVinoSession,
    cpu_capabilities,
    import_openvino,
    openvino_version,
)

if TYPE_CHECKING:
    from vitedge.runtime.base import Session

IR_MODEL = "model.xml"
IR_WEIGHTS = "model.bin"


def convert_to_ir(source: Path, xml: Path) -> None:
    """Convert an ONNX graph to OpenVINO IR (xml + bin beside it), keeping FP32 weights
    (OpenVINO's save_model compresses them to FP16 unless told not to).

    The ONNX frontend reads the graph (`Core.read_model`) and save_model applies the same offline
    transformations `openvino.convert_model` does; convert_model is not used because it sends
    usage telemetry to Google Analytics unless the user opted out (24 events per conversion,
    measured with OpenVINO 2026.4), and vitedge never phones home."""
    openvino = import_openvino()
    model = openvino.Core().read_model(str(source))
    openvino.save_model(model, str(xml), compress_to_fp16=False)


def bf16_here() -> bool:
    """Whether OpenVINO's CPU plugin says this CPU runs BF16 natively (False without OpenVINO)."""
    try:
        return "BF16" in cpu_capabilities()
    except ImportError:
        return False


def openvino_importable() -> str | None:
    """None when OpenVINO imports, else why not."""
    try:
        import_openvino()
    except ImportError as exc:
        return f"OpenVINO is not importable ({exc})"
    return None


def openvino_here(source: Path, xml: Path, facts: dict[str, Any], hint: str, threads: int, *,
                  compile_here: bool, int8: bool, say: Callable[[str], None], convert: bool = True
                  ) -> tuple[dict[str, Any], Session | None]:
    """Convert `source` (ONNX) to OpenVINO IR at `xml` (its weights beside it, .bin; unless
    `convert` is False: already done); on this ISA also compile it, read back the precision it
    runs and check it against the source. The passport's `built`, and the session."""
    from vitedge.runtime.parity import check_parity

    version = openvino_version()
    if convert:
        say(f"converting the graph to OpenVINO {version} IR")
        convert_to_ir(source, xml)
    built: dict[str, Any] = {"arch": facts["arch"], "cpu_features": facts["cpu_features"],
                             "compiled_here": compile_here, "parity_vs_source": None, "note": None,
                             "openvino": {"version": version, "inference_precision": None,
                                          "capabilities": []}}
    if not compile_here:
        built["note"] = ("OpenVINO IR converted here; OpenVINO compiles it, and picks how its "
                         f"float layers run within the {hint} hint, on the device")
        return built, None
    session = OpenVinoSession(xml, weights=xml.with_suffix(".bin"), precision=hint,
                              threads=threads, int8=int8)
    built["openvino"].update(inference_precision=session.inference_precision,
                             capabilities=cpu_capabilities())
    built["parity_vs_source"] = check_parity(source, session, int8=int8,
                                             bf16=session.inference_precision == "bf16",
                                             what=f"OpenVINO {version}")
    return built, session
