"""The one output writer: every command that writes a folder or a file goes through here.

Rules (README, "Safety"):
- An existing output is replaced only with `--overwrite`, and only when it is something vitedge
  wrote and recognizes as the same kind (an artifact, a bundle, a run, eval or capture folder),
  holding nothing but what vitedge writes there. Anything else is refused, never deleted.
- The output is never an input of the command, never holds one and never lies inside one, and
  never is (or holds) the current directory.
- One process writes an output at a time: a lock on the output's path is held from the first
  check to the end of the process's write (`flock` on a file in a private folder of the temp
  directory, so nothing appears beside the output and the kernel releases it when the process dies).
- Folders are built in a hidden `.NAME.partial-PID-*` sibling and renamed into place; an existing
  output is moved to `.NAME.old-PID-*` first and removed after the swap. Each of those (and
  vitedge's folders in the system temp directory) holds an owner file locked by its process: the
  next vitedge command removes the ones whose process is gone, and puts back an old output whose
  swap was interrupted, so the user never ends up with neither.
- A live output (`vitedge run`) is written as it goes, so what was recorded survives a crash; it
  replaces an earlier run only when it ends with its summary (until then it is written in a hidden
  `.NAME.live-PID-*` sibling, and one that fails is kept as `NAME.unfinished`).
- A full, read-only or forbidden disk, or a name too long for it, is one line naming the output
  (`_write_errors`), checked before any work where it can be.
The locks, owned folders, atomic file writes and the cleanup after killed processes are in
`vitedge.locks`; this module decides what may be written where.
"""

from __future__ import annotations

import contextlib
import errno
import glob as globlib
import os
import re
import typing
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from vitedge import ASSETS
from vitedge.errors import InputError, VitedgeError
from vitedge.locks import (
    OWNER,
    absolute_path,
    atomic_write_bytes,
    claim,
    clean_leftovers,
    current_umask,
    disown,
    json_object,
    owned_dir,
    release,
    remove_owned,
    short_stem,
    unfinished_name,
)

REPORT_GENERATOR = "vitedge report"


class OutputKind(StrEnum):
    ARTIFACT = "artifact"
    BUNDLE = "bundle"
    RUN = "run"
    EVAL = "eval"
    CAPTURE = "capture"
    OPTIMIZE = "optimize"
    PACKAGE = "package"
    EXAMPLES = "examples"


KIND_NAMES = {OutputKind.ARTIFACT: "artifact", OutputKind.BUNDLE: "bundle",
              OutputKind.RUN: "run directory", OutputKind.EVAL: "eval directory",
              OutputKind.CAPTURE: "capture folder", OutputKind.OPTIMIZE: "optimize folder",
              OutputKind.PACKAGE: "package folder", OutputKind.EXAMPLES: "example data folder"}
# The file that says what a folder is, and (for the run, eval and capture) the key a legacy one had.
_MANIFESTS = ((OutputKind.RUN, "summary.json", "stop_reason"), (OutputKind.EVAL, "eval.json", "models"),
              (OutputKind.CAPTURE, "capture.json", "kept"), (OutputKind.OPTIMIZE, "optimize.json", None),
              (OutputKind.PACKAGE, "package.json", None), (OutputKind.EXAMPLES, "example-data.json", None))
MANIFEST_FILES = {kind: manifest for kind, manifest, _legacy in _MANIFESTS}
# What each kind writes besides its manifest (relative POSIX paths; folders end in "/").
_PATTERNS = {
    # a run of several sources has one run's files per stream, in streamK/
    OutputKind.RUN: re.compile(r"^(stream\d{1,4}/)?(summary\.json|frames\.jsonl|events\.jsonl|metrics\.prom"
                               r"|disagreements/|disagreements/frame\d+\.jpg)$|^stream\d{1,4}/$"
                               r"|^\.space-reserve$"),  # what a killed run leaves of the space it kept
    OutputKind.EVAL: re.compile(r"^(eval\.json|logits\.npz|worst/|worst/\d+\.jpg)$"),
    OutputKind.CAPTURE: re.compile(r"^(capture\.json|frame\d+\.png)$"),
    OutputKind.ARTIFACT: re.compile(r"^(card\.json|quant_report\.json|quant_report\.md)$"),
    OutputKind.BUNDLE: re.compile(r"^card\.json$"),
    # a package's files are the ones its package.json hashes; these are its folders
    OutputKind.PACKAGE: re.compile(r"^(package\.json|model_repository/|model_repository/[^/]+/"
                                   r"|model_repository/[^/]+/\d+/)$"),
    OutputKind.EXAMPLES: re.compile(r"^(example-data\.json|(train|heldout)/|(train|heldout)/\d/"
                                    r"|(train|heldout)/\d/\d{4}\.png)$"),
}


# ------------------------------------------------------------------------ what is an input
def input_paths(*sources: Any) -> list[Path]:
    """The files and folders behind what a command reads (model sources, data, references).

    Strings that are not paths (timm:NAME, camera indexes, URLs, GStreamer pipelines) add
    nothing; a glob adds the folder it starts from; builtin models add the package's assets.
    """
    paths: list[Path] = []
    for source in sources:
        if source is None:
            continue
        if isinstance(source, (list, tuple)):
            paths += input_paths(*source)
            continue
        text = str(source)
        if text.startswith(("timm:", "torchvision:", "rtsp://", "rtsps://", "http://", "https://")) \
                or text.isdigit() or text.startswith("/dev/video") or "!" in text:
            continue
        if text.startswith("builtin:") or (text == "digits-vit" and not Path(text).exists()):
            paths.append(ASSETS)
            continue
        if globlib.has_magic(text):
            parts = Path(text).parts
            fixed = [p for p in parts[:next(i for i, p in enumerate(parts) if globlib.has_magic(p))]]
            text = str(Path(*fixed)) if fixed else "."
        path = Path(text)
        if path.exists():
            paths.append(path.resolve())
    return paths


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_place(out: Path, inputs: Iterable[Path]) -> None:
    cwd = Path.cwd().resolve()
    if _is_within(cwd, out):
        raise InputError(f"output {out} is (or holds) the current directory",
                         "choose an output path inside it, e.g. -o out/NAME")
    for source in inputs:
        source = Path(source).resolve()
        if source == out:
            raise InputError(f"output {out} is an input of this command",
                             "write to another path: vitedge never replaces what it reads")
        if _is_within(source, out):
            raise InputError(f"output {out} holds the input {source}",
                             "write to another path: vitedge never replaces what it reads")
        if source.is_dir() and _is_within(out, source):
            raise InputError(f"output {out} lies inside the input {source}",
                             "write outside the folders this command reads")


# ----------------------------------------------------------------- recognizing an output
def recognize(folder: Path) -> OutputKind | None:
    """Which kind of vitedge output `folder` is, from its manifest file (None: not one)."""
    card = folder / "card.json"
    if card.is_file():
        data = json_object(card)
        if data is None or "card_version" not in data:
            return None
        return OutputKind.BUNDLE if data.get("format") == "bundle" else OutputKind.ARTIFACT
    for kind, manifest, legacy_key in _MANIFESTS:
        if (folder / manifest).is_file():
            data = json_object(folder / manifest)
            ok = data is not None and (data.get("kind") == kind or (legacy_key is not None and legacy_key in data))
            return kind if ok else None
    return None


def is_report_document(data: dict[str, Any] | None) -> bool:
    return bool(data) and data.get("generator") == REPORT_GENERATOR  # type: ignore[union-attr]


def _report_files(folder: Path) -> set[str]:
    """Names of the report sets (X.html, X.md, X.json) vitedge wrote in `folder`."""
    names: set[str] = set()
    for path in folder.glob("*.json"):
        data = json_object(path)
        if is_report_document(data):
            names |= {path.name, *(str(data.get(k)) for k in ("html", "md") if data.get(k))}  # type: ignore[union-attr]
    return names


def _foreign(folder: Path, kind: OutputKind) -> list[str]:
    """What `folder` holds that a vitedge output of `kind` does not write (relative paths)."""
    if kind is OutputKind.OPTIMIZE:
        return _optimize_foreign(folder)
    allowed: set[str] = _report_files(folder)
    if kind in (OutputKind.ARTIFACT, OutputKind.BUNDLE, OutputKind.PACKAGE):
        manifest = MANIFEST_FILES[kind] if kind is OutputKind.PACKAGE else "card.json"
        files = (json_object(folder / manifest) or {}).get("files")
        allowed |= set(files) if isinstance(files, dict) else set()
    if kind is OutputKind.RUN:
        record = (json_object(folder / "summary.json") or {}).get("record")
        allowed |= {record} if isinstance(record, str) else set()
    pattern = _PATTERNS[kind]
    foreign: list[str] = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = (base / name).as_posix() + "/"
            if os.path.islink(os.path.join(root, name)) or not pattern.match(rel):
                foreign.append(rel)
        dirs[:] = [d for d in dirs if (base / d).as_posix() + "/" not in foreign]
        for name in sorted(files):
            rel = (base / name).as_posix()
            if os.path.islink(os.path.join(root, name)) or not (rel in allowed or pattern.match(rel)):
                foreign.append(rel)
    return foreign


def _optimize_foreign(folder: Path) -> list[str]:
    """An optimize folder holds optimize.json, report sets, and in candidates/ (and best/) only
    artifacts and bundles, each holding only what vitedge writes in one."""
    def output(entry: Path, name: str, kinds: tuple[OutputKind, ...]) -> list[str]:
        kind = recognize(entry) if entry.is_dir() and not entry.is_symlink() else None
        return [f"{name}/{n}" for n in _foreign(entry, kind)] if kind in kinds else [name]

    foreign: list[str] = []
    reports = _report_files(folder)
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or (entry.is_file() and entry.name != "optimize.json"
                                  and entry.name not in reports):
            foreign.append(entry.name)
        elif entry.name == "best":
            foreign += output(entry, "best", (OutputKind.BUNDLE,))
        elif entry.name == "candidates":
            for child in sorted(entry.iterdir()):
                foreign += output(child, f"candidates/{child.name}", (OutputKind.ARTIFACT, OutputKind.BUNDLE))
        elif not entry.is_file():
            foreign.append(entry.name + "/")
    return foreign


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output(out: str | Path, kind: OutputKind, *, overwrite: bool = False,
                 inputs: Iterable[Path] = ()) -> Path:
    """Refuse an output this command may not write, before any work; claim its lock.

    Returns the absolute output path.
    """
    with _write_errors(Path(out)):  # a name too long, a folder that cannot be read
        return _check_output(Path(out), kind, overwrite=overwrite, inputs=inputs)


def _check_output(given: Path, kind: OutputKind, *, overwrite: bool, inputs: Iterable[Path]) -> Path:
    if given.is_symlink():
        raise InputError(f"output {given} is a symbolic link",
                         "give the real folder, or another path: vitedge does not write through links")
    out = absolute_path(given)
    _check_place(out, inputs)
    what = KIND_NAMES[kind]
    if out.exists():
        if not overwrite:
            raise InputError(f"output {given} already exists",
                             f"choose another path, or pass --overwrite (it replaces a vitedge {what} only)")
        if not out.is_dir():
            raise InputError(f"output {given} exists and is a file, not a {what}",
                             "choose a folder path for the output")
        if any(out.iterdir()):
            found = recognize(out)
            if found is None:
                names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
                raise InputError(f"{given} is not a vitedge output: it holds {_listing(names)}",
                                 "vitedge replaces only what it wrote; choose another path")
            if found is not kind:
                raise InputError(f"{given} is a vitedge {KIND_NAMES[found]}, not a {what}",
                                 "choose another path, or remove it yourself")
            foreign = _foreign(out, kind)
            if foreign:
                raise InputError(f"{given} holds {_listing(foreign)}, which vitedge did not write there",
                                 "move those files away, or choose another path")
    _check_writable(out)
    claim(out)
    return out


def _check_writable(out: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be written (a read-only disk, a
    folder that is not the user's), and an existing output that cannot be moved aside."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    for path in (folder, out) if out.is_dir() else (folder,):  # moving a folder rewrites its '..'
        if not os.access(path, os.W_OK | os.X_OK):
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
            raise OSError(errno.EROFS if read_only else errno.EACCES, os.strerror(errno.EACCES), str(path))


@contextlib.contextmanager
def writing(out: str | Path, kind: OutputKind, *, overwrite: bool = False,
            inputs: Iterable[Path] = (), live: bool = False, resume: bool = False) -> Iterator[Path]:
    """Yield the folder to fill; it becomes `out` only when the block succeeds.

    `live=True` (runs) writes as it goes, so what the block wrote stays even when it fails: into
    `out` itself, or, when an earlier run is there, into a staging folder that replaces it only when
    the block ends well (a run that fails leaves the earlier one as it was and its own logs in
    `out.unfinished`). With `resume=True` too, an existing output of the same kind (holding only
    what vitedge wrote) is kept and written on in place.
    A full, read-only or forbidden disk is one line saying what was kept.
    """
    given = Path(out)
    inputs = list(inputs)
    overwrite = overwrite or resume  # resume: the same checks as replacing, then nothing replaced
    out = check_output(given, kind, overwrite=overwrite, inputs=inputs)
    try:
        with _write_errors(given):
            out.parent.mkdir(parents=True, exist_ok=True)
            claim(out)
            clean_leftovers(out.parent, out.name)
            check_output(given, kind, overwrite=overwrite, inputs=inputs)  # again, under the lock
            if live and resume and out.is_dir():
                yield out
                return
            with (_live(out) if live else _staged(out)) as folder:
                yield folder
    finally:
        release(out)


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    staging = owned_dir(out.parent, f".{short_stem(out.name)}.partial-")
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # outputs are shared like any folder the user makes
        yield staging
        disown(staging)
        _swap_in(staging, out)
    except BaseException:
        remove_owned(staging)
        raise


def _swap_in(staging: Path, out: Path) -> None:
    """`staging` becomes `out`; an existing `out` is moved aside first and removed after. A swap
    that fails (another user's folder, a read-only disk) leaves `out` as it was."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = owned_dir(out.parent, f".{short_stem(out.name)}.old-")
    try:
        os.replace(out, old / out.name)
    except BaseException:
        remove_owned(old)
        raise
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old / out.name, out)
        remove_owned(old)
        raise
    remove_owned(old)


@contextlib.contextmanager
def _live(out: Path) -> Iterator[Path]:
    """A run's folder, written as the run goes. With no earlier run, that is `out`: a run that
    fails keeps what it logged there (nothing at all: no folder). An earlier run is replaced only
    by a run that ends with its summary; until then the new one is written in a hidden sibling, and
    one that fails is kept beside the earlier run as `out.unfinished` (a SIGKILLed one is moved
    there by the next vitedge command)."""
    if not out.exists():
        out.mkdir()
        try:
            yield out
        except BaseException as exc:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when the run logged nothing
            kept = f"what the run logged is kept in {out}" if out.exists() else "nothing was written"
            _reraise(exc, out, kept)
        return
    staging = owned_dir(out.parent, f".{short_stem(out.name)}.live-")
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        yield staging
    except BaseException as exc:
        earlier = f"the earlier run in {out} is kept as it was"
        try:
            logged = any(p.name != OWNER for p in staging.iterdir())
        except OSError:
            logged = False
        if not logged:
            remove_owned(staging)
            _reraise(exc, out, earlier)
        kept = unfinished_name(out)
        disown(staging)
        os.replace(staging, kept)
        _reraise(exc, out, f"{earlier}; this run's logs are in {kept}")
    try:
        disown(staging)
        _swap_in(staging, out)
    except BaseException:
        kept = unfinished_name(out)
        with contextlib.suppress(OSError):
            os.replace(staging, kept)
        raise


# ------------------------------------------------------------------------------ file sets
def check_files(paths: Iterable[str | Path], *, owned: Callable[[Path], bool], what: str,
                inputs: Iterable[Path] = ()) -> None:
    """Refuse file outputs that would replace a file vitedge did not write as `what`."""
    inputs = list(inputs)
    for given in map(Path, paths):
        with _write_errors(given):
            _check_file(given, owned=owned, what=what, inputs=inputs)


def _check_file(given: Path, *, owned: Callable[[Path], bool], what: str, inputs: list[Path]) -> None:
    target = absolute_path(given)
    if given.is_symlink():
        raise InputError(f"{given} is a symbolic link", "write the file to a real path")
    if target.is_dir():
        raise InputError(f"{given} is a folder; a file path is expected", f"e.g. {given}/{what.split()[0]}.json")
    for source in inputs:
        source = Path(source).resolve()
        if source == target or _is_within(source, target):
            raise InputError(f"{given} is an input of this command", "write the file elsewhere")
    if target.exists() and not owned(target):
        raise InputError(f"{given} exists and is not a {what} vitedge wrote",
                         "choose another file name: vitedge does not replace files it did not write")


def write_files(files: dict[Path, bytes], *, owned: Callable[[Path], bool], what: str,
                inputs: Iterable[Path] = ()) -> None:
    """Write a set of files (a report's .html/.md/.json, a bench table), each atomically.

    An existing file is replaced only when `owned(path)` says vitedge wrote it as `what`.
    """
    check_files(files, owned=owned, what=what, inputs=inputs)
    targets = [absolute_path(Path(p)) for p in files]
    first = targets[0]
    try:
        with _write_errors(first):
            first.parent.mkdir(parents=True, exist_ok=True)
            claim(first)
            for target, data in zip(targets, files.values()):
                atomic_write_bytes(target, data)
    finally:
        release(first)


# What an OSError while writing means to the user, and what to do (errno -> (reason, hint)).
_WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another output path"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or choose another output path"),
    errno.EROFS: ("the file system is read-only", "choose an output path on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you can write to (or ask its owner)"),
    errno.EPERM: ("permission denied", "choose a folder you can write to (or ask its owner)"),
    errno.ENAMETOOLONG: ("a name is longer than the file system allows", "choose a shorter output name"),
}


def _said(exc: BaseException, what: Path, kept: str) -> BaseException:
    """`exc` as one line that says what was kept (an OSError the user can fix, or a user error)."""
    if isinstance(exc, VitedgeError):
        return InputError(f"{exc.message}; {kept}", exc.hint)
    reason = _WRITE_ERRORS.get(exc.errno) if isinstance(exc, OSError) else None
    if reason is None:
        return exc
    return InputError(f"{reason[0]} while writing {what}; {kept}", reason[1])


def _reraise(exc: BaseException, what: Path, kept: str) -> typing.NoReturn:
    said = _said(exc, what, kept)
    if said is exc:
        raise exc
    raise said from None


@contextlib.contextmanager
def _write_errors(what: Path, kept: str = "nothing was written") -> Iterator[None]:
    """A full, read-only or forbidden disk is the user's to fix: one line, and what was kept."""
    try:
        yield
    except OSError as exc:
        _reraise(exc, what, kept)
