"""File writing that never leaves a half-written file where a good one was, and one run per folder.

Every writer here names the file it could not write in a one-line `WriteError` (an `OSError`
carrying the errno) and keeps the previous version; outputs get the permissions the user's umask
gives any new file (0644 under umask 022), never the 0600 of a temporary file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable


class WriteError(OSError):
    """A file or folder could not be written. `str()` is the one line `<path>: could not be written (...)`."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, then rename over `path`.

    Raises `WriteError` naming `path` (errno kept when the cause is an OSError, e.g. ENOSPC) when
    anything fails; `path` then still holds its previous content (or does not exist).
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        write(tmp_path)
        # after `write`: some writers (safetensors) replace the file and make it 0600 again
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        tmp_path = None
        _fsync_dir(path.parent)
    except Exception as err:
        previous = "the previous version is unchanged" if path.exists() else "nothing was written"
        code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
        raise WriteError(code, f"{path}: could not be written ({_reason(err)}); {previous}") from err
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON as UTF-8 text; strings holding undecodable file-name bytes (lone surrogates) are written
    as `\\u` escapes, so the file stays valid JSON and reads back to the same strings."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, indent=2)
    return atomic_write_text(path, text + "\n")


class _PythonWrites:
    """An open file seen by numpy as a plain stream: numpy then writes through Python's `write` (a full disk is
    an `OSError` with its errno), not through C stdio's `fwrite` (only "N requested and M written")."""

    def __init__(self, f: BinaryIO):
        self.write = f.write
        self.name = getattr(f, "name", None)  # the file's, as `numpy.save` would see it


def write_npy(f: BinaryIO, array) -> None:
    """`array` in numpy's `.npy` format into the open binary file `f` (`numpy.save`), a failed write an
    `OSError` that says why (`No space left on device`)."""
    import numpy as np

    np.save(_PythonWrites(f), array)


def atomic_write_npy(path: str | Path, array) -> Path:
    """A `.npy` file (numpy's format), closed before it is synced, so a failed flush is an error, not lost."""

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            write_npy(f, array)

    return atomic_write(path, write)


def atomic_write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file, serialised in memory and written by Python, so a full disk is an `OSError`
    naming the file (safetensors' own writer raises an opaque `SafetensorError`)."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a JSON-lines record) whole or not at all.

    A short or failed write (full disk, file-size limit) is cut back to the previous end of the
    file, so the file never ends in a partial line; raises `WriteError` naming the file.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as err:
        raise WriteError(err.errno or errno.EIO, f"{path}: could not be written ({_reason(err)})") from err
    try:
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as err:
            try:
                os.ftruncate(fd, start)
                kept = "the line was not added"
            except OSError:
                kept = "a partial line may remain"
            raise WriteError(err.errno or errno.EIO, f"{path}: could not be written ({_reason(err)}); {kept}") from err
    finally:
        os.close(fd)


def read_json_lines(path: str | Path) -> tuple[list[dict], int]:
    """Records of a JSON-lines file, and how many lines were dropped (a torn or damaged line)."""
    path = Path(path)
    records, dropped = [], 0
    if not path.is_file():
        return records, dropped
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            dropped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            dropped += 1
    return records, dropped


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files `atomic_write` leaves behind when a process is killed mid-write.

    They are hidden (`.<name>.<random>.tmp`) and never read as outputs; call this only where no
    other process is writing (e.g. when a run holds the folder's `RunLock`).
    """
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in [*directory.glob(".*.tmp"), *directory.glob(".pomp-write-test.*")]:
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def publish_dir(final: str | Path, fill: Callable[[Path], None]) -> Path:
    """Write a folder as a unit: `fill(tmp)` writes into a hidden temporary folder beside `final`,
    which is then renamed to `final` in one step, so a kill at any moment leaves either no `final`
    or a complete one. If `final` appears meanwhile (another process published the same content),
    that one is kept and ours discarded. Raises `WriteError` naming `final`.
    """
    final = Path(final)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temp_dirs(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{process_tag()}.", suffix=".tmp", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        for p in tmp.iterdir():
            if not p.is_file():
                continue
            os.chmod(p, 0o666 & ~_umask())
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
            tmp = None
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                raise
        _fsync_dir(final.parent)
    except Exception as err:
        code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
        raise WriteError(code, f"{final}: could not be written ({_reason(err)}); nothing was published") from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def process_tag() -> str:
    """`<host>.<pid>` of this process: a temporary folder named `.<name>.<host>.<pid>.<suffix>.tmp` is swept
    by `remove_abandoned_temp_dirs` once that process is gone."""
    return f"{_host()}.{os.getpid()}"


def remove_abandoned_temp_dirs(directory: Path) -> None:
    """Remove temporary folders (`publish_dir`'s, feature parts) of processes on this host that no longer
    run (killed mid-write): hidden folders named `.<name>.<host>.<pid>.<suffix>.tmp` (see `process_tag`)."""
    host = _host()
    for p in directory.glob(f".*.{host}.*.tmp"):
        parts = p.name[: -len(".tmp")].split(".")
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if p.is_dir() and parts[-3] == host and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _host() -> str:
    return socket.gethostname().replace(".", "-") or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a clear one-line error names the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as err:  # a directory, a device, an unreadable file
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create `path` if needed and prove a file can be written there, before any long work starts;
    `PermissionError` `<path>: <what> is not writable (<reason>)` otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".pomp-write-test.")
        try:
            if os.write(fd, b"0" * 4096) < 4096:  # a short write: the disk is (nearly) full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        reason = "it is not a directory" if path.exists() and not path.is_dir() else (err.strerror or str(err))
        raise PermissionError(f"{path}: {what} is not writable ({reason})") from None
    return path


def check_cache_dir(path: str | Path) -> Path:
    """A cache folder before any work: writable (created if needed), or else an existing folder that can
    be read, such as a team's shared cache mounted read-only: its entries are used as they are, and a
    miss is refused (`check_writable_dir`) before anything would be computed into it."""
    try:
        return check_writable_dir(path)
    except PermissionError:
        if Path(path).is_dir() and os.access(path, os.R_OK | os.X_OK):
            return Path(path)
        raise


def missing_dirs(path: str | Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first (what `mkdir -p` would create)."""
    path = Path(path).absolute()
    out = []
    for p in (path, *path.parents):
        try:
            if p.exists() or p.is_symlink():
                break
        except OSError:
            break
        out.append(p)
    return out


def remove_empty_dirs(paths: list[Path]) -> None:
    """`rmdir` those of `paths` that are empty, deepest first (the folders a refused command created)."""
    for p in sorted(set(paths), key=lambda p: len(p.parts), reverse=True):
        try:
            p.rmdir()
        except OSError:
            pass


# --- one run per folder --------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a folder for the life of a run: `flock` on `<folder>/run.lock`.

    The kernel drops the lock when its process dies (kill -9 included), so a lock left by a dead
    process is simply taken over; its file only says who held it last. A second holder is refused
    with `RuntimeError` naming the holder (pid, host, start time, command). Local file systems and
    NFSv4 honour `flock`; some network file systems do not (see docs/reliability.md).
    """

    NAME = "run.lock"

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / self.NAME
        self._fd: int | None = None

    def acquire(self, command: str = "") -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except OSError as err:
                raise WriteError(err.errno or errno.EIO, f"{self.path}: could not be written ({_reason(err)})") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RuntimeError(f"{self.path.parent}: another run is using this --out-dir ({holder}); wait for "
                                   f"it to finish or choose another --out-dir") from None
            # the file we locked may have been removed by its last holder in the meantime: lock the current one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: no one can lock the removed file in between
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"held by pid {info['pid']} on {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "held by another process"

