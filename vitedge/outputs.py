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
- A live output (`vitedge run`) is written in place, so what was recorded survives a crash.
Nothing here prints: what cleanup did is logged to the `vitedge.outputs` logger (the CLI shows it).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import glob as globlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from vitedge import ASSETS
from vitedge.errors import InputError

log = logging.getLogger("vitedge.outputs")

OWNER = ".vitedge-owner"  # inside staging / old / temporary folders
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>partial|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
_TEMP = re.compile(r"^vitedge-[a-z]+-(?P<pid>\d+)-[0-9a-f]{8}$")
REPORT_GENERATOR = "vitedge report"


class OutputKind(StrEnum):
    ARTIFACT = "artifact"
    BUNDLE = "bundle"
    RUN = "run"
    EVAL = "eval"
    CAPTURE = "capture"


KIND_NAMES = {OutputKind.ARTIFACT: "artifact", OutputKind.BUNDLE: "bundle",
              OutputKind.RUN: "run directory", OutputKind.EVAL: "eval directory",
              OutputKind.CAPTURE: "capture folder"}
# The file that says what a folder is, and (for the last three) the key a legacy one had.
_MANIFESTS = ((OutputKind.RUN, "summary.json", "stop_reason"), (OutputKind.EVAL, "eval.json", "models"),
              (OutputKind.CAPTURE, "capture.json", "kept"))
# What each kind writes besides its manifest (relative POSIX paths; folders end in "/").
_PATTERNS = {
    OutputKind.RUN: re.compile(r"^(summary\.json|frames\.jsonl|events\.jsonl|disagreements/"
                               r"|disagreements/frame\d+\.jpg)$"),
    OutputKind.EVAL: re.compile(r"^(eval\.json|logits\.npz|worst/|worst/\d+\.jpg)$"),
    OutputKind.CAPTURE: re.compile(r"^(capture\.json|frame\d+\.png)$"),
    OutputKind.ARTIFACT: re.compile(r"^(card\.json|quant_report\.json|quant_report\.md)$"),
    OutputKind.BUNDLE: re.compile(r"^card\.json$"),
}


# ------------------------------------------------------------------------------- small I/O
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write to a temporary file beside `path`, then rename: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, *, mode: int = 0o666) -> None:
    atomic_write_bytes(path, text.encode(), mode=mode)


def json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file's object, or None when it is unreadable or not an object (for recognizing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------- locks and owners
_locks: dict[str, tuple[int, Path]] = {}  # output path -> (fd, lock file), held by this process
_owners: dict[str, int] = {}  # owned folder -> fd of its locked owner file


def _lock_folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"vitedge-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _claim(out: Path) -> None:
    """Hold the lock on the path `out` until `release(out)` or the end of the process."""
    key = str(out)
    if key in _locks:
        return
    lock = _lock_folder() / (hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").split("\n")[0].strip() or "?"
            os.close(fd)
            raise InputError(f"{out} is being written by another vitedge process (pid {holder})",
                             "wait for it to finish, or choose another output path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file its previous holder unlinked while we waited for it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{key}\n".encode("utf-8", "surrogatepass"), 0)
    _locks[key] = (fd, lock)


def busy(out: str | Path) -> bool:
    """True while another process holds the lock on `out` (is writing it)."""
    path = absolute_path(Path(out))
    if str(path) in _locks:
        return False
    try:
        _claim(path)
    except InputError:
        return True
    release(path)
    return False


def release(out: str | Path | None = None) -> None:
    """Give up the lock on `out` (every output this process holds when None)."""
    keys = list(_locks) if out is None else [str(absolute_path(Path(out)))]
    for key in keys:
        held = _locks.pop(key, None)
        if held is None:
            continue
        fd, lock = held
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


atexit.register(release)


def releasing(step: Callable[..., Any]) -> Callable[..., Any]:
    """For a library step that writes: the locks it took are given back when it returns or fails
    (a failed step in a long-lived process must not keep its output locked until exit)."""

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_locks)
        try:
            return step(*args, **kwargs)
        finally:
            for key in set(_locks) - before:
                release(key)

    return wrapper


def _owned_dir(parent: Path, prefix: str) -> Path:
    """A new folder `prefix-PID-RANDOM` in `parent` whose owner file this process holds locked."""
    path = parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o777)
    fd = os.open(path / OWNER, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _owners[str(path)] = fd
    return path


def _disown(path: Path) -> None:
    """Drop the owner file of a folder about to become (or stop being) an output."""
    fd = _owners.pop(str(path), None)
    with contextlib.suppress(FileNotFoundError):
        (path / OWNER).unlink()
    if fd is not None:
        os.close(fd)


def _remove_owned(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _disown(path)


def _stale(path: Path, pid: int) -> bool:
    """True when the process that made `path` is gone (its owner lock is free)."""
    if str(path) in _owners:
        return False
    owner = path / OWNER
    if not owner.is_file():
        return not _pid_alive(pid)
    try:
        fd = os.open(owner, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def clean_leftovers(folder: Path, name: str | None = None) -> list[str]:
    """Remove what dead vitedge processes left in `folder` (for one output `name`, or all).

    A stale `.NAME.old-*` whose NAME is missing is put back: its swap was interrupted after the
    old output moved aside and before the new one arrived. Returns what was done, one line each.
    """
    done: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return done
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        if name is not None and match["name"] != name:
            continue
        path = Path(entry.path)
        if not _stale(path, int(match["pid"])):
            continue
        target = Path(folder) / match["name"]
        held = path / match["name"]
        if match["what"] == "old" and held.exists() and not target.exists():
            os.replace(held, target)
            done.append(f"restored {target} from an overwrite that was interrupted (pid {match['pid']})")
        else:
            done.append(f"removed {path}, left by vitedge process {match['pid']} that was stopped")
        shutil.rmtree(path, ignore_errors=True)
    for line in done:
        log.warning(line)
    return done


def _remove_stale_locks() -> None:
    """Lock files of processes that are gone (a lock no one holds is free to remove)."""
    with contextlib.suppress(OSError):
        for lock in _lock_folder().glob("*.lock"):
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                with contextlib.suppress(OSError):
                    if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                        lock.unlink()
            except BlockingIOError:
                pass
            finally:
                os.close(fd)


def clean_temporary() -> list[str]:
    """Remove vitedge's folders in the system temp directory whose process is gone."""
    _remove_stale_locks()
    done = []
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            match = _TEMP.match(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and (Path(entry.path) / OWNER).is_file() \
                    and _stale(Path(entry.path), int(match["pid"])):
                shutil.rmtree(entry.path, ignore_errors=True)
                done.append(f"removed {entry.path}, left by vitedge process {match['pid']} that was stopped")
    for line in done:
        log.warning(line)
    return done


@contextlib.contextmanager
def temporary_directory(purpose: str) -> Iterator[Path]:
    """A private scratch folder in the system temp directory, removed afterwards (or by the next
    vitedge command if this process is killed)."""
    path = _owned_dir(Path(tempfile.gettempdir()), f"vitedge-{purpose}-")
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        _remove_owned(path)


# ------------------------------------------------------------------------ what is an input
def absolute_path(path: Path) -> Path:
    """The absolute path with every parent's symlink resolved (the last part kept as given)."""
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / path.name


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
            ok = data is not None and (data.get("kind") == kind or legacy_key in data)
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
    allowed: set[str] = _report_files(folder)
    if kind in (OutputKind.ARTIFACT, OutputKind.BUNDLE):
        files = (json_object(folder / "card.json") or {}).get("files")
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


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output(out: str | Path, kind: OutputKind, *, overwrite: bool = False,
                 inputs: Iterable[Path] = ()) -> Path:
    """Refuse an output this command may not write, before any work; claim its lock.

    Returns the absolute output path.
    """
    given = Path(out)
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
    _claim(out)
    return out


@contextlib.contextmanager
def writing(out: str | Path, kind: OutputKind, *, overwrite: bool = False,
            inputs: Iterable[Path] = (), live: bool = False) -> Iterator[Path]:
    """Yield the folder to fill; it becomes `out` only when the block succeeds.

    `live=True` (runs) yields `out` itself: an existing output is moved aside first and removed
    when the block ends, and what the block wrote stays even when it fails.
    """
    given = Path(out)
    inputs = list(inputs)
    out = check_output(given, kind, overwrite=overwrite, inputs=inputs)
    space = _disk_space(given)
    try:
        with space:
            out.parent.mkdir(parents=True, exist_ok=True)
            _claim(out)
            clean_leftovers(out.parent, out.name)
            check_output(given, kind, overwrite=overwrite, inputs=inputs)  # again, under the lock
            with (_live(out) if live else _staged(out)) as folder:
                yield folder
    finally:
        release(out)


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    staging = _owned_dir(out.parent, f".{out.name}.partial-")
    os.chmod(staging, 0o777 & ~_umask())  # outputs are shared like any folder the user makes
    try:
        yield staging
        _disown(staging)
        _swap_in(staging, out)
    except BaseException:
        _remove_owned(staging)
        raise


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    old = _owned_dir(out.parent, f".{out.name}.old-")
    os.replace(out, old / out.name)
    os.replace(staging, out)
    _remove_owned(old)


@contextlib.contextmanager
def _live(out: Path) -> Iterator[Path]:
    old = None
    if out.exists():
        old = _owned_dir(out.parent, f".{out.name}.old-")
        os.replace(out, old / out.name)
    try:
        out.mkdir()
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
            _remove_owned(old)
        raise
    try:
        yield out
    finally:
        if old is not None:
            _remove_owned(old)


# ------------------------------------------------------------------------------ file sets
def check_files(paths: Iterable[str | Path], *, owned: Callable[[Path], bool], what: str,
                inputs: Iterable[Path] = ()) -> None:
    """Refuse file outputs that would replace a file vitedge did not write as `what`."""
    inputs = list(inputs)
    for given in map(Path, paths):
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
    first.parent.mkdir(parents=True, exist_ok=True)
    _claim(first)
    try:
        with _disk_space(first):
            for target, data in zip(targets, files.values()):
                atomic_write_bytes(target, data)
    finally:
        release(first)


@contextlib.contextmanager
def _disk_space(what: Path) -> Iterator[None]:
    """A full disk is the user's to fix: one line, and nothing was written."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"no space left on the device while writing {what}; nothing was written",
                             "free some space or choose another output path") from None
        raise
