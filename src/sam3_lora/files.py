"""Writing outputs: checked before any work starts, written so that a crash or a full disk
never leaves half of something behind, readable as the user's umask says."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from safetensors import SafetensorError

from sam3_lora.errors import Sam3LoraError


def is_inside(name: str) -> bool:
    """Whether the relative path ``name`` (read from a file) stays inside the folder it is
    relative to, by its text alone: not absolute (POSIX or Windows), no ``..`` part, no NUL."""
    if "\x00" in name or name.startswith(("/", "\\")):
        return False
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        return False
    return ".." not in re.split(r"[\\/]", name)


def inside_folder(folder: str | Path, name: str) -> Path | None:
    """``folder / name`` when ``name``, a path read from a file that belongs to ``folder``,
    leads to a place inside ``folder``; None when it leads out. The text is judged first
    (``is_inside``), so an absolute or climbing name costs no file system call; then where it
    resolves, so a symbolic link inside ``folder`` pointing out of it leads out too. Nothing
    is opened either way."""
    if not isinstance(name, str) or not name or not is_inside(name):
        return None
    path = Path(folder) / name
    try:
        return path if path.resolve().is_relative_to(Path(folder).resolve()) else None
    except (OSError, RuntimeError):   # a link loop, a name too long: it leads nowhere usable
        return None


@contextlib.contextmanager
def atomic_folder(folder: str | Path):
    """Yields an empty temporary sibling of ``folder`` to write into; on success it replaces
    ``folder`` by a rename, on failure it is deleted. A crash mid-write therefore never
    leaves a half-written folder under the final name. An ``OSError`` while writing (a full
    disk: ENOSPC, from the OS or inside safetensors) becomes a one-line ``Sam3LoraError``
    naming ``folder``. A symlink at ``folder`` is replaced, never written through.

    Everything written gets the user's umask before the rename (0644 files under umask 022):
    transformers and onnxruntime write some weight files 0600 (through temporary files),
    which would make a model meant to be shared unreadable to others. A process killed
    outright (SIGKILL, power loss) cannot clean up: its staging folder, named after its host
    and process id, is removed by the next ``atomic_folder`` in the same parent folder,
    whatever that one writes."""
    folder = Path(folder)
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(folder.parent)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(folder) + f"{os.getpid()}-", dir=folder.parent))
        yield staging
        apply_umask(staging)
        if folder.is_symlink():   # replaced, never written through (nor emptied: rmtree refuses links)
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except (OSError, SafetensorError) as exc:   # a full disk, a quota, a read-only or vanished place
        raise Sam3LoraError(f"{folder}: could not be written ({_write_error_reason(exc)}); nothing "
                            f"half-written was left; free some space or choose a writable place") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _write_error_reason(exc: Exception) -> str:
    """The system's words for a failed write: ``strerror`` of an ``OSError``; safetensors
    raises its own ``SafetensorError`` whose text holds them ("I/O error: No space left on
    device (os error 28) at path ...")."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    found = re.search(r"I/O error: (.+?) \(os error \d+\)", str(exc))
    return found[1] if found else type(exc).__name__


@contextlib.contextmanager
def replacing_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling of ``path`` to write; on success it is renamed onto
    ``path``, on failure deleted. The final name is replaced, never written through: a
    symlink placed at ``path`` (by someone who wants our output to land on their target) is
    replaced by a plain file and its target is left untouched. A crash leaves the old file
    or the new one, never half of one. The file gets the user's umask (``mkstemp`` makes
    0600). An ``OSError`` (a full disk) becomes one line naming ``path``."""
    path = Path(path)
    temporary = None
    try:
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(descriptor)
        temporary = Path(name)
        yield temporary
        temporary.chmod(0o666 & ~current_umask())
        os.replace(temporary, path)
        temporary = None
    except (OSError, SafetensorError) as exc:
        raise Sam3LoraError(f"{path}: could not be written ({_write_error_reason(exc)}); "
                            f"free some space or choose a writable place") from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def write_file(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` with ``replacing_file``: never through a
    symlink, never half-written. Returns ``path``."""
    with replacing_file(path) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def open_for_append(path: str | Path):
    """``open(path, "a", encoding="utf-8")`` that refuses to follow a symlink at ``path``
    (``O_NOFOLLOW``): appending through a link planted in an output folder would grow a file
    elsewhere. A link there is one line naming it."""
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise Sam3LoraError(f"{path}: is a symbolic link; output files are never written through "
                                f"links: remove it and run again") from None
        raise Sam3LoraError(f"{path}: could not be opened for writing "
                            f"({exc.strerror or type(exc).__name__})") from None
    return os.fdopen(descriptor, "a", encoding="utf-8")


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``open``/``mkdir`` would have
    had under the user's umask: 0666 (0777 for folders and executables) minus the umask."""
    mask = current_umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o111
        path.chmod((0o777 if executable else 0o666) & ~mask)


STAGING_MARK = ".partial-"
"""What names a staging folder: ``.NAME.partial-HOST-PID-RANDOM`` (``_staging_prefix``)."""


def _staging_prefix(folder: Path) -> str:
    """``.NAME.partial-HOST-``: what ``atomic_folder`` names its staging folders (then the
    process id and a random tail), so that a later run can tell whose they were."""
    return f".{folder.name}{STAGING_MARK}{socket.gethostname()}-"


def remove_stale_staging(parent: Path) -> list[Path]:
    """Delete the staging folders in ``parent``, whatever output they were for, left by
    processes of this host that no longer run (killed before they could clean up); returns
    what was removed. Folders of live processes, and of other hosts sharing the file system,
    are left alone."""
    host = f"{STAGING_MARK}{socket.gethostname()}-"
    removed = []
    for path in Path(parent).glob(".*" + glob.escape(host) + "*"):
        pid = path.name.rpartition(host)[2].split("-", 1)[0]
        if path.is_dir() and not path.is_symlink() and pid.isdigit() and not _process_runs(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Inside, SIGTERM raises ``SystemExit(143)`` so that cleanup (``atomic_folder``'s
    ``finally``) runs: Python's default SIGTERM action ends the process without unwinding,
    which left a half-written export behind (measured). Ctrl-C already raises
    ``KeyboardInterrupt``. Main thread only (signals can be set nowhere else); the previous
    handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_sigterm(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_output(path: str | Path, *, folder: bool, what: str) -> Path:
    """Refuse, before any work is done, an output that cannot be written: a folder that is a
    file (or a file that is a folder), or a place under a missing-and-uncreatable or
    read-only parent, or a place where nothing can be created (``/proc``). ``what`` names the
    setting in the message (``output.dir``, ``output``...). Leaves nothing behind (a probe
    folder is created and removed); returns ``path`` as a ``Path``."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise Sam3LoraError(f"{what} {path}: is {kind}; give {'a folder' if folder else 'a file path'} there")
    # An existing folder is written into; an existing file is replaced, in the folder it is in.
    existing = path if folder and path.exists() else next(
        (p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise Sam3LoraError(f"{what} {path}: {existing} is a file, so nothing can be written under it; "
                            f"choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Sam3LoraError(f"{what} {path}: {existing} is not writable; choose a writable place")
    # os.access answers yes to root everywhere, /proc and /sys included, where nothing can
    # be created: only creating something tells. The probe is removed at once.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=existing))
    except OSError as exc:
        raise Sam3LoraError(f"{what} {path}: nothing can be created in {existing} "
                            f"({exc.strerror or type(exc).__name__}); choose a writable place") from None
    return path
