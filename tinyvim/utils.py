"""Small helpers shared across the package, above all the one safe writer.

Every output tinyvim writes (ONNX, engine, sidecar, timing cache, JSON, PNG) goes through
`atomic_output` (or `atomic_write_text` / `_bytes` / `_json`), and every command checks its
output paths with `check_output_path` / `check_output_paths` *before* it starts the work:

- Only a regular file or a new path is ever written. Devices, FIFOs, sockets, directories and
  anything under /proc or /sys are refused (as root too, where permission checks say nothing).
  A symlink is followed and its final target written; the link itself is never replaced.
- The new content goes to a hidden temporary file beside the target, which replaces the target
  in one rename: readers see the old file or the new one, never a mixture.
- A new file gets the process umask (0666 & ~umask); an existing file keeps its mode (and, as
  root, its owner).
- The temporary file is removed on any exception and on SIGTERM / SIGINT / SIGHUP. SIGKILL
  cannot be caught: the temporary name records host and pid, and the next write to the same
  target removes the temporaries whose process is gone (a live one is left alone).
- A name the filesystem cannot hold (a component over NAME_MAX bytes, a path over PATH_MAX) is
  refused by the check, before the work, not by the rename after it.

`scratch_directory` is the same promise for a private working folder (an export staged before
it is converted): removed on any exception and on SIGTERM / SIGINT / SIGHUP.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator, Mapping

from tinyvim.errors import TinyvimError

#: marks our temporary files: .<target name>.<host>-<pid>-<random>.tinyvim-tmp<suffix>
TEMP_MARK = ".tinyvim-tmp"
#: where a path is never a plain file we may create or replace (/dev/stdout and
#: /proc/self/fd/1 lead to a terminal, a pipe or the caller's own redirect); /dev/shm is tmpfs
_SYSTEM_ROOTS = ("/proc", "/sys", "/dev")
_SYSTEM_EXCEPTIONS = ("/dev/shm",)
#: the part of a target's name kept in its temporary name (names are limited to 255 bytes)
_NAME_KEEP = 120
#: Linux's limits, where pathconf cannot say
_NAME_MAX, _PATH_MAX = 255, 4096


# --------------------------------------------------------------------- checks before the work
def plural(count: int, noun: str, many: str | None = None) -> str:
    """'1 image', '2 images', '1 batch', '3 batches' (`many` for irregular plurals)."""
    return f"{count} {noun if count == 1 else many or noun + ('es' if noun.endswith(('s', 'ch', 'sh', 'x')) else 's')}"


def _refuse(path, what: str, reason: str) -> TinyvimError:
    label = f"{what} {path}" if what else str(path)
    return TinyvimError(f"cannot write {label}: {reason} (choose another output path)")


def check_output_path(path: str | os.PathLike, *, suffixes: tuple[str, ...] | None = None,
                      what: str = "") -> Path:
    """The regular file that writing `path` would create or replace (symlinks followed), or a
    one-line TinyvimError naming the problem. Call it before the work; `atomic_output` calls
    it again just before writing. `suffixes` (e.g. ('.png', '.svg')) restricts the format;
    `what` names the option in messages (e.g. '--json')."""
    text = os.fspath(path)
    if not text:
        raise _refuse("''", what, "the path is empty")
    if text.endswith(os.sep) or Path(text).name in ("", ".", ".."):
        raise _refuse(text, what, "it names a directory, not a file")
    check_name_lengths(text, what)
    target, hops = _resolve(text)
    if suffixes is not None and target.suffix.lower() not in suffixes and Path(text).suffix.lower() not in suffixes:
        raise _refuse(text, what, f"unsupported format {Path(text).suffix or '(no suffix)'!r}: "
                                  f"use {', '.join(suffixes)}")
    system = next((h for h in hops if _under(h, _SYSTEM_ROOTS) and not _under(h, _SYSTEM_EXCEPTIONS)), None)
    if system is not None:
        raise _refuse(text, what, f"{system} is a device or system file, not a regular file")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _refuse(text, what, exc.strerror or str(exc)) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise _refuse(text, what, "it is a directory")
        if not stat.S_ISREG(st.st_mode):
            kind = ("a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "not a regular file")
            raise _refuse(text, what, f"{target if target != Path(text) else 'it'} is {kind}, not a regular file")
    # The nearest existing ancestor must be a directory we may create files in.
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise _refuse(text, what, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _refuse(text, what, f"permission denied in {parent}")
    if st is not None and parent == target.parent and _sticky_blocks(parent, st):
        raise _refuse(text, what, f"{target} belongs to another user in a sticky directory")
    return target


def check_name_lengths(path: str | os.PathLike, what: str = "") -> None:
    """Every component within the filesystem's NAME_MAX bytes and the whole path within
    PATH_MAX (beyond them stat, open and rename all fail with ENAMETOOLONG), or a one-line
    TinyvimError. check_output_path calls it; a command writing a folder calls it itself."""
    text = os.fspath(path)
    absolute = os.path.abspath(text)
    existing = absolute
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    name_max, path_max = (_pathconf(existing, "PC_NAME_MAX", _NAME_MAX), _pathconf(existing, "PC_PATH_MAX", _PATH_MAX))
    for part in Path(absolute).parts:
        size = len(os.fsencode(part))
        if size > name_max:
            shown = part if len(part) <= 40 else f"{part[:20]}…{part[-12:]}"
            raise _refuse(text if len(text) <= 80 else f"{text[:40]}…{text[-20:]}", what,
                          f"the name {shown!r} is {size} bytes, longer than the {name_max} this filesystem allows")
    if len(os.fsencode(absolute)) >= path_max:
        raise _refuse(f"{text[:40]}…{text[-20:]}", what,
                      f"the path is {len(os.fsencode(absolute))} bytes, the system allows under {path_max}")


def _pathconf(path: str, name: str, default: int) -> int:
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError, AttributeError):
        return default
    return value if value and value > 0 else default


def _resolve(text: str) -> tuple[Path, list[Path]]:
    """(final target, every path the name passes through): the given path, each symlink
    hop of its last component, and the fully resolved target."""
    hop = os.path.abspath(text)
    hops = [Path(hop)]
    for _ in range(40):
        if not os.path.islink(hop):
            break
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
        hops.append(Path(hop))
    target = Path(os.path.realpath(text))
    return target, hops + [target]


def _under(path: Path, roots: tuple[str, ...]) -> bool:
    return any(path == Path(root) or Path(root) in path.parents for root in roots)


def _sticky_blocks(folder: Path, st: os.stat_result) -> bool:
    """In a sticky directory (/tmp) only a file's owner, the directory's owner or root may
    replace it: the rename at the end would fail after all the work."""
    euid = os.geteuid()
    dst = os.stat(folder)
    return bool(dst.st_mode & stat.S_ISVTX) and euid != 0 and euid not in (st.st_uid, dst.st_uid)


def check_output_paths(outputs: Mapping[str, str | os.PathLike | None], *,
                       inputs: Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, Any]] = (),
                       suffixes: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Path]:
    """check_output_path for each named output ({'-o': path, '--json': path}; None = not
    asked for), plus: no two outputs are the same file, and no output is one of the `inputs`
    ({'MODEL': path} or [('--model', path), ...]: a report written over the model it checks).
    Returns {name: resolved path}."""
    sources = list(inputs.items() if isinstance(inputs, Mapping) else inputs)
    resolved: dict[str, Path] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        target = check_output_path(path, what=what, suffixes=(suffixes or {}).get(what))
        for other, other_target in resolved.items():
            if other_target == target:
                raise TinyvimError(f"{what} and {other} name the same file {path}: give them different paths")
        for name, source in sources:
            if source is not None and _same_file(source, target):
                raise TinyvimError(f"{what} {path} would overwrite the input given as {name}: choose another path")
        resolved[what] = target
    return resolved


def _same_file(a: str | os.PathLike, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.realpath(a)) == b


# --------------------------------------------------------------------- temporaries and signals
_live_temps: set[str] = set()
_saved_handlers: dict[int, Any] = {}
_handler_users = 0
_lock = threading.RLock()
_CLEANUP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGHUP")) if s)


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(target: Path) -> str:
    return f".{target.name[:_NAME_KEEP]}."


def _on_signal(signum, frame) -> None:
    """Remove our temporaries, then do what the signal would have done without us."""
    _remove_live_temps()
    previous = _saved_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):          # e.g. Python's SIGINT handler: raises KeyboardInterrupt
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)   # die of the signal, as without a handler
    os.kill(os.getpid(), signum)


def _remove_live_temps() -> None:
    for tmp in list(_live_temps):
        if os.path.isdir(tmp) and not os.path.islink(tmp):     # a scratch_directory
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _live_temps.discard(tmp)


def _install_handlers() -> None:
    global _handler_users
    with _lock:
        if threading.current_thread() is not threading.main_thread():
            return      # signal handlers can only be set from the main thread
        if _handler_users == 0:
            for sig in _CLEANUP_SIGNALS:
                # An ignored signal (nohup, `cmd &` in a script ignores SIGINT) does not stop
                # the process: nothing to clean up, and the write must go on untouched.
                if signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                with contextlib.suppress(ValueError, OSError):
                    _saved_handlers[sig] = signal.signal(sig, _on_signal)
        _handler_users += 1


def _restore_handlers() -> None:
    global _handler_users
    with _lock:
        if threading.current_thread() is not threading.main_thread() or _handler_users == 0:
            return
        _handler_users -= 1
        if _handler_users == 0:
            for sig, handler in _saved_handlers.items():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            _saved_handlers.clear()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True         # someone else's live process
    except OSError:
        return True
    return True


def temp_tag() -> str:
    """'<host>-<pid>-<random>': what our temporary names carry, so that a later run can tell a
    leftover of a killed process (see temp_owner_gone) from one still being written."""
    return f"{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def temp_owner_gone(tag: str) -> bool:
    """Whether the process that made `tag` (a temp_tag()) has ended. A tag of another host, of
    this process or not ours at all: False (it is not ours to remove)."""
    parts = tag.split("-")
    if len(parts) != 3 or parts[0] != _host_tag() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove temporaries of `target` left by killed processes of this host (SIGKILL, power
    cut of the process): their pid is no longer alive. Returns what was removed."""
    target = Path(target)
    prefix, host = _temp_prefix(target), _host_tag()
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or TEMP_MARK not in name:
            continue
        tag = name[len(prefix):].split(TEMP_MARK, 1)[0]        # <host>-<pid>-<random>
        parts = tag.split("-")
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if entry.path in _live_temps or (pid != os.getpid() and _pid_alive(pid)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _create_temp(target: Path, suffix: str) -> tuple[Path, int]:
    """A new empty file beside `target`, created with mode 0666 & ~umask (as any new file);
    returns (path, its mode)."""
    name = f"{_temp_prefix(target)}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}{suffix}"
    tmp = target.parent / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    return tmp, mode


# --------------------------------------------------------------------- the writer
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` (resolved through symlinks) to write the new
    content to; on success it replaces the target in one rename, with the target's mode (or
    the umask's for a new file). On an exception, SIGTERM or SIGINT the temporary file is
    removed and the target is untouched. `suffix` ends the temporary name (default: the
    target's own suffix, so that tools choosing a format by the name keep working).
    OSErrors while writing become one-line TinyvimErrors."""
    target = check_output_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _refuse(path, "", exc.strerror or str(exc)) from None
    with _lock:     # no other thread's fresh temporary is swept as stale
        remove_stale_temps(target)
        try:
            tmp, new_mode = _create_temp(target, suffix or target.suffix)
        except OSError as exc:
            raise _refuse(path, "", exc.strerror or str(exc)) from None
        _live_temps.add(os.fspath(tmp))
    _install_handlers()
    try:
        try:
            yield tmp
            _replace(tmp, target, path, new_mode)
        except OSError as exc:
            raise _refuse(path, "", exc.strerror or str(exc)) from None
    finally:
        with _lock:
            _live_temps.discard(os.fspath(tmp))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _restore_handlers()


def _replace(tmp: Path, target: Path, shown, new_mode: int) -> None:
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):      # changed while we worked
        raise _refuse(shown, "", f"{target} is no longer a regular file")
    if st is not None:
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            with contextlib.suppress(OSError):
                os.chown(tmp, st.st_uid, st.st_gid)
    elif stat.S_IMODE(os.stat(tmp).st_mode) != new_mode:     # a writer re-created the file
        os.chmod(tmp, new_mode)
    os.replace(tmp, target)


@contextlib.contextmanager
def scratch_directory(prefix: str = "tinyvim-") -> Iterator[Path]:
    """A private folder under the temporary directory ($TMPDIR) for intermediate files, removed
    with everything in it on exit, on an exception and on SIGTERM / SIGINT / SIGHUP (where a
    plain tempfile.TemporaryDirectory survives SIGTERM). A folder that cannot be made is a
    one-line TinyvimError naming $TMPDIR."""
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as exc:      # gettempdir itself fails when no candidate folder is usable
        where = tempfile.tempdir or os.environ.get("TMPDIR") or "the temporary folder"
        raise TinyvimError(f"cannot create a temporary folder in {where}: {exc.strerror or exc} "
                           "(set TMPDIR to a writable folder)") from None
    with _lock:
        _live_temps.add(os.fspath(path))
    _install_handlers()
    try:
        yield path
    finally:
        with _lock:
            _live_temps.discard(os.fspath(path))
        shutil.rmtree(path, ignore_errors=True)
        _restore_handlers()


@contextlib.contextmanager
def temporaries_in(folder: str | os.PathLike) -> Iterator[None]:
    """While inside, Python's tempfile puts what a library makes on its own (ONNX Runtime's
    quantizer: `ort.quant.*` folders) inside `folder` - a scratch_directory, whose removal on
    SIGTERM / SIGHUP then takes them too. Process-wide while it lasts (tempfile has one setting)."""
    before = tempfile.tempdir
    tempfile.tempdir = os.fspath(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def json_safe(value):
    """A copy of `value` that strict JSON can hold: NaN/Inf floats become None (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, document) -> None:
    """`document` as indented strict JSON (no NaN literals), written atomically."""
    atomic_write_text(path, json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
