"""Versions of the tools and the machine: recorded in cards, and shown by `vitedge doctor`."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge import __version__

DOCTOR_PACKAGES = ("torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime",
                   "onnxslim", "onnxscript", "nncf", "opencv-python-headless", "opencv-python",
                   "tensorrt", "numpy")
# /proc/cpuinfo flags that decide whether INT8 can be fast on a CPU.
X86_FEATURES = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512_vnni": "AVX-512 VNNI",
                "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16", "amx_int8": "AMX-INT8"}
ARM_FEATURES = {"asimd": "NEON", "asimddp": "NEON dot-product", "i8mm": "INT8 matmul (i8mm)",
                "sve": "SVE", "bf16": "BF16"}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions(*names: str) -> dict[str, str | None]:
    return {"vitedge": __version__, "python": platform.python_version(),
            **{name: package_version(name) for name in names}}


def cpu_features(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which INT8-relevant ISA extensions this CPU has (x86 or Arm), from /proc/cpuinfo."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    table = ARM_FEATURES if platform.machine().lower() in ("aarch64", "arm64") or (
        "asimd" in flags) else X86_FEATURES
    return {label: flag in flags for flag, label in table.items()}


@dataclass
class DoctorReport:
    python: str
    platform: str
    vitedge: str
    packages: dict[str, str | None]
    cpu: dict[str, Any]
    onnxruntime_providers: list[str] = field(default_factory=list)
    cuda: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def doctor() -> DoctorReport:
    """Collect what vitedge can use on this machine. Import failures are reported with their cause."""
    import os

    cpu_name = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu_name = line.partition(":")[2].strip()
                break
    report = DoctorReport(
        python=sys.version.split()[0], platform=platform.platform(), vitedge=__version__,
        packages={name: package_version(name) for name in DOCTOR_PACKAGES},
        cpu={"name": cpu_name or platform.processor(), "machine": platform.machine(),
             "cores": os.cpu_count(), "features": cpu_features()},
    )
    try:
        import onnxruntime

        report.onnxruntime_providers = list(onnxruntime.get_available_providers())
    except ImportError as exc:
        report.onnxruntime_providers = [f"unavailable: {exc}"]
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            report.cuda = {"available": True, "torch_cuda": torch.version.cuda,
                           "device": props.name, "sm": f"{props.major}.{props.minor}",
                           "memory_gib": round(props.total_memory / 2**30, 1)}
        else:
            report.cuda = {"available": False, "torch_cuda": torch.version.cuda}
    except ImportError as exc:
        report.cuda = {"available": False, "error": str(exc)}
    try:
        trt = importlib.import_module("tensorrt")
        report.tensorrt = {"available": True, "version": getattr(trt, "__version__", "?")}
    except ImportError as exc:
        report.tensorrt = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    return report
