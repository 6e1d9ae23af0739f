"""Who holds what on disk: atomic file writes, output locks, folders owned by a live process, and
cleaning up what killed vitedge processes left (staging and old folders beside an output, scratch
folders in the temp directory).

Each owned folder holds an owner file its process keeps `flock`ed: the kernel drops the lock when
the process dies, so "is it stale?" needs no pid guessing. Nothing here prints: what cleanup did is
logged to the `vitedge.outputs` logger (the CLI shows it as a note).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vitedge.errors import InputError

log = logging.getLogger("vitedge.outputs")

OWNER = ".vitedge-owner"  # inside staging / old / temporary folders
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>partial|old|live)-(?P<pid>\d+)-[0-9a-f]{8}$")
_TEMP = re.compile(r"^vitedge-[a-z]+-(?P<pid>\d+)-[0-9a-f]{8}$")


# ------------------------------------------------------------------------------- small I/O
def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def short_stem(name: str) -> str:
    """`name`, or for a name near the file system's 255-byte limit a shorter one that stays unique
    (its start and a hash of it): hidden siblings add ~30 characters to the name they are for."""
    if len(name.encode("utf-8", "surrogateescape")) <= 200:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return name.encode("utf-8", "surrogateescape")[:120].decode("utf-8", "ignore") + "~" + digest


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write to a temporary file beside `path`, then rename: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{short_stem(path.name)}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode & ~current_umask())
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


def claim(out: Path) -> None:
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
        claim(path)
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


def owned_dir(parent: Path, prefix: str) -> Path:
    """A new folder `prefix-PID-RANDOM` in `parent` whose owner file this process holds locked."""
    path = parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o777)
    try:  # a full disk can refuse the owner file: the folder must not stay behind unowned
        fd = os.open(path / OWNER, os.O_RDWR | os.O_CREAT, 0o644)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    fcntl.flock(fd, fcntl.LOCK_EX)
    with contextlib.suppress(OSError):  # the pid is for people; the lock is what counts
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _owners[str(path)] = fd
    return path


def disown(path: Path) -> None:
    """Drop the owner file of a folder about to become (or stop being) an output."""
    fd = _owners.pop(str(path), None)
    with contextlib.suppress(FileNotFoundError):
        (path / OWNER).unlink()
    if fd is not None:
        os.close(fd)


def remove_owned(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    disown(path)


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
        if name is not None and match["name"] != short_stem(name):
            continue
        path = Path(entry.path)
        if not _stale(path, int(match["pid"])):
            continue
        # what an old folder holds is the output under its own name (the folder's may be shortened)
        held_names = [p.name for p in path.iterdir() if p.name != OWNER] if path.is_dir() else []
        held = path / (held_names[0] if len(held_names) == 1 else match["name"])
        target = Path(folder) / held.name
        if match["what"] == "old" and held.exists() and not target.exists():
            os.replace(held, target)
            done.append(f"restored {target} from an overwrite that was interrupted (pid {match['pid']})")
        elif match["what"] == "live" and any(p.name != OWNER for p in path.iterdir()):
            # a run that replaced an earlier one was killed: keep its logs beside the earlier run
            kept = unfinished_name(Path(folder) / match["name"])
            with contextlib.suppress(FileNotFoundError):
                (path / OWNER).unlink()
            os.replace(path, kept)
            done.append(f"kept the logs of a run that was stopped (pid {match['pid']}) in {kept}")
            continue
        else:
            done.append(f"removed {path}, left by vitedge process {match['pid']} that was stopped")
        shutil.rmtree(path, ignore_errors=True)
    for line in done:
        log.warning(line)
    return done


def unfinished_name(out: Path) -> Path:
    """Where a run that did not finish is kept beside the earlier run it did not replace."""
    for number in range(1, 1000):
        candidate = out.with_name(f"{short_stem(out.name)}.unfinished" + (f"-{number}" if number > 1 else ""))
        if not candidate.exists():
            return candidate
    raise InputError(f"{out.parent} already holds 999 unfinished runs of {out.name}", "remove some of them")


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
    path = owned_dir(Path(tempfile.gettempdir()), f"vitedge-{purpose}-")
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        remove_owned(path)


def absolute_path(path: Path) -> Path:
    """The absolute path with every parent's symlink resolved (the last part kept as given)."""
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / path.name
