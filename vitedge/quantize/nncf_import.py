"""NNCF, imported the one way vitedge imports it: with its usage telemetry off."""

from __future__ import annotations

from typing import Any


def import_nncf() -> Any:
    """NNCF, with its usage telemetry off (NNCF_CI, set when vitedge is imported: NNCF reads its
    only switch once, when it is first imported; without it NNCF sends its calls to Google
    Analytics and writes a client id into ~/intel unless the user opted out)."""
    import os

    os.environ.setdefault("NNCF_CI", "1")
    try:  # NNCF imports OpenVINO when it is installed: first without OpenVINO's import-time telemetry
        from vitedge.runtime.openvino import import_openvino

        import_openvino()
    except ImportError:
        pass
    import nncf

    return nncf
