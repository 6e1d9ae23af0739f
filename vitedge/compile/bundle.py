"""Bundles on disk: what `compile` writes and every runtime reads back, verified.

A bundle is an artifact folder with `bundle.json` (runtime settings) and `passport.json` (where
and with what it was made), both sealed and hashed by the card. `read_bundle` refuses a bundle
whose files do not match the hashes its card and passport hold, whose documents were edited or
are malformed, or that names a file outside itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.artifact import read_card, sha256_file, verify_files, write_card
from vitedge.card import ModelCard
from vitedge.compile.passport import PASSPORT_NAME
from vitedge.documents import confined, read_document, write_document
from vitedge.errors import InputError
from vitedge.quantize.lint import Finding

BUNDLE_NAME = "bundle.json"
MODEL = "model.onnx"
SOURCE = "source.onnx"
RECREATE = "re-create the bundle with vitedge compile"


@dataclass
class Bundle:
    """A bundle as read back from disk (what a device sees), with compile's lint findings."""

    path: Path
    card: ModelCard
    bundle: dict[str, Any]
    passport: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)

    @property
    def runtime(self) -> str:
        return self.bundle["runtime"]

    def file(self, key: str) -> Path:
        """The file bundle.json names under `key`, inside the bundle and hashed by its card."""
        name = self.bundle.get(key) if key in ("model", "engine", "layers", "source_model") else \
            (self.bundle.get("build") or {}).get(key)
        return self.member(name, what=f"{self.path}/{BUNDLE_NAME} ({key})")

    def member(self, name: str, *, what: str | None = None) -> Path:
        """A file of the bundle by name: inside it and hashed by its card, or refused."""
        path = confined(self.path, name, what=what or str(self.path))
        if name not in self.card.files:
            raise InputError(f"{what or self.path} names {name!r}, which the card does not hash", RECREATE)
        return path


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / PASSPORT_NAME).is_file() and (path / BUNDLE_NAME).is_file()


def read_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle: every file must match the hashes its card and passport hold."""
    from vitedge.schemas import BundleDoc, PassportDoc

    path = Path(path)
    if not is_bundle(path):
        raise InputError(f"{path} is not a vitedge bundle (no {PASSPORT_NAME} / {BUNDLE_NAME})",
                         "make one with: vitedge compile SRC --target NAME -o BUNDLE")
    card = read_card(path)
    if card.format != "bundle":
        raise InputError(f"{path}/card.json says {card.format!r}, not a bundle", RECREATE)
    verify_files(path, card)
    passport = read_document(path / PASSPORT_NAME, PassportDoc, hint=RECREATE)
    bundle = read_document(path / BUNDLE_NAME, BundleDoc, hint=RECREATE)
    if passport["runtime"]["name"] != bundle["runtime"]:
        raise InputError(f"{path}: passport.json says {passport['runtime']['name']}, bundle.json "
                         f"{bundle['runtime']}", RECREATE)
    for name, digest in passport["files"].items():
        if card.files.get(name) != digest:
            raise InputError(f"{path / name} does not match the hash in its passport",
                             "the bundle was changed after it was made; re-create it")
    result = Bundle(path, card, bundle, passport)
    result.file("model" if bundle["runtime"] == "onnxruntime" else "onnx")
    return result


def seal(staging: Path, card: ModelCard, passport: dict[str, Any]) -> None:
    """Hash the model files into the passport, write it, then the card (which hashes it too)."""
    passport["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir())
                         if p.is_file() and not p.name.startswith(".")
                         and p.name not in (PASSPORT_NAME, "card.json")}
    write_document(staging / PASSPORT_NAME, passport)
    write_card(staging, card)
