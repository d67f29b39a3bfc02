"""Atomic writes: an output appears whole or not at all, and what was there before survives a failed write."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DE3Error

# Files that mark a folder as an output of this package (checkpoint, trace, training state): only such a folder,
# or an empty one, is ever replaced by ``atomic_dir``.
OUTPUT_MARKERS = ("config.json", "model.safetensors", "meta.json", "trace.parquet", "state.json")


def check_output_dir(folder: str | Path) -> Path:
    """Refuse an output folder whose replacement would destroy something that is not ours.

    ``folder`` may be absent, empty, or a folder this package wrote (it holds one of ``OUTPUT_MARKERS``); a file,
    or a folder of other things (``--out runs`` instead of ``--out runs/bbc``), raises ``DE3Error``.
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    if folder.exists() and not folder.is_dir():
        raise DE3Error(f"{folder}: exists and is a file, not a folder; choose another output folder")
    if folder.is_dir() and any(folder.iterdir()) and not any((folder / m).is_file() for m in OUTPUT_MARKERS):
        raise DE3Error(f"{folder}: exists and holds files that are not a checkpoint or trace (none of "
                       f"{', '.join(OUTPUT_MARKERS)}); it would be replaced whole, so choose a new or empty folder")
    return folder


@contextlib.contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; on success it replaces ``folder``, on failure it is removed.

    A process killed half-way leaves only a hidden ``.<name>.tmp-<pid>-*`` folder beside the old, complete
    output; the next write to the same place removes it once that process is gone.
    ``folder`` must pass ``check_output_dir`` (absent, empty, or an output of this package).
    """
    folder = check_output_dir(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
    try:
        yield tmp
        _apply_umask(tmp)  # mkdtemp makes a private folder; outputs should not be
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` (a reader never sees half a
    file), on failure removed and ``path`` left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, payload) -> None:
    """Write JSON beside, then rename over."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def _remove_stale(folder: Path) -> None:
    """Temporary siblings of ``folder`` left by writers that were killed (their process no longer runs)."""
    for path in folder.parent.glob(f".{glob.escape(folder.name)}.*-*"):
        kind, _, rest = path.name[len(folder.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _apply_umask(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing one is swapped out only once the new one is complete."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
