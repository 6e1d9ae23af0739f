"""Versions of the tools and the machine: recorded in cards, and shown by `vitedge doctor`."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from vitedge import __version__

DOCTOR_PACKAGES = ("torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime", "openvino",
                   "onnxslim", "onnxscript", "nncf", "opencv-python-headless", "opencv-python",
                   "tensorrt", "numpy")
# /proc/cpuinfo flags that decide whether INT8 can be fast on a CPU.
X86_FEATURES = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512_vnni": "AVX-512 VNNI",
                "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}
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


def cpu_feature_names() -> list[str]:
    """The ISA extensions this CPU has, sorted: what passports, bench tables and benchmarks record."""
    return sorted(name for name, present in cpu_features().items() if present)


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


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (x86 'model name', Arm 'Model'), else platform's."""
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("model name", "Model")):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def machine_arch(machine: str | None = None) -> str:
    """The ISA name the target profiles use: x86-64 or arm64."""
    machine = (machine or platform.machine()).lower()
    return {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def l4t_release(text: str | None = None) -> str | None:
    """'36.4' from /etc/nv_tegra_release ('# R36 (release), REVISION: 4.0, ...'), None off Jetson."""
    text = _read("/etc/nv_tegra_release") if text is None else text
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    major, minor, patch = match.groups()
    return f"{major}.{minor}" + (f".{patch}" if patch and patch != "0" else "")


def jetpack_release() -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.split("-")[0].strip() or None


def _driver() -> str | None:
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", _read("/proc/driver/nvidia/version"))
    return match.group(1) if match else None


@lru_cache(maxsize=1)
def gpu_facts() -> dict[str, Any]:
    """The local NVIDIA GPU as torch sees it (empty without CUDA)."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"name": props.name, "sm": f"{props.major}.{props.minor}",
            "memory_mib": props.total_memory >> 20, "cuda": torch.version.cuda,
            "cudnn": str(cudnn) if cudnn else None, "driver": _driver()}


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

    report = DoctorReport(
        python=sys.version.split()[0], platform=platform.platform(), vitedge=__version__,
        packages={name: package_version(name) for name in DOCTOR_PACKAGES},
        cpu={"name": cpu_name(), "machine": platform.machine(),
             "cores": os.cpu_count(), "features": cpu_features()},
    )
    try:
        import onnxruntime

        report.onnxruntime_providers = list(onnxruntime.get_available_providers())
    except ImportError as exc:
        report.onnxruntime_providers = [f"unavailable: {exc}"]
    try:
        import torch
    except ImportError as exc:
        report.cuda = {"available": False, "error": str(exc)}
    else:
        gpu = gpu_facts()
        report.cuda = {"available": bool(gpu), "torch_cuda": torch.version.cuda}
        if gpu:
            report.cuda.update(device=gpu["name"], sm=gpu["sm"], cudnn=gpu["cudnn"], driver=gpu["driver"],
                               memory_gib=round(gpu["memory_mib"] / 1024, 1))
    try:
        trt = importlib.import_module("tensorrt")
        report.tensorrt = {"available": True, "version": getattr(trt, "__version__", "?")}
    except ImportError as exc:
        report.tensorrt = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    return report
