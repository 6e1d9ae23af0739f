"""`vitedge package`: bundles laid out for the serving engines fleets run (Triton, KServe, DeepStream)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitedge.compile.bundle import Bundle


def write_manifest(staging: Path, bundle: Bundle, engine: str, **fields: Any) -> None:
    """package.json: what the package is for, the bundle it came from, and the hash of every file
    written so far (the one output writer's rules treat those files as vitedge's)."""
    import json

    from vitedge.artifact import sha256_file
    from vitedge.locks import atomic_write_text
    from vitedge.outputs import MANIFEST_FILES, OutputKind

    files = {p.relative_to(staging).as_posix(): sha256_file(p)
             for p in sorted(staging.rglob("*")) if p.is_file() and not p.name.startswith(".")}
    manifest = {"kind": OutputKind.PACKAGE.value, "for": engine, **fields,
                "bundle": {"runtime": bundle.runtime, "target": bundle.passport.target.name,
                           "precision": bundle.passport.precision,
                           "source_artifact_hash": bundle.passport.source_artifact_hash},
                "files": files}
    atomic_write_text(staging / MANIFEST_FILES[OutputKind.PACKAGE], json.dumps(manifest, indent=2) + "\n")
