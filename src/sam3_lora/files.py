"""Writing outputs: checked before any work starts, written so that a crash or a full disk
never leaves half of something behind, readable as the user's umask says."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from sam3_lora.errors import Sam3LoraError


@contextlib.contextmanager
def atomic_folder(folder: str | Path):
    """Yields an empty temporary sibling of ``folder`` to write into; on success it replaces
    ``folder`` by a rename, on failure it is deleted. A crash mid-write therefore never
    leaves a half-written folder under the final name. An ``OSError`` while writing (a full
    disk: ENOSPC) becomes a one-line ``Sam3LoraError`` naming ``folder``."""
    folder = Path(folder)
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        staging.chmod(0o777 & ~current_umask())   # mkdtemp makes it 0700: give it the user's umask
        yield staging
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except OSError as exc:   # a full disk, a quota, a read-only or vanished place
        raise Sam3LoraError(f"{folder}: could not be written ({exc.strerror or type(exc).__name__}); nothing "
                            f"half-written was left; free some space or choose a writable place") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: str | Path, *, folder: bool, what: str) -> Path:
    """Refuse, before any work is done, an output that cannot be written: a folder that is a
    file (or a file that is a folder), or a place under a missing-and-uncreatable or
    read-only parent. ``what`` names the setting in the message (``output.dir``,
    ``output``...). Creates nothing; returns ``path`` as a ``Path``."""
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
    return path
