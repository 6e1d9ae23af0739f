"""Trim KServe's InferenceService CRD to the fields `vitedge package --for kserve` writes.

    python scripts/trim_kserve_crd.py serving.kserve.io_inferenceservices.yaml COMMIT \
        > vitedge/assets/kserve_inferenceservice_v1beta1.json

The source is config/crd/full/serving.kserve.io_inferenceservices.yaml in github.com/kserve/kserve
(2 MB: every PodSpec field of predictor, transformer and explainer). vitedge keeps the v1beta1
openAPIV3Schema with only the branches it writes, unchanged, so a manifest is checked against
KServe's own types, required fields and patterns; a field outside them is refused, which is
stricter than the API server (it would prune an unknown field silently).
"""

from __future__ import annotations

import json
import sys

import yaml

KEEP = {"spec": {"predictor": {"model": {"modelFormat": None, "runtime": None, "storageUri": None,
                                         "protocolVersion": None, "resources": None},
                               "minReplicas": None, "maxReplicas": None}}}


def trim(schema: dict, keep: dict | None) -> dict:
    if keep is None:
        return schema
    out = {k: v for k, v in schema.items() if k not in ("properties", "required")}
    out["properties"] = {name: trim(schema["properties"][name], sub) for name, sub in keep.items()}
    required = [r for r in schema.get("required", []) if r in keep]
    if required:
        out["required"] = required
    return out


def main() -> None:
    crd = yaml.safe_load(open(sys.argv[1]))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    root = version["schema"]["openAPIV3Schema"]
    schema = {k: v for k, v in root.items() if k != "properties"}
    schema["properties"] = {"apiVersion": root["properties"]["apiVersion"],
                            "kind": root["properties"]["kind"],
                            "metadata": root["properties"]["metadata"],
                            **trim(root, KEEP)["properties"]}
    json.dump({"source": "https://github.com/kserve/kserve/blob/" + sys.argv[2]
               + "/config/crd/full/serving.kserve.io_inferenceservices.yaml",
               "group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"], "version": "v1beta1",
               "openAPIV3Schema": schema}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
