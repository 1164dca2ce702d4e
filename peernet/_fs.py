"""Careful file helpers for the few files peernet keeps in ``data_dir``.

Shared by the identity key and the trust store: a private directory, atomic writes with
the file mode set at creation (no window where the file is readable by others), and a
reader that refuses symlinks, files owned by someone else and files that other users can
tamper with. Callers choose the exception classes so that each file reports its own
error type (``KeyFileError``/``InsecureKeyFile`` for the key, ``TrustStoreError`` for the
trust store).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shlex
import stat
import time
from pathlib import Path

from .errors import InsecureDataDir

__all__ = ["ensure_private_dir", "atomic_write", "read_private_file", "fsync_dir"]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

# errno values meaning "this file system cannot hard-link here", not "it exists".
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}
)


def ensure_private_dir(path: StrPath) -> Path:
    """Create ``path`` (and any missing parents) with mode 0700, and return it.

    Directories we create get exactly 0700 whatever the umask. An existing directory
    (or the one a symlink points to) must be ours and not writable by group or others,
    as ssh's StrictModes asks of ``~/.ssh``, and so must every directory above it, from
    ``/`` down, and every symlink on the way: each owned by root or the effective user
    and not writable by group or others, except a sticky directory such as ``/tmp``
    (whose entries only their owners may rename). Else :class:`~peernet.InsecureDataDir`,
    naming the offending directory and how to fix it, and nothing is created. The same
    checks cover a directory that another process creates between our existence check
    and ``mkdir``. A mode is otherwise left as it is. ``~`` is expanded.
    """
    target = Path(path).expanduser()
    check_path_to(target, target)  # before anything is made under an unsafe parent
    missing: list[Path] = []
    probe = target
    while not probe.exists():
        if probe.is_symlink():  # dangling symlink: mkdir would fail confusingly
            raise FileExistsError(f"{probe} is a dangling symbolic link, not a directory")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            # Someone else made it meanwhile (a directory or a symlink): not ours to
            # chmod, and nothing may be made in it unless it passes the same checks.
            check_path_to(directory, target, itself=directory != target)
            continue
        # mkdir's mode is filtered by the umask; we want 0700 exactly on what we made.
        os.chmod(directory, 0o700)
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists but is not a directory")
    if missing:  # else the walk above was just now, on the same path
        check_path_to(target, target)
    check_private_dir(target)
    return target


_ELSEWHERE = ("give the node a directory of your own (data_dir=..., --data-dir, "
              "PEERNET_DATA_DIR or XDG_DATA_HOME)")
_MAX_SYMLINKS = 40  # as the kernel's path walk


def check_path_to(path: Path, data_dir: Path, *, itself: bool = False) -> None:
    """Refuse ``path`` (the data dir, or one of its parents) if a directory or symlink
    on the way to it could be changed by another user: walked like the kernel does,
    from ``/`` with ``lstat``, following symlinks. Every directory passed through must
    be owned by root or the effective user and not writable by group or others, unless
    it is sticky (like ``/tmp``: then what comes next must be ours or root's, which is
    checked as the next step); every symlink must be owned by root or the effective
    user. The last directory is checked the same way with ``itself`` (a parent of the
    data dir), else left to :func:`check_private_dir`. Missing components end the walk
    (we create them 0700). ``data_dir`` names the data dir in the error."""
    uid = os.geteuid()
    where = os.fspath(path)
    if not os.path.isabs(where):
        where = os.path.join(os.getcwd(), where)
    pending = [name for name in where.split(os.sep) if name]  # Path(where).parts[1:]
    current = os.sep
    _check_passage(current, os.lstat(current), uid, data_dir)
    followed = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)  # a real path: its parent was checked
            continue
        candidate = os.path.join(current, name)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in (uid, 0):
                raise InsecureDataDir(
                    f"data dir {data_dir}: {candidate} on its path is a symbolic link "
                    f"owned by uid {info.st_uid}, neither you (uid {uid}) nor root: its "
                    f"owner could point it anywhere. Refusing to use it; remove the link, "
                    f"or {_ELSEWHERE}.")
            followed += 1
            if followed > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
            link = Path(os.readlink(candidate))
            if link.is_absolute():
                current = os.sep
                pending[:0] = list(link.parts[1:])
            else:
                pending[:0] = list(link.parts)
            continue
        if not stat.S_ISDIR(info.st_mode):
            return  # not a directory: the caller reports that
        if not pending and not itself:
            return  # the data dir itself: check_private_dir
        _check_passage(candidate, info, uid, data_dir)
        current = candidate


def _check_passage(directory: str, info: os.stat_result, uid: int, data_dir: Path) -> None:
    """One directory above the data dir (see :func:`check_path_to`)."""
    if info.st_uid not in (uid, 0):
        raise InsecureDataDir(
            f"data dir {data_dir}: the directory {directory} above it is owned by uid "
            f"{info.st_uid}, neither you (uid {uid}) nor root, so its owner could move "
            f"your data dir aside and put back an old trust list or key. Refusing to use "
            f"it; {_ELSEWHERE}, in directories that only you or root can change.")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise InsecureDataDir(
            f"data dir {data_dir}: the directory {directory} above it has mode "
            f"{mode:04o}, so other users can move your data dir aside and put back an old "
            f"trust list or key. Refusing to use it; fix it with "
            f"`chmod go-w {shlex.quote(directory)}`, or {_ELSEWHERE}.")


def check_private_dir(directory: Path) -> None:
    """Refuse a data dir that another user owns or may write to (see ensure_private_dir).
    A symlink is judged by both ends: the link must be ours, and so must its target."""
    uid = os.geteuid()
    link = os.lstat(directory)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (uid, 0):
        raise InsecureDataDir(
            f"data dir {directory} is a symbolic link owned by uid {link.st_uid}, not by "
            f"you (uid {uid}): its owner could point it anywhere. Refusing to use it; "
            f"remove the link, or {_ELSEWHERE}.")
    info = os.stat(directory)
    if info.st_uid != uid:
        raise InsecureDataDir(
            f"data dir {directory} is owned by uid {info.st_uid}, not by you (uid {uid}): "
            f"its owner could swap your trust list or key. Refusing to use it; if it is "
            f"yours, run `chown {uid} {shlex.quote(str(directory))}`, or {_ELSEWHERE}.")
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise InsecureDataDir(
            f"data dir {directory} has mode {stat.S_IMODE(info.st_mode):04o}, so other "
            f"users can write to it and swap your trust list or key. Refusing to use it; "
            f"fix it with `chmod 700 {shlex.quote(str(directory))}`, or {_ELSEWHERE}.")


def fsync_dir(directory: StrPath) -> None:
    """Flush a directory entry change (a rename) to disk, best effort.

    Some file systems refuse to fsync a directory; the data itself is already synced,
    so that is logged rather than raised.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        logger.warning("cannot open %s to sync it: %s", directory, exc.strerror)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.warning("cannot sync directory %s: %s", directory, exc.strerror)
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes, mode: int, *,
                durable: bool = True) -> Path:
    """Write ``data`` to a new temp file next to the target (synced if ``durable``);
    return its path."""
    temp = directory / f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    # The mode is given at creation, so the file is never more open than ``mode``.
    fd = os.open(temp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it: make it exact
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove_quietly(temp)
        raise
    return temp


#: A temp file this old was left by a writer that died before renaming it (a live
#: writer renames within milliseconds; the margin covers a slow disk's fsync).
STALE_TEMP_AGE_S = 60.0


def sweep_stale_temps(directory: Path, name: str, *,
                      older_than_s: float = STALE_TEMP_AGE_S) -> int:
    """Remove temp files of ``name`` (see ``_write_temp``) that a killed writer left
    behind. Only our own regular files older than ``older_than_s`` go, so a writer in
    another process that is still working is never disturbed. Returns how many went."""
    removed = 0
    now = time.time()
    prefix, suffix = f".{name}.", ".tmp"  # the glob .NAME.*.tmp, without pathlib's cost
    try:
        with os.scandir(directory) as entries:
            candidates = [entry.path for entry in entries
                          if entry.name.startswith(prefix) and entry.name.endswith(suffix)
                          and len(entry.name) >= len(prefix) + len(suffix)]
    except OSError:
        return 0
    for temp in candidates:
        try:
            st = os.lstat(temp)
        except OSError:
            continue
        if (stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()
                and now - st.st_mtime >= older_than_s):
            _remove_quietly(temp)
            removed += 1
    return removed


def _remove_quietly(path: StrPath) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove temporary file %s: %s", path, exc.strerror)


def atomic_write(
    path: StrPath, data: bytes, mode: int = 0o600, *, overwrite: bool = True,
    durable: bool = True,
) -> None:
    """Replace the file at ``path`` with ``data`` so that readers see old or new, never
    a mix or a truncated file, even if the process dies half-way.

    The data goes to a temp file in the same directory (created with ``mode``), is
    fsynced, then renamed over the target, and the directory is synced. On failure the
    temp file is removed and the exception re-raised; the old file stays intact.

    With ``overwrite=False`` an existing target is never replaced: ``FileExistsError``
    is raised instead (the publish step is a hard link, which refuses to clobber).
    ``durable=False`` skips both fsyncs (~1.4 ms): for a cache, which may lose its last
    update to a power cut but is still never torn.
    """
    target = Path(path)
    directory = target.parent
    temp = _write_temp(directory, target.name, data, mode, durable=durable)
    try:
        if overwrite:
            os.replace(temp, target)
        else:
            _publish_new(temp, target)
    except BaseException:
        _remove_quietly(temp)
        raise
    if durable:
        fsync_dir(directory)


def _publish_new(temp: Path, target: Path) -> None:
    """Give ``temp`` the name ``target`` only if ``target`` does not exist yet."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        # Some file systems have no hard links. Fall back to check-then-rename, which
        # leaves a tiny race between two creators: acceptable for a first-run file.
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from exc
        os.replace(temp, target)
        return
    _remove_quietly(temp)


def read_private_file(
    path: StrPath,
    *,
    max_bytes: int,
    error: type[Exception],
    insecure_error: type[Exception] | None = None,
    forbidden_mode: int = 0o077,
    what: str = "file",
) -> bytes:
    """Read a small file that must belong to us and be safe from other users.

    Refuses, with ``insecure_error`` (default ``error``) and a message that says how to
    fix it: a symbolic link, anything but a regular file, a file owned by another uid,
    and a file whose mode has any of the ``forbidden_mode`` bits (0o077: group and others
    may not touch it; 0o022: they may read but not write). A file bigger than
    ``max_bytes`` is corrupt: ``error``. Every message names the file and says it was
    left untouched. A missing file raises ``FileNotFoundError``; other ``OSError`` s
    propagate.
    """
    insecure = insecure_error or error
    target = Path(path)
    untouched = "the file was left untouched"
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # a FIFO planted here must not hang us
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and target.is_symlink()):
            raise insecure(
                f"{what} {target} is a symbolic link; refusing to follow it ({untouched}). "
                "Replace the link with the real file, or point data_dir at the real directory."
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise insecure(f"{what} {target} is not a regular file ({untouched})")
        uid = os.geteuid() if hasattr(os, "geteuid") else None
        if uid is not None and info.st_uid != uid:
            raise insecure(
                f"{what} {target} is owned by uid {info.st_uid}, not by this user "
                f"(uid {uid}); refusing to trust it ({untouched}). If it is yours: "
                f"chown {uid} {shlex.quote(str(target))}"
            )
        loose = stat.S_IMODE(info.st_mode) & forbidden_mode
        if loose:
            raise insecure(
                f"{what} {target} has mode {stat.S_IMODE(info.st_mode):04o}, so other "
                f"users can {_describe(loose)} it; refusing to use it ({untouched}). "
                f"Fix: chmod 600 {shlex.quote(str(target))}"
            )
        chunks: list[bytes] = []
        remaining = max_bytes + 1  # one extra byte tells "too big" from "exactly full"
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise error(
            f"{what} {target} is bigger than {max_bytes} bytes, so it is corrupt "
            f"({untouched})"
        )
    return data


def _describe(bits: int) -> str:
    can = []
    if bits & 0o044:
        can.append("read")
    if bits & 0o022:
        can.append("write")
    if bits & 0o011:
        can.append("execute")
    return " and ".join(can)
