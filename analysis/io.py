"""Files at the package's boundary: what an OS error means, which outputs may be written, locks, atomic writes.

Reading
    ``os_error_message`` says what an ``OSError`` is (permission denied, a symlink loop, not found, a read-only
    file system ...) in one line naming the path; ``path_kind`` looks at a path without mistaking a permission
    problem or a symlink loop for "not found"; ``os_errors`` turns the ``OSError`` of a block into a ``DE3Error``
    (or subclass) with that message. Every reader of a user's file goes through them; ``read_json_object`` reads
    every JSON file.

Writing
    ``check_output`` refuses, before any long work, an output that cannot be written (a file where a folder is
    needed, a read-only place, a path under a file) or that is, lies inside or contains one of the command's
    inputs. ``output_lock`` marks an output as being written: a hidden ``.<name>.lock`` file beside it, held with
    ``flock`` (released by the kernel when its process dies, so a killed writer never blocks the next) and
    naming the process and command. A second writer of the same output -- or of one inside it, or of one
    containing it -- is refused with one line saying who writes it. ``claim_output`` is both, for commands.
    ``atomic_dir`` and ``atomic_file`` make an output appear whole or not at all; ``atomic_dir`` takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import DE3Error, one_line, shorten

# Files that mark a folder as an output of this package (checkpoint, trace, training state): only such a folder,
# or an empty one, is ever replaced by ``atomic_dir``.
OUTPUT_MARKERS = ("config.json", "model.safetensors", "meta.json", "trace.parquet", "state.json")


class OutputBusy(DE3Error):
    """An output (or a folder around or inside it) is being written by another process or session."""


# ---- OS errors, said as what they are ------------------------------------------------------------------------------


def os_error_message(exc: OSError | ValueError, path: str | Path | None = None, *, writing: bool = False) -> str:
    """One line for an ``OSError``: the path it concerns, what went wrong, and what to do.

    ``path`` is used when the error names none (``exc.filename`` wins otherwise). A ``ValueError`` (a path with
    a NUL byte, which the OS cannot even look up) is worded too.
    """
    if isinstance(exc, ValueError):
        return f"{_show(path)}: not a usable path ({one_line(exc, 80)}); type the path again without control characters"
    where = _show(exc.filename if exc.filename is not None else path)
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        verb = "write to" if writing else "read"
        return f"{where}: permission denied; check that you may {verb} it (its permissions and its folders')"
    if code == errno.ELOOP:
        return f"{where}: a symlink loop (a link that leads back to itself); fix or remove the link"
    if code == errno.ENOENT:
        return f"{where}: not found" + ("; check the folder it goes in" if writing else "; check the path")
    if code == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a folder; check the path"
    if code == errno.EISDIR:
        return f"{where}: is a folder where a file was expected; give a file"
    if code == errno.EROFS:
        return f"{where}: on a read-only file system; choose a place you can write to"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"{where}: no space left on the device; free some space or choose another place"
    if code == errno.ENAMETOOLONG:
        return f"{where}: the name is too long for the file system; choose a shorter path"
    return f"{where}: {exc.strerror or one_line(exc)}"


def _show(path) -> str:
    return os.fsdecode(path) if path is not None else "(path)"


@contextlib.contextmanager
def os_errors(path: str | Path, error: type[DE3Error] = DE3Error, *, writing: bool = False) -> Iterator[None]:
    """Turn an ``OSError`` (or a NUL-byte ``ValueError`` from the OS layer) raised in the block into ``error``
    with ``os_error_message``'s one line."""
    try:
        yield
    except OSError as exc:
        raise error(os_error_message(exc, path, writing=writing)) from None
    except ValueError as exc:
        if "null" not in str(exc):
            raise
        raise error(os_error_message(exc, path, writing=writing)) from None


def path_kind(path: str | Path, error: type[DE3Error] = DE3Error) -> str | None:
    """"dir", "file", "other" or None (nothing there). A path that cannot be looked at -- permission denied on a
    folder above it, a symlink loop, a NUL byte -- raises ``error`` saying so, instead of reading as "not found"."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a file where a folder is expected on the way: nothing at this path
    except (OSError, ValueError) as exc:
        raise error(os_error_message(exc, path)) from None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"


def read_json_object(path: str | Path, error: type[DE3Error] = DE3Error, *,
                     fix: str = "fix or re-create the file") -> dict:
    """The JSON object in the file ``path``: the one reader of every JSON file the package reads (a config, a
    checkpoint's config.json and records, a training state, a trace's meta.json).

    Every problem is one ``error`` line naming the file: not found, a folder, an OS error said as what it is
    (``os_errors``); or not UTF-8 / not valid JSON, or JSON that is not an object, each ending with ``fix`` (what
    to do about it).
    """
    path = Path(path)
    kind = path_kind(path, error)
    if kind is None:
        raise error(f"{path}: file not found")
    if kind == "dir":
        raise error(f"{path}: is a folder; pass a JSON file")
    with os_errors(path, error):
        raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: unreadable, not valid JSON ({one_line(exc, 160)}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}; {fix}")
    return data


# ---- outputs: may this be written? -------------------------------------------------------------------------------


def _canonical(path: str | Path) -> Path:
    """Absolute, with the folder part resolved (symlinks followed) and the last part kept: what gets replaced."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    return path.parent.resolve() / path.name if path.name else path.resolve()


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file or folder (compared resolved, symlinks followed)."""
    return _resolved(a) == _resolved(b)


def check_writable(place: str | Path, what: str = "--out", error: type[DE3Error] = DE3Error) -> None:
    """Refuse a place where nothing can be written: the nearest existing folder at or above ``place`` must be a
    folder this process can create files in (tried for real: root ignores permission bits, not read-only file
    systems)."""
    place = Path(os.path.abspath(Path(place).expanduser()))
    existing = place
    while path_kind(existing, error) is None and existing != existing.parent:
        existing = existing.parent
    if path_kind(existing, error) != "dir":
        raise error(f"{what} {place}: {existing} is a file, so nothing can be made under it; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".de3-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise error(f"{what} {place}: cannot write there ({os_error_message(exc, existing, writing=True)})") from None


def check_output(out: str | Path, *, inputs: Iterable = (), around: Iterable = (), what: str = "--out",
                 kind: str = "folder", error: type[DE3Error] = DE3Error) -> Path:
    """Refuse an output that cannot be written or would destroy an input; call it before any long work.

    Parameters
    ----------
    out : the file or folder a command is about to write (absent, or replaced whole when it exists).
    inputs : files and folders the command reads: ``out`` may not be one of them, lie inside one or contain one.
    around : input folders ``out`` may lie inside as a new entry (a trace written into its checkpoint's folder) but
        may not be or contain, nor replace a file of. Paths compare resolved (symlinks followed); None entries
        are skipped.
    what : how the message names ``out`` ("--out").
    kind : "folder" -- absent, empty, or an output of this package (one of ``OUTPUT_MARKERS``): never a file or
        a folder of other things; or "file" -- absent or a file, never a folder.
    error : the ``DE3Error`` subclass to raise.

    Returns
    -------
    Path
        ``out``, absolute.

    Raises
    ------
    DE3Error
        One line naming ``out`` and the problem.
    """
    if "\x00" in os.fspath(out):
        raise error(f"{what} {shorten(os.fspath(out), 120)}: contains a NUL byte; give a real path")
    folder = Path(os.path.abspath(Path(out).expanduser()))
    found = path_kind(folder, error)
    if kind == "file":
        if found == "dir":
            raise error(f"{what} {folder} is a folder; give a file name such as {folder / 'out.csv'}")
    else:
        if found not in (None, "dir"):
            raise error(f"{folder}: exists and is a file, not a folder; choose another output folder")
        if found == "dir":
            with os_errors(folder, error):
                entries = [p.name for p in folder.iterdir()]
            if entries and not any(path_kind(folder / m, error) == "file" for m in OUTPUT_MARKERS):
                raise error(f"{folder}: exists and holds files that are not a checkpoint or trace (none of "
                            f"{', '.join(OUTPUT_MARKERS)}); it would be replaced whole, so choose a new or empty "
                            "folder")
    targets = {_canonical(folder), _resolved(folder)}
    for strict, paths in ((True, inputs), (False, around)):
        for given in paths:
            if given is None:
                continue
            source = _resolved(given)
            for target in targets:
                if target == source:
                    raise error(f"{what} {folder} is the input {given} itself: writing it would destroy what this "
                                f"command reads; choose another {what}")
                if source.is_relative_to(target):
                    raise error(f"{what} {folder} contains the input {given}: replacing it would delete that input; "
                                f"choose another {what}")
                if target.is_relative_to(source) and (strict or (kind == "file" and found is not None)):
                    raise error(f"{what} {folder} lies inside the input {given}: writing there would change what "
                                f"this command reads; choose a path outside it")
    check_writable(folder.parent, what, error)
    if found == "dir" and not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{what} {folder}: permission denied; check that you may write to it (its permissions)")
    return folder


# ---- locks: one writer per output ----------------------------------------------------------------------------------

_HELD: dict[Path, dict] = {}  # outputs this process holds: {path: {"fd", "count", "thread"}}
_HELD_GUARD = threading.Lock()


def lock_file(path: str | Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    path = _canonical(path)
    return path.with_name(f".{path.name}.lock")


def _command() -> str:
    """How the running program is named in "being written by process N (...)"."""
    argv = sys.argv or ["python"]
    if Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "analysis" and len(argv) > 1:
        return f"analysis {argv[1]}"
    return Path(argv[0]).name or "python"


def _holder(fd_or_path) -> str:
    """'process 1234 (analysis train)' as written in a lock file, or 'another process'."""
    try:
        if isinstance(fd_or_path, int):
            text = os.pread(fd_or_path, 400, 0).decode("utf-8", "replace")
        else:
            text = Path(fd_or_path).read_text(encoding="utf-8", errors="replace")[:400]
        pid, _, command = text.strip().partition(" ")
        if pid.isdigit():
            return f"process {pid}" + (f" ({command})" if command else "")
    except OSError:
        pass
    return "another process"


def _try_flock(fd: int, mode: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _held_elsewhere(lock: Path) -> str | None:
    """Who holds ``lock`` (a relative's lock file), or None when nobody does (or it does not exist)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_flock(fd, fcntl.LOCK_SH):
            return None
        return _holder(fd)
    finally:
        os.close(fd)


def _busy_relative(path: Path) -> str | None:
    """A message when a folder around ``path``, or an output inside it, is being written by someone else."""
    mine = {p for p, h in _HELD.items() if h["thread"] == threading.get_ident()}
    for folder in path.parents:
        if folder == folder.parent:
            break
        if folder in mine:
            continue
        who = "this process (another session)" if folder in _HELD else _held_elsewhere(lock_file(folder))
        if who:
            return f"{path} lies inside {folder}, which is being written by {who}; wait for it or choose another place"
    if path_kind(path) == "dir":
        for root, dirs, files in os.walk(path):
            for name in files:
                if name.startswith(".") and name.endswith(".lock"):
                    inner = Path(root) / name[1:-len(".lock")]
                    if inner in mine:
                        continue
                    who = _held_elsewhere(Path(root) / name)
                    if who or inner in _HELD:
                        return (f"{path} contains {inner}, which is being written by {who or 'this process'}; wait "
                                "for it or choose another place")
    return None


@contextlib.contextmanager
def output_lock(out: str | Path, command: str | None = None, *, what: str = "--out", wait: float = 0.0,
                take: bool = True, agree: Callable[[bool], bool] | None = None) -> Iterator[Path]:
    """Hold ``out`` as being written by this process for the block; refuse (or wait for) another writer.

    Parameters
    ----------
    out : the output file or folder.
    command : how other processes' messages name this writer (default: from ``sys.argv``, e.g. "analysis train").
    wait : seconds to wait for another writer to finish before refusing (0: refuse at once).
    take : False on processes that must not lock (the non-zero ranks of a torchrun job).
    agree : ``Dist.all_ok`` under torchrun, so that every process fails together when the lock is refused.

    The lock is re-entrant in the thread that holds it (``atomic_dir`` inside a command that holds its output).
    A second writer of ``out``, of a path inside it or of a folder containing it raises ``OutputBusy`` naming the
    holder's process id and command. The lock file is removed on release; one left by a killed process holds no
    lock and is reused.
    """
    path = _canonical(out)
    error: DE3Error | None = None
    acquired = False
    if take:
        try:
            _acquire(path, command or _command(), what, wait)
            acquired = True
        except DE3Error as exc:
            error = exc
    if agree is not None and not agree(error is None):
        if acquired:
            _release(path)
        raise error or OutputBusy(f"{path}: another process of this job could not lock it; nothing was written")
    if error is not None:
        raise error
    try:
        yield path
    finally:
        if acquired:
            _release(path)


def _acquire(path: Path, command: str, what: str, wait: float) -> None:
    import fcntl

    deadline = time.monotonic() + max(wait, 0.0)
    me = threading.get_ident()
    lock = lock_file(path)
    while True:
        with _HELD_GUARD:
            held = _HELD.get(path)
            if held is not None and held["thread"] == me:
                held["count"] += 1
                return
        problem = None
        if held is None:
            with os_errors(lock.parent, writing=True):
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            if _try_flock(fd, fcntl.LOCK_EX):
                try:
                    same = os.fstat(fd).st_ino == os.stat(lock).st_ino
                except OSError:
                    same = False
                if same:  # not removed by a holder releasing it meanwhile
                    problem = _busy_relative(path)
                    if problem is None:
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
                        with _HELD_GUARD:
                            _HELD[path] = {"fd": fd, "count": 1, "thread": me}
                        return
                    with contextlib.suppress(OSError):
                        os.unlink(lock)  # ours while locked: leave nothing behind
                os.close(fd)
                if not same:
                    continue  # the file was removed by its last holder meanwhile: take the new one
            else:
                problem = (f"{path} is being written by {_holder(fd)}; wait for it to finish or choose another "
                           f"{what}")
                os.close(fd)
        else:
            problem = f"{path} is being written by this process (another session); wait for it to finish"
        if time.monotonic() >= deadline:
            raise OutputBusy(problem)
        time.sleep(0.2)


def _release(path: Path) -> None:
    with _HELD_GUARD:
        held = _HELD[path]
        held["count"] -= 1
        if held["count"]:
            return
        del _HELD[path]
    lock = lock_file(path)
    try:
        if os.fstat(held["fd"]).st_ino == os.stat(lock).st_ino:
            os.unlink(lock)  # before unlocking: a waiter then finds the file gone and makes a new one
    except OSError:
        pass
    os.close(held["fd"])


@contextlib.contextmanager
def claim_output(out: str | Path, *, inputs: Iterable = (), around: Iterable = (), what: str = "--out",
                 kind: str = "folder", error: type[DE3Error] = DE3Error, command: str | None = None,
                 take: bool = True, agree: Callable[[bool], bool] | None = None) -> Iterator[Path]:
    """``check_output`` then ``output_lock``, for a command's whole run: the output is checked before any long
    work and no other process writes it (or around it) until the block ends. Yields ``out``, absolute."""
    folder = check_output(out, inputs=inputs, around=around, what=what, kind=kind, error=error)
    with output_lock(folder, command, what=what, take=take, agree=agree):
        yield folder


# ---- atomic writes -------------------------------------------------------------------------------------------------

_ACTIVE: set[Path] = set()  # temporary folders of this process's atomic_dir blocks still running


@contextlib.contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; on success it replaces ``folder``, on failure it is removed.

    ``folder`` must pass ``check_output`` (absent, empty, or an output of this package) and is locked
    (``output_lock``) for the block. Under the lock, temporary ``.<name>.tmp-*`` and ``.<name>.old-*`` siblings
    left by writers that were killed are removed first.
    """
    folder = check_output(folder)
    with output_lock(folder):
        with os_errors(folder.parent, writing=True):
            folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder)
        with os_errors(folder.parent, writing=True):
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
        _ACTIVE.add(tmp)
        try:
            yield tmp
            _apply_umask(tmp)  # mkdtemp makes a private folder; outputs should not be
            with os_errors(folder, writing=True):
                _replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            _ACTIVE.discard(tmp)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` (a reader never sees half a
    file), on failure removed and ``path`` left as it was."""
    path = Path(path)
    with os_errors(path.parent, writing=True):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with os_errors(path, writing=True):
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, payload) -> None:
    """Write JSON beside, then rename over."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def _remove_stale(folder: Path) -> None:
    """Temporary siblings of ``folder`` left by writers that were killed. Called under ``folder``'s lock, so no
    other process is writing them; only this process's running blocks are spared."""
    prefixes = (f".{folder.name}.tmp-", f".{folder.name}.old-")
    try:
        siblings = list(folder.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        if path.name.startswith(prefixes) and path not in _ACTIVE:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


def _apply_umask(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing one is swapped out only once the new one is complete."""
    if os.path.lexists(dst):
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # never an existing name
        os.replace(dst, old)
        os.replace(src, dst)
        if old.is_symlink():  # --out was a link: the link goes, never what it pointed at
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)  # a leftover is removed by the next write under the lock
    else:
        os.replace(src, dst)
