"""NNCF, imported the one way vitedge imports it: with its usage telemetry off."""

from __future__ import annotations

from typing import Any


def import_nncf() -> Any:
    """NNCF, with its usage telemetry off: its only switch, NNCF_CI, is set when vitedge is
    imported (vitedge/__init__.py), before NNCF reads it at its first import; without it NNCF
    sends its calls to Google Analytics and writes a client id into ~/intel unless the user
    opted out. NNCF imports OpenVINO, whose own import-time telemetry is avoided first."""
    try:
        from vitedge.runtime.openvino.runner import import_openvino

        import_openvino()
    except ImportError:
        pass
    import nncf

    return nncf
