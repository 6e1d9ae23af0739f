"""Bundles on disk: what `compile` writes and every runtime reads back, verified.

A bundle is an artifact folder with `bundle.json` (runtime settings) and `passport.json` (where
and with what it was made), both sealed and hashed by the card. `read_bundle` refuses a bundle
whose files do not match the hashes its card and passport hold, whose documents were edited or
are malformed, or that names a file outside itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.artifact import onnx_file, read_card, sha256_file, verify_files, write_card
from vitedge.card import ModelCard
from vitedge.compile.passport import PASSPORT_NAME
from vitedge.documents import confined, read_model, write_document
from vitedge.errors import InputError
from vitedge.limits import check_input_size
from vitedge.quantize.lint import Finding
from vitedge.schemas.bundle import BundleSettings, Passport

if TYPE_CHECKING:
    from vitedge.preprocess import PixelInput

BUNDLE_NAME = "bundle.json"
MODEL = "model.onnx"
SOURCE = "source.onnx"
RECREATE = "re-create the bundle with vitedge compile"


@dataclass
class Bundle:
    """A bundle as read back from disk (what a device sees), with compile's lint findings."""

    path: Path
    card: ModelCard
    settings: BundleSettings  # bundle.json
    passport: Passport  # passport.json
    findings: list[Finding] = field(default_factory=list)

    @property
    def runtime(self) -> str:
        return self.settings.runtime

    @property
    def pixels(self) -> PixelInput | None:
        """The raw pixels a bundle compiled with --preprocess-in-graph takes (None otherwise)."""
        from vitedge.preprocess import PixelInput

        return None if self.settings.pixels is None else PixelInput.from_dict(self.settings.pixels.to_dict())

    def file(self, key: str) -> Path:
        """The file bundle.json names under `key`, inside the bundle and hashed by its card."""
        name = getattr(self.settings, key) if key in ("model", "weights", "engine", "layers",
                                                      "source_model") else \
            getattr(self.settings.build, key, None)
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

    path = Path(path)
    if not is_bundle(path):
        raise InputError(f"{path} is not a vitedge bundle (no {PASSPORT_NAME} / {BUNDLE_NAME})",
                         "make one with: vitedge compile SRC --target NAME -o BUNDLE")
    card = read_card(path)
    if card.format != "bundle":
        raise InputError(f"{path}/card.json says {card.format!r}, not a bundle", RECREATE)
    verify_files(path, card)
    passport = read_model(path / PASSPORT_NAME, Passport, hint=RECREATE)
    settings = read_model(path / BUNDLE_NAME, BundleSettings, hint=RECREATE)
    if passport.runtime["name"] != settings.runtime:
        raise InputError(f"{path}: passport.json says {passport.runtime['name']}, bundle.json "
                         f"{settings.runtime}", RECREATE)
    for name, digest in passport.files.items():
        if card.files.get(name) != digest:
            raise InputError(f"{path / name} does not match the hash in its passport",
                             "the bundle was changed after it was made; re-create it")
    result = Bundle(path, card, settings, passport)
    for key in {"onnxruntime": ("model",), "openvino": ("model", "weights", "source_model"),
                "tensorrt": ("onnx",)}[settings.runtime]:
        result.file(key)
    # the shapes it declares must fit in memory (a bundle is a user's file like any model)
    check_input_size(card.preprocessing.input_size, path)
    graph = result.file({"onnxruntime": "model", "openvino": "source_model", "tensorrt": "onnx"}[settings.runtime])
    onnx_file(path, card, graph.relative_to(path).as_posix())
    return result


def seal(staging: Path, card: ModelCard, passport: dict[str, Any]) -> None:
    """Hash the model files into the passport, write it, then the card (which hashes it too)."""
    passport["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir())
                         if p.is_file() and not p.name.startswith(".")
                         and p.name not in (PASSPORT_NAME, "card.json")}
    write_document(staging / PASSPORT_NAME, passport)
    write_card(staging, card)
