"""`vitedge package BUNDLE --for kserve`: the Triton repository plus a KServe InferenceService.

The manifest (serving.kserve.io/v1beta1) runs the repository on KServe's Triton runtime
(`kserve-tritonserver`, model format `triton`, protocol v2). `storageUri` is a placeholder the user
replaces with where they upload `model_repository/`. Resources come from the bundle and its
target: the CPU threads it was compiled and timed with (or the target's), memory from the model
files (Triton holds the model plus its runtime's working memory), one GPU for TensorRT.

It is checked against KServe's own CRD schema (the v1beta1 openAPIV3Schema of
config/crd/full/serving.kserve.io_inferenceservices.yaml, trimmed to the branches vitedge
writes by scripts/trim_kserve_crd.py and shipped in vitedge/assets): types, required fields,
patterns (resource quantities) and unknown fields, which the API server would silently prune.
The KServe Python SDK was not used: its models accept unknown keys, and it pulls in kubernetes,
fastapi, pandas and a model server that vitedge does not need.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.errors import InputError

if TYPE_CHECKING:
    from vitedge.compile.bundle import Bundle

MANIFEST_NAME = "inferenceservice.yaml"
STORAGE_PLACEHOLDER = "REPLACE-ME://where/you/upload/model_repository"
SCHEMA = Path(__file__).resolve().parents[1] / "assets" / "kserve_inferenceservice_v1beta1.json"
# Triton's own memory plus the runtime's arenas, on top of twice the model files (measured
# nowhere here: a starting request the user tunes, and said so in the README)
BASE_MEMORY_MIB = 1024


def service_name(model_name: str) -> str:
    """A Kubernetes object name (DNS-1035 label) from the Triton model name."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:63].rstrip("-")
    return name or "vitedge-model"


def inference_service(bundle: Bundle, model_name: str, repository: Path, instances: int) -> dict[str, Any]:
    """The InferenceService for the Triton repository at `repository` (already written)."""
    from vitedge.targets import load_target

    target = load_target(bundle.passport.target.name)
    settings = bundle.settings
    threads = (settings.session.intra_op_threads if settings.session else
               settings.openvino.threads if settings.openvino else 0) or target.cpu_threads or 1
    model_bytes = sum(p.stat().st_size for p in repository.rglob("*") if p.is_file())
    memory = BASE_MEMORY_MIB + math.ceil(2 * instances * model_bytes / 2**20)
    if target.memory_mib:
        memory = min(memory, target.memory_mib)
    requests: dict[str, str] = {"cpu": str(threads * instances if bundle.runtime != "tensorrt" else 1),
                                "memory": f"{memory}Mi"}
    limits = dict(requests)
    if bundle.runtime == "tensorrt":
        limits["nvidia.com/gpu"] = "1"
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": service_name(model_name)},
        "spec": {"predictor": {
            "minReplicas": 1,
            "model": {"modelFormat": {"name": "triton"}, "runtime": "kserve-tritonserver",
                      "protocolVersion": "v2", "storageUri": STORAGE_PLACEHOLDER,
                      "resources": {"requests": requests, "limits": limits}}}},
    }


def manifest_text(service: dict[str, Any], bundle: Bundle) -> str:
    import yaml

    header = (f"# Written by vitedge package from the {bundle.runtime} bundle for "
              f"{bundle.passport.target.name}.\n# Upload model_repository/ and set storageUri to it "
              "(s3://, gs://, pvc://...), then: kubectl apply -f " + MANIFEST_NAME + "\n")
    return header + yaml.safe_dump(service, sort_keys=False)


@cache
def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


def validate(document: Any) -> None:
    """Refuse `document` unless it is an InferenceService that KServe's CRD schema accepts."""
    schema = _schema()
    problems = list(_problems(document, schema["openAPIV3Schema"], ""))
    if document.get("apiVersion") != f"{schema['group']}/{schema['version']}" or document.get("kind") != schema["kind"]:
        problems.append(f"not a {schema['group']}/{schema['version']} {schema['kind']}")
    name = (document.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", str(name)):
        problems.append(f"metadata.name {name!r} is not a DNS-1035 label")
    if problems:
        raise InputError(f"the InferenceService does not match KServe's CRD: {problems[0]}"
                         + (f" ({len(problems) - 1} more)" if len(problems) > 1 else ""),
                         "report this with the bundle")


_TYPES = {"string": str, "integer": int, "object": dict, "array": list, "boolean": bool, "number": (int, float)}


def _problems(value: Any, schema: dict[str, Any], where: str):
    """What a structural (Kubernetes) schema refuses in `value`: JSON Schema's types, enums,
    required, patterns, plus unknown fields, which JSON Schema allows and Kubernetes prunes."""
    options = schema.get("anyOf")
    if options:
        if not any(not list(_problems(value, {**schema, **option, "anyOf": None}, where)) for option in options):
            yield f"{where or '.'}: {value!r} matches none of {[o.get('type') for o in options]}"
        return
    kind = schema.get("type")
    if kind and not (isinstance(value, _TYPES[kind]) and not (kind == "integer" and isinstance(value, bool))):
        yield f"{where or '.'}: {value!r} is not of type {kind}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}: {value!r} is not one of {schema['enum']}"
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        yield f"{where}: {value!r} does not match {schema['pattern']}"
    if isinstance(value, dict):
        for required in schema.get("required", []):
            if required not in value:
                yield f"{where}.{required} is required"
        properties = schema.get("properties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from _problems(item, properties[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from _problems(item, schema["additionalProperties"], f"{where}.{key}")
            elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield f"{where}.{key} is not a field of the CRD"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _problems(item, schema["items"], f"{where}[{index}]")
