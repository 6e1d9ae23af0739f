"""Bundles on disk: what `compile` writes and every runtime reads back, verified.

A bundle is an artifact folder with `bundle.json` (runtime settings) and `passport.json` (where
and with what it was made). `read_bundle` refuses a bundle whose files do not match the hashes
its card and passport hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.artifact import atomic_write_text, read_card, sha256_file, verify_files, write_card
from vitedge.card import ModelCard
from vitedge.errors import InputError
from vitedge.lint import Finding
from vitedge.passport import PASSPORT_NAME

BUNDLE_NAME = "bundle.json"
MODEL = "model.onnx"
SOURCE = "source.onnx"


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


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / PASSPORT_NAME).is_file() and (path / BUNDLE_NAME).is_file()


def read_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle: every file must match the hashes its card and passport hold."""
    path = Path(path)
    if not is_bundle(path):
        raise InputError(f"{path} is not a vitedge bundle (no {PASSPORT_NAME} / {BUNDLE_NAME})",
                         "make one with: vitedge compile SRC --target NAME -o BUNDLE")
    card = read_card(path)
    verify_files(path, card)
    try:
        passport = json.loads((path / PASSPORT_NAME).read_text())
        bundle = json.loads((path / BUNDLE_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} has an unreadable passport or bundle.json ({exc.msg})",
                         "re-create the bundle with vitedge compile") from None
    for name, digest in passport.get("files", {}).items():
        if card.files.get(name) != digest:
            raise InputError(f"{path / name} does not match the hash in its passport",
                             "the bundle was changed after it was made; re-create it")
    return Bundle(path, card, bundle, passport)


def seal(staging: Path, card: ModelCard, passport: dict[str, Any]) -> None:
    """Hash the model files into the passport, write it, then the card (which hashes it too)."""
    passport["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir())
                         if p.is_file() and p.name not in (PASSPORT_NAME, "card.json")}
    atomic_write_text(staging / PASSPORT_NAME, json.dumps(passport, indent=2) + "\n")
    write_card(staging, card)
