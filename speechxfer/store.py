"""Writing folders whole: a kill never leaves new weights beside an old config, and a folder
being trained into has one writer at a time.

``atomic_folder`` fills a hidden temporary sibling, then swaps it in with renames (old folder
moved aside, new renamed in, old removed), so a reader sees the old folder or the new one,
never a mix. A training run keeps its lock and checkpoint in the sibling ``<out>.partial``
(``work_folder``), which the swap leaves alone; ``training_folder`` holds it for the run.

POSIX only (``fcntl.flock``, ``os.kill(pid, 0)``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

WORK_SUFFIX = ".partial"  # <out>.partial: lock + checkpoint of a run writing <out>
LOCK_FILE = "lock"
CHECKPOINT = "checkpoint"  # the run's checkpoint folder in <out>.partial

_building: set[Path] = set()  # temporary folders being filled by atomic_folder in this process


def is_model_file(path: Path) -> bool:
    """A file that decides a saved system's answers: a config.json or safetensors weights (not
    a report or an exported graph left beside them)."""
    return path.name == "config.json" or path.suffix == ".safetensors"


def digest_files(digest: hashlib._Hash, files: Iterable[tuple[str, Path]]) -> None:
    """Add each ``(name, path)`` to ``digest``: the name, then the file's own SHA-256, so two
    folders digest alike exactly when their files have the same names and contents."""
    for name, path in files:
        digest.update(f"{name}\0".encode())
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())


class StoreError(ValueError):
    """A folder that cannot be written; the message names it and the problem."""


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def pid_alive(pid: int) -> bool:
    """True if a process with this id runs (on this machine, in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def recover(directory: str | Path) -> None:
    """Remove temporary siblings of ``directory`` left by killed processes.

    A kill between the two renames of a swap leaves no ``directory`` but its complete old
    version: that one is put back first. Call before reading a folder others may write.
    """
    directory = _absolute(Path(directory))
    if not directory.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(directory.name)}\.(\d+)-[0-9a-f]+\.(new|old)$")
    dead = [(entry, m[2]) for entry in sorted(directory.parent.iterdir())
            if (m := pattern.match(entry.name)) and int(m[1]) != os.getpid()
            and not pid_alive(int(m[1]))]
    for entry, kind in dead:
        if kind == "old" and not directory.exists():
            os.rename(entry, directory)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def check_replaceable(directory: str | Path, owned: Callable[[Path], bool],
                      part: bool = False) -> None:
    """Refuse to replace what no save of ours wrote: a file, or a folder of other files that
    ``owned`` does not recognise (an empty folder is fine); and a folder at any depth inside a
    saved one of the same kind (its config.json recognised by ``owned``), which it would change:
    MODEL/head and MODEL/sub/x are parts of MODEL. ``part``: ``directory`` is a part its owner,
    its parent, writes (MODEL/fast); the owner itself may still not lie inside a saved folder."""
    directory = _absolute(Path(directory))
    inside = _saved_ancestor(directory, owned, skip=1 if part else 0)
    if inside is not None:
        raise StoreError(f"{directory}: lies inside the saved folder {inside}, which writing it "
                         "would change; choose a folder outside it")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise StoreError(f"{directory}: exists and is not a folder; choose another folder")
    cwd = _absolute(Path.cwd())
    if directory == cwd or directory in cwd.parents:
        raise StoreError(f"{directory}: is the working folder or holds it; refusing to replace "
                         "it: choose a new folder inside it")
    if any(directory.iterdir()) and not owned(directory):
        raise StoreError(f"{directory}: holds other files (not a folder this toolkit wrote); "
                         "refusing to replace it: choose a new or empty folder")


def _saved_ancestor(directory: Path, owned: Callable[[Path], bool], skip: int) -> Path | None:
    """The outermost folder above ``directory`` (past its first ``skip`` parents) that a save
    recognised by ``owned`` wrote, on the path as given or with its links resolved (a link
    into a saved folder writes into it just the same); None if there is none."""
    found = None
    for path in dict.fromkeys((directory, Path(os.path.realpath(directory)))):
        for ancestor in path.parents[skip:]:
            if (ancestor / "config.json").is_file() and owned(ancestor):
                found = ancestor  # parents run outwards: the last found is the outermost
    return found


@contextmanager
def atomic_folder(directory: str | Path, owned: Callable[[Path], bool],
                  part: bool = False) -> Iterator[Path]:
    """Yield an empty folder to fill; when the block ends without error it replaces
    ``directory`` whole (on error it is removed and ``directory`` is left as it was).

    ``owned`` tells an existing folder this kind of save wrote (only such a folder, or an
    empty one, is replaced; ``part``: see ``check_replaceable``). A folder opened inside
    another ``atomic_folder`` is written in place: the outer swap already makes it appear at
    once.
    """
    directory = _absolute(Path(directory))
    if any(b == directory or b in directory.parents for b in _building):
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    recover(directory)
    check_replaceable(directory, owned, part)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"{directory}: cannot create its parent folder ({err})") from None
    tag = f".{directory.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}"
    new, old = directory.parent / f"{tag}.new", directory.parent / f"{tag}.old"
    new.mkdir()
    _building.add(new)
    try:
        yield new
        moved = directory.exists()
        if moved:
            os.rename(directory, old)
        try:
            os.rename(new, directory)
        except OSError:
            if moved:
                os.rename(old, directory)
            raise
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    finally:
        _building.discard(new)
    shutil.rmtree(old, ignore_errors=True)


def work_folder(out: str | Path) -> Path:
    """Where a run writing ``out`` keeps its lock and checkpoint: the sibling ``<out>.partial``."""
    out = Path(out)
    return out.parent / f"{out.name}{WORK_SUFFIX}"


def _holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def training_folder(out: str | Path, owned: Callable[[Path], bool]) -> Iterator[Path]:
    """Lock ``out`` for one run and yield its work folder (``work_folder``); ``out`` itself
    must be new, empty or ``owned`` (checked now, before any training).

    The lock file holds the owner's PID under an ``flock``, which the system drops when the
    owner dies, so a lock left by a killed run is simply taken over. A live holder makes this
    raise ``StoreError`` at once. When the block ends without error the work folder (checkpoint
    included) is removed; after an error or a kill the checkpoint stays for the next run.
    """
    out = Path(out)
    recover(out)
    check_replaceable(out, owned)
    work = work_folder(out)
    lock = work / LOCK_FILE
    # a folder of that name not made by a run would be deleted with the run's work at the end
    stray = sorted(e.name for e in work.iterdir() if e.name not in (LOCK_FILE, CHECKPOINT)
                   and not e.name.startswith(f".{CHECKPOINT}.")) if work.is_dir() else []
    if stray:
        raise StoreError(f"{work}: holds other files ({', '.join(stray[:3])}), not a training "
                         "run's lock and checkpoint; refusing to use it as this run's work "
                         "folder: move it or choose another output folder")
    while True:
        try:
            work.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"{work}: cannot create the run's work folder ({err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"{out}: another training (PID {_holder(lock)}) is writing this folder; wait for "
                f"it to finish or choose another output folder (lock: {lock})") from None
        try:  # the file may have been removed by the previous holder before we locked it
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield work
    except BaseException:
        lock.unlink(missing_ok=True)
        with suppress(OSError):  # nothing to resume (bad data, say): no empty folder left behind
            work.rmdir()
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        os.close(fd)


@contextmanager
def folder_lock(directory: str | Path) -> Iterator[None]:
    """Wait for, then hold, an ``flock`` on ``directory`` for the block: one read-modify-write
    of a file set inside it at a time (two enrolments at once would each write the voiceprints
    without the other's speaker)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
