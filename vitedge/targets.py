"""Device profiles: `targets/*.toml` parsed into frozen dataclasses. The only code that knows `targets/`."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from vitedge.errors import InputError

# The shipped profiles: targets/*.toml, package data (vitedge/profiles links to targets/ in the
# checkout; a wheel holds the files themselves).
TARGETS_DIR = Path(__file__).resolve().parent / "profiles"


class Runtime(StrEnum):
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class CompileRuntime(StrEnum):
    """What `vitedge compile --runtime` asks for: a runtime, or auto (measure the target's runtimes
    on this machine and keep the fastest; the profile's own runtime on another ISA)."""

    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


class Backend(StrEnum):
    """The backends a user may force (`--backend`); a TensorRT bundle runs on "tensorrt"."""

    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"  # ONNX graphs (and a bundle's plain ONNX) on OpenVINO's CPU plugin, FP32


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"  # OpenVINO on CPUs with native BF16 (AVX512_BF16, AMX)
    INT8 = "int8"


class CompilePrecision(StrEnum):
    """What `vitedge compile --precision` asks for; a bundle's passport records the resolved one."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    BEST = "best"  # INT8 from a QDQ graph (FP16 for its float layers on TensorRT), else the fastest float


class Scheme(StrEnum):
    SYMMETRIC = "symmetric"  # TensorRT: activation zero-points 0
    ASYMMETRIC = "asymmetric"  # CPU runtimes: asymmetric activations allowed


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: Runtime
    precisions: tuple[Precision, ...]
    default_precision: Precision
    int8_scheme: Scheme
    batch: BatchProfile
    memory_mib: int = 0
    workspace_mib: int = 0
    dla_cores: int = 0
    compute_capability: str | None = None  # "8.7", or "detect" for the local GPU
    isa: str | None = None
    jetpack: str | None = None
    l4t: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None
    cpu_threads: int = 0
    runtimes: tuple[Runtime, ...] = ()  # every runtime a bundle may use (first: `runtime`)
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["runtime"] = str(self.runtime)
        data["runtimes"] = [str(r) for r in self.runtimes]
        data["precisions"] = [str(p) for p in self.precisions]
        data["default_precision"] = str(self.default_precision)
        data["int8_scheme"] = str(self.int8_scheme)
        data["batch"] = {"min": self.batch.min, "opt": self.batch.opt, "max": self.batch.max}
        return data


def _choice(enum: type[StrEnum], value: Any, key: str, where: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise InputError(f"{where}: {key} = {value!r} is not one of "
                         f"{', '.join(e.value for e in enum)}") from None


def parse_target(data: dict[str, Any], where: str) -> Target:
    """Validate a profile's table (as read from TOML) into a Target."""
    known = {f.name for f in fields(Target)} - {"path"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}",
                         f"known keys: {', '.join(sorted(known))}")
    required = ("name", "description", "runtime", "precisions", "default_precision",
                "int8_scheme", "batch")
    missing = [key for key in required if key not in data]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}",
                         "copy a shipped profile from targets/ and edit it")
    precisions = tuple(_choice(Precision, p, "precisions", where) for p in data["precisions"])
    default = _choice(Precision, data["default_precision"], "default_precision", where)
    if default not in precisions:
        raise InputError(f"{where}: default_precision {default} is not among precisions "
                         f"{', '.join(precisions)}")
    batch = data["batch"]
    if not isinstance(batch, dict) or set(batch) != {"min", "opt", "max"} or not all(
            isinstance(v, int) and v >= 1 for v in batch.values()) or not (
            batch["min"] <= batch["opt"] <= batch["max"]):
        raise InputError(f"{where}: batch = {batch!r} must be {{min, opt, max}} integers with "
                         "1 <= min <= opt <= max")
    for key in ("memory_mib", "workspace_mib", "dla_cores", "cpu_threads"):
        if key in data and (not isinstance(data[key], int) or data[key] < 0):
            raise InputError(f"{where}: {key} = {data[key]!r} must be a non-negative integer")
    runtime = _choice(Runtime, data["runtime"], "runtime", where)
    if runtime is Runtime.TENSORRT and "compute_capability" not in data:
        raise InputError(f"{where}: a TensorRT target needs compute_capability (e.g. \"8.7\" or "
                         "\"detect\")")
    listed = data.get("runtimes", [runtime.value])
    if not isinstance(listed, list) or not listed:
        raise InputError(f"{where}: runtimes = {listed!r} must be a list, e.g. [\"onnxruntime\", \"openvino\"]")
    runtimes = tuple(_choice(Runtime, r, "runtimes", where) for r in listed)
    if runtimes[:1] != (runtime,):
        raise InputError(f"{where}: runtimes = {data['runtimes']!r} must start with runtime = "
                         f"{runtime.value!r} (the runtime used when no other is measured)")
    if Runtime.TENSORRT in runtimes and len(runtimes) > 1:
        raise InputError(f"{where}: runtimes = {data['runtimes']!r}: a TensorRT target runs TensorRT only")
    if Precision.BF16 in precisions and Runtime.OPENVINO not in runtimes:
        raise InputError(f"{where}: precision bf16 needs openvino among runtimes (ONNX Runtime's "
                         "CPU provider runs fp32)")
    values = {key: data[key] for key in data if key not in ("runtime", "runtimes", "precisions",
                                                           "default_precision", "int8_scheme",
                                                           "batch")}
    return Target(**values, runtime=runtime, runtimes=runtimes, precisions=precisions,
                  default_precision=default,
                  int8_scheme=_choice(Scheme, data["int8_scheme"], "int8_scheme", where),
                  batch=BatchProfile(**batch), path=where)


def _read(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"target profile {path} is not valid TOML ({exc})") from None
    return parse_target(data, str(path))


def list_targets() -> list[Target]:
    """Every shipped profile, sorted by name."""
    if not TARGETS_DIR.is_dir():
        raise InputError(f"shipped target profiles not found at {TARGETS_DIR}",
                         "reinstall vitedge (its wheel ships them), or pass --target path/to/profile.toml")
    return sorted((_read(path) for path in TARGETS_DIR.glob("*.toml")), key=lambda t: t.name)


def load_target(name_or_path: str | Path) -> Target:
    """A shipped profile by name, or a user's own .toml file."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml"):
        if not path.is_file():
            raise InputError(f"target profile {path} does not exist")
        return _read(path)
    shipped = {target.name: target for target in list_targets()}
    if text not in shipped:
        close = difflib.get_close_matches(text, list(shipped), n=1)
        raise InputError(f"unknown target {text!r}" + (f" (did you mean {close[0]}?)" if close else ""),
                         f"known targets: {', '.join(shipped)}; or pass a .toml profile")
    return shipped[text]
