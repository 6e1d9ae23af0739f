"""Bundle passports: where and with what a bundle was made, and whether this machine matches.

An engine or an offline-optimized graph is only valid for the runtime (and GPU) that produced it:
TensorRT engines are tied to the TensorRT version and the GPU's SM, Jetson's TensorRT to its
JetPack (L4T) release, ONNX Runtime's saved optimizations to its version. The passport records
those facts; `mismatches` compares them with this machine so a bundle is rebuilt or refused,
never silently run.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from vitedge import __version__
from vitedge.versions import (
    cpu_feature_names,
    gpu_facts,
    jetpack_release,
    l4t_release,
    machine_arch,
    package_version,
)

if TYPE_CHECKING:
    from vitedge.schemas.bundle import Passport

PASSPORT_NAME = "passport.json"
PASSPORT_VERSION = 1


def machine_facts(*, gpu: bool = False) -> dict[str, Any]:
    """This machine, as far as a bundle cares. `gpu=True` also asks torch about CUDA (slow-ish)."""
    from vitedge.runtime.tensorrt.runner import tensorrt_version

    facts: dict[str, Any] = {
        "arch": machine_arch(), "cpu_features": cpu_feature_names(),
        "onnxruntime": package_version("onnxruntime"), "openvino": package_version("openvino"),
        "tensorrt": tensorrt_version(),
        "l4t": l4t_release(), "jetpack": None, "gpu": None,
    }
    if facts["l4t"]:
        facts["jetpack"] = jetpack_release()
    if gpu or facts["tensorrt"]:
        facts["gpu"] = gpu_facts() or None
    return facts


def make_passport(*, target: dict[str, Any], precision: str, source_hash: str,
                  input_info: dict[str, Any], files: dict[str, str], runtime: dict[str, Any],
                  built: dict[str, Any], int8_mac_share: float | None = None) -> dict[str, Any]:
    return {"passport_version": PASSPORT_VERSION, "vitedge": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_artifact_hash": source_hash, "target": target, "precision": precision,
            "int8_mac_share": int8_mac_share if precision in ("int8", "best") else None,
            "input": input_info, "runtime": runtime, "files": files, "built": built}


# cpu_features labels (vitedge.versions) of CPUs that run BF16 natively.
BF16_FEATURES = {"AVX-512 BF16", "AMX-BF16", "BF16"}


def native_bf16(facts: dict[str, Any]) -> bool:
    """Whether the machine `facts` describe runs BF16 natively, by its CPU flags (what a passport
    can be checked against; compile asks OpenVINO itself, `vitedge.runtime.openvino.loader.bf16_here`)."""
    return bool(BF16_FEATURES & set(facts["cpu_features"]))


def _base(version: str | None) -> str | None:
    """'2026.4.1' from an OpenVINO package version such as '2026.4.1.20426' or '2026.4.1-…'."""
    return version.split("-")[0] if version else None


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def mismatches(passport: Passport, facts: dict[str, Any]) -> list[str]:
    """Why this machine cannot run what the bundle holds (empty when it can)."""
    built = passport.built
    problems: list[str] = []
    if passport.runtime["name"] == "openvino":
        openvino = built.openvino
        if built.compiled_here and built.arch != facts["arch"]:
            problems.append(f"compiled and timed by OpenVINO on {built.arch}, this machine is {facts['arch']}")
        version = openvino.version if openvino else None
        if _minor(version) != _minor(_base(facts.get("openvino"))):
            problems.append(f"IR converted by OpenVINO {version}, this machine has "
                            f"{facts.get('openvino') or 'no OpenVINO'}")
        if passport.precision in ("bf16", "best") and not native_bf16(facts):
            problems.append(f"the bundle runs {passport.precision} (BF16 float layers), this CPU has "
                            "no native BF16 (AVX512_BF16, AMX or Arm BF16)")
        return problems
    if passport.runtime["name"] == "onnxruntime":
        if not built.optimized_offline:
            return problems  # a plain ONNX graph runs on any ONNX Runtime that has its opset
        if built.arch != facts["arch"]:
            problems.append(f"graph optimized on {built.arch}, this machine is {facts['arch']}")
        if _minor(built.onnxruntime) != _minor(facts["onnxruntime"]):
            problems.append(f"graph optimized by ONNX Runtime {built.onnxruntime}, this "
                            f"machine has {facts['onnxruntime'] or 'none'}")
        return problems
    engine = built.engine
    if not engine:
        return problems
    if engine.tensorrt != facts["tensorrt"]:
        problems.append(f"engine built with TensorRT {engine.tensorrt}, this machine has "
                        f"{facts['tensorrt'] or 'no TensorRT'}")
    gpu = facts.get("gpu") or {}
    if engine.sm != gpu.get("sm"):
        problems.append(f"engine built for SM {engine.sm} ({engine.gpu}), this "
                        f"machine has {('SM ' + gpu['sm'] + ' (' + gpu['name'] + ')') if gpu else 'no CUDA GPU'}")
    if engine.l4t and _minor(engine.l4t) != _minor(facts.get("l4t")):
        problems.append(f"engine built on L4T {engine.l4t}, this machine runs "
                        f"{facts.get('l4t') or 'no L4T'}")
    return problems
