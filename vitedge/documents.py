"""Sealed JSON documents and confined paths: the one way vitedge reads back what it wrote.

Every JSON file a later step trusts (card.json, bundle.json, passport.json, a run's summary.json,
eval.json, report and capture indexes) carries a `seal`: the sha256 of its own canonical JSON.
Reading one checks the seal first (an edit, a flipped byte or a truncation is refused with the
file's name), then validates it against its schema (`vitedge.schemas`, pydantic), so a malformed
field is one line naming the file and the field, never a traceback deeper in.

The seal detects edits and corruption; it is not a signature: vitedge itself can seal anything,
and `vitedge relabel` is how a card is changed on purpose (a new artifact, with lineage).

Every path read from such a document goes through `confined`: relative, inside the folder, and
not through a symbolic link that leaves it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, TypeVar

from vitedge.errors import InputError
from vitedge.locks import atomic_write_text

M = TypeVar("M")
SEAL = "seal"
MAX_DOCUMENT_BYTES = 64 * 2**20  # a card with 21k labels is ~1 MB; larger is not vitedge's


def _canonical(data: dict[str, Any]) -> bytes:
    body = {k: v for k, v in data.items() if k != SEAL}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode("utf-8", "surrogatepass")


def seal_of(data: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(data)).hexdigest()


def json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: written as null, so every reader (and every browser) can parse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def sealed(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with NaN/inf as null and its seal added (as the last key)."""
    body = {k: v for k, v in json_safe(data).items() if k != SEAL}
    return {**body, SEAL: seal_of(body)}


def sealed_json(data: dict[str, Any]) -> str:
    return json.dumps(sealed(data), indent=2, allow_nan=False) + "\n"


def write_document(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Seal `data` and write it atomically; return what was written."""
    document = sealed(data)
    atomic_write_text(Path(path), json.dumps(document, indent=2, allow_nan=False) + "\n")
    return document


def read_document(path: Path, schema: Any, *, what: str | None = None,
                  hint: str = "re-create it with the vitedge command that wrote it") -> dict[str, Any]:
    """Read a sealed JSON document, check its seal and validate it; return the plain dict.

    `schema` is a pydantic model class from `vitedge.schemas` (None: seal only).
    """
    return _read(path, schema, what, hint)[0]


def read_model(path: Path, schema: type[M], *, what: str | None = None,
               hint: str = "re-create it with the vitedge command that wrote it") -> M:
    """`read_document`, returning the validated, typed document."""
    return _read(path, schema, what, hint)[1]


def _read(path: Path, schema: Any, what: str | None, hint: str) -> tuple[dict[str, Any], Any]:
    path = Path(path)
    name = what or str(path)
    if path.is_symlink() or not path.is_file():
        raise InputError(f"{name} is missing" if not path.exists() else f"{name} is not a plain file",
                         hint)
    if path.stat().st_size > MAX_DOCUMENT_BYTES:
        raise InputError(f"{name} is {path.stat().st_size >> 20} MiB, too large for a vitedge document", hint)
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno})", hint) from None
    if not isinstance(data, dict):
        raise InputError(f"{name} holds a JSON {type(data).__name__}, not an object", hint)
    seal = data.get(SEAL)
    if seal is None:
        raise InputError(f"{name} has no seal: it was written by an older vitedge, or by hand",
                         "re-create it with this vitedge (vitedge relabel makes a card with new labels)")
    if seal != seal_of(data):
        raise InputError(f"{name} was changed after vitedge wrote it (its seal does not match)",
                         "re-create it; to change labels use vitedge relabel, which writes a new artifact")
    model = None
    if schema is not None:
        from pydantic import ValidationError

        try:
            model = schema.model_validate_json(text)
        except ValidationError as exc:
            raise InputError(f"{name}: {_first_error(exc)}", hint) from None
    return data, model


def confined(folder: Path, relative: Any, *, what: str) -> Path:
    """`folder / relative`, refused unless it is a relative path that stays inside `folder`."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise InputError(f"{what} names no usable file ({relative!r})", "re-create the folder")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or ".." in rel.parts:
        raise InputError(f"{what} names {relative!r}, a path outside its folder",
                         "vitedge reads only files inside the folder; re-create it")
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(folder / rel))
    if target != root and root not in target.parents:
        raise InputError(f"{what} names {relative!r}, which links outside its folder",
                         "vitedge does not follow links out of a folder; re-create it")
    return folder / rel


def validate(schema: type[M], data: dict[str, Any], *, what: str, hint: str) -> M:
    """Validate an already-read document against a (stricter) schema, as `read_document` does."""
    from pydantic import ValidationError

    try:
        return schema.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        raise InputError(f"{what}: {_first_error(exc)}", hint) from None


def _first_error(exc: Any) -> str:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    location = [str(p) for p in error["loc"] if p != "[key]"]
    return f"field {'.'.join(location) or '(top level)'}: {message}{more}"
