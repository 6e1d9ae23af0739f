"""Artifact directories: model file(s) + `card.json`, written atomically.

Every step reads an artifact and writes a new one. A step builds its output in a temporary
sibling directory and renames it into place only when everything is written, so a crash or
a failed parity check never leaves a half-written artifact that a later step would trust.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vitedge.card import ModelCard
from vitedge.errors import InputError

CARD_NAME = "card.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / CARD_NAME).is_file()


def read_card(directory: Path) -> ModelCard:
    card_path = directory / CARD_NAME
    try:
        data = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{directory} has no {CARD_NAME}",
                         "point at a directory written by a vitedge step") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{card_path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                         "re-create the artifact") from None
    return ModelCard.from_dict(data)


def artifact_hash(card: ModelCard) -> str:
    """A stable identity for an artifact: the hash of its model files' hashes."""
    digest = hashlib.sha256()
    for name in sorted(card.files):
        digest.update(f"{name}:{card.files[name]}\n".encode())
    return digest.hexdigest()


def verify_files(directory: Path, card: ModelCard) -> None:
    """Refuse an artifact whose files do not match the hashes its card recorded."""
    for name, expected in card.files.items():
        path = directory / name
        if not path.is_file():
            raise InputError(f"{directory} is missing {name}, which its card lists",
                             "the artifact is incomplete; re-create it")
        actual = sha256_file(path)
        if actual != expected:
            raise InputError(
                f"{path} does not match the hash in card.json (sha256 {actual[:12]}…, "
                f"expected {expected[:12]}…)",
                "the file was changed after the artifact was written; re-create the artifact")


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless overwriting an artifact directory was asked for."""
    if out.exists() and not overwrite:
        raise InputError(f"output {out} already exists",
                         "choose another -o path or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is a file, not an artifact directory",
                         "choose a directory path for -o")


@contextlib.contextmanager
def writing_artifact(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill; move it to `out` only if the block succeeds."""
    out = Path(out)
    check_output(out, overwrite)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; artifacts are shared
    try:
        yield staging
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"no space left on the device while writing {out}; nothing was written",
                             "free some space or choose another -o path") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_card(directory: Path, card: ModelCard) -> None:
    """Record the hashes of every model file in the directory, then write card.json."""
    card.files = {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != CARD_NAME
    }
    atomic_write_text(directory / CARD_NAME, card.to_json())


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
