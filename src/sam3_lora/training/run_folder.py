"""The run folder (``output.dir``): one run's outputs, never two runs' mixed.

A new run refuses a folder that holds an earlier run (its ``best/``, ``last/`` and
``metrics.jsonl`` would be mixed with or replaced by the new run's, and a later resume would
continue the old run's checkpoints under the new config); it continues one only when
resumed from it, and replaces one only when asked to (``overwrite``), removing the earlier
run's outputs first. Other files in the folder are not the run's and are left alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sam3_lora.errors import Sam3LoraError

RUN_FILES = ("config.yaml", "metrics.jsonl")
RUN_FOLDERS = ("checkpoints", "best", "last", "tensorboard", "sam3-lora")
"""What a training writes in its run folder; ``tensorboard/`` (or ``sam3-lora/`` with several
trackers) holds the trackers' logs."""

def earlier_run(run_dir: Path) -> list[str]:
    """The entries of an earlier run in ``run_dir`` (folders with a trailing ``/``); [] if none.
    A link counts, whatever it points to."""
    found = [name for name in RUN_FILES if _present(run_dir / name)]
    return found + [f"{name}/" for name in RUN_FOLDERS if _present(run_dir / name)]


def check_run_folder(run_dir: Path, *, continuing: bool, overwrite: bool) -> None:
    """Refuse, before any work, a ``run_dir`` holding an earlier run that this run neither
    continues (``continuing``: resumed from its checkpoints) nor replaces (``overwrite``), and
    a continued run whose entries are links (planted there, they would send its appended
    metrics, checkpoints and tracker logs elsewhere). One line naming the folder and the way
    out."""
    found = earlier_run(run_dir)
    if continuing and overwrite:
        raise Sam3LoraError(f"output.dir {run_dir}: resuming a run and overwriting it contradict each other; "
                            f"drop overwrite to continue the run, or resume to replace it", option="overwrite")
    if found and not continuing and not overwrite:
        raise Sam3LoraError(f"output.dir {run_dir}: holds an earlier run ({', '.join(found[:4])}), which a new run "
                            f"would mix with; continue it (resume from {run_dir}), replace it (overwrite), or "
                            f"choose another output.dir", option="overwrite")
    linked = [entry for entry in found if (run_dir / entry.rstrip("/")).is_symlink()] if continuing else []
    if linked:
        raise Sam3LoraError(f"{run_dir / linked[0].rstrip('/')}: is a symbolic link; output files are never "
                            f"written through links: remove it and run again")


def remove_earlier_run(run_dir: Path) -> list[str]:
    """Delete the earlier run's entries in ``run_dir`` (a link itself, never what it points
    to); returns what was removed, as ``earlier_run`` names it."""
    found = earlier_run(run_dir)
    for entry in found:
        path = run_dir / entry.rstrip("/")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found


def _present(path: Path) -> bool:
    return path.is_symlink() or path.exists()
