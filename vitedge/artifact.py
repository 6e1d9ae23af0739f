"""Artifact folders: model file(s) + a sealed `card.json`; the one reader and the one writer.

Every step reads an artifact and writes a new one (through `vitedge.outputs.writing`, so a crash
or a failed check never leaves a half-written artifact). `write_card` hashes every file in the
folder into the card and seals it; `read_card` refuses a card that was edited (seal), malformed
(schema) or that names a path outside its folder; `verify_files` refuses an artifact whose files
do not match their hashes or that lacks a file its kind must have (removing a file from the
card's list does not switch verification off).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vitedge.card import ModelCard, read_labels_file
from vitedge.documents import confined, read_document, write_document
from vitedge.errors import InputError
from vitedge.locks import OWNER, atomic_write_text, releasing  # noqa: F401  (atomic_write_text: for the steps)

CARD_NAME = "card.json"
RECREATE = "re-create the artifact with the vitedge step that made it"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / CARD_NAME).is_file()


def read_card(directory: Path) -> ModelCard:
    """The artifact's card, sealed and valid (its files are checked by `verify_files`)."""
    from vitedge.schemas.card import CardDoc

    directory = Path(directory)
    if not (directory / CARD_NAME).exists():
        raise InputError(f"{directory} has no {CARD_NAME}", "point at a folder written by a vitedge step")
    data = read_document(directory / CARD_NAME, CardDoc, hint=RECREATE)
    card = ModelCard.from_dict(data)
    card.folder = directory.resolve()
    return card


def required_files(card: ModelCard) -> set[str]:
    """The files an artifact of this format must have, whatever its card lists."""
    if card.format == "onnx":
        return {"model.onnx"}
    if card.format == "bundle":
        runtime = (card.source.get("bundle") or {}).get("runtime")
        files = {"onnxruntime": {"model.onnx", "source.onnx"}, "tensorrt": {"model.onnx", "trtexec.sh"},
                 "openvino": {"model.xml", "model.bin", "source.onnx"}}.get(runtime)
        if files is None:
            raise InputError(f"the card of this bundle records runtime {runtime!r}", RECREATE)
        return {"bundle.json", "passport.json", *files}
    return {"model.safetensors"}


def artifact_hash(card: ModelCard) -> str:
    """A stable identity for an artifact: the hash of its model files' hashes."""
    digest = hashlib.sha256()
    for name in sorted(card.files):
        digest.update(f"{name}:{card.files[name]}\n".encode())
    return digest.hexdigest()


def lineage_parents(card: ModelCard) -> list[dict[str, Any]]:
    """The lineage's parents that were artifacts (`{"artifact_hash": ..., "path": ...}`), oldest first."""
    return [step["parent"] for step in card.lineage
            if isinstance(step.get("parent"), dict) and isinstance(step["parent"].get("artifact_hash"), str)]


def verify_files(directory: Path, card: ModelCard) -> None:
    """Refuse an artifact whose files are missing, outside it, or not what its card hashed."""
    missing = sorted(required_files(card) - set(card.files))
    if missing:
        raise InputError(f"{directory}/{CARD_NAME} does not list {', '.join(missing)}, which a "
                         f"{card.format} artifact must have", RECREATE)
    for name, expected in card.files.items():
        path = confined(directory, name, what=f"{directory}/{CARD_NAME}")
        if path.is_symlink() or not path.is_file():
            raise InputError(f"{directory} is missing {name}, which its card lists",
                             "the artifact is incomplete; " + RECREATE)
        actual = sha256_file(path)
        if actual != expected:
            raise InputError(
                f"{path} does not match the hash in card.json (sha256 {actual[:12]}…, "
                f"expected {expected[:12]}…)",
                "the file was changed after the artifact was written; " + RECREATE)


def onnx_file(directory: Path, card: ModelCard, name: str = "model.onnx") -> Path:
    """An ONNX graph of a verified artifact, refused when its external data lies elsewhere."""
    import onnx

    path = confined(directory, name, what=f"{directory}/{CARD_NAME}")
    if name not in card.files:
        raise InputError(f"{directory}/{CARD_NAME} does not list {name}", RECREATE)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common base
        raise InputError(f"{path} is not a readable ONNX graph ({type(exc).__name__})", RECREATE) from None
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location")
        confined(directory, location, what=f"{path} (external data of {tensor.name})")
        if location not in card.files:
            raise InputError(f"{path} keeps {tensor.name} in {location!r}, which the card does not hash",
                             RECREATE)
    from vitedge.limits import check_graph

    check_graph(model, path)
    return path


def derive_card(parent: ModelCard, step: str, *, params: dict[str, Any], metrics: dict[str, Any] | None = None,
                tools: tuple[str, ...] = (), unsaved_parent: dict[str, Any] | None = None,
                format: str | None = None, card_metrics: dict[str, Any] | None = None) -> ModelCard:
    """The card of what `step` makes from `parent`: the parent's fields, no files yet (`write_card`
    hashes them), and one more lineage entry saying what was done, with which tools, when.

    The entry names the parent by its artifact hash (and the folder it was read from, the path
    `sessions.find_reference` tries first), or, for a parent never written as an
    artifact, by `unsaved_parent` (default: the parent's source). `card_metrics` replaces the
    card's metrics (the new artifact's own figures); without it the parent's are kept.
    """
    import time

    from vitedge.versions import tool_versions

    card = ModelCard.from_dict(parent.to_dict())
    card.files = {}
    if format is not None:
        card.format = format
    if card_metrics is not None:
        card.metrics = card_metrics
    if parent.files:  # the path is a hint for finding the parent again, trusted only if its hash matches
        reference = {"artifact_hash": artifact_hash(parent),
                     **({"path": str(parent.folder)} if parent.folder is not None else {})}
    else:
        reference = unsaved_parent or parent.source
    card.lineage = [*parent.lineage, {
        "step": step, "parent": reference, "params": params, "metrics": metrics or {},
        "tools": tool_versions(*tools), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    return card


def write_card(directory: Path, card: ModelCard) -> None:
    """Record the hashes of every file in the folder, then write card.json, sealed."""
    directory = Path(directory)
    card.files = {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name not in (CARD_NAME, OWNER)
    }
    write_document(directory / CARD_NAME, card.to_dict())


@releasing
def relabel(source: str | Path, labels: list[str] | str | Path, out: str | Path, *,
            overwrite: bool = False) -> ModelCard:
    """A new artifact (or bundle) with other class names (a list, or a labels file): the same
    files, a new sealed card.

    The only sanctioned way to change a card: the new one records the old one as its parent.
    """
    import shutil

    from vitedge.outputs import OutputKind, check_output, input_paths, writing

    source = Path(source)
    if not is_artifact(source):
        raise InputError(f"{source} is not a vitedge artifact or bundle (no {CARD_NAME})",
                         "relabel what vitedge export / quantize / prune / compile wrote")
    labels_file = None if isinstance(labels, list) else str(labels)
    if labels_file is not None:
        labels = read_labels_file(labels_file)
    card = read_card(source)
    verify_files(source, card)
    if card.num_classes is None:
        raise InputError(f"{source} outputs features, not classes: it has no labels to change")
    if len(labels) != card.num_classes:
        raise InputError(f"{len(labels)} labels given for a model with {card.num_classes} outputs",
                         "give one label per output class, in output order")
    kind = OutputKind.BUNDLE if card.format == "bundle" else OutputKind.ARTIFACT
    inputs = input_paths(source, labels_file)
    check_output(out, kind, overwrite=overwrite, inputs=inputs)
    new = derive_card(card, "relabel", params={
        "labels": labels_file, "changed": sum(a != b for a, b in zip(card.labels or [], labels))
        if card.labels else len(labels)})
    new.labels, new.class_ids = list(labels), None
    with writing(out, kind, overwrite=overwrite, inputs=inputs) as staging:
        for name in card.files:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, staging / name)
        write_card(staging, new)
    return new
