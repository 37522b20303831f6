"""File writing that never leaves a half-written file where a good one was."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # e.g. ENOSPC: say which file, keep the errno
            previous = "the previous version is unchanged" if path.exists() else "nothing was written"
            raise OSError(err.errno, f"{path}: could not be written ({err.strerror or err}); {previous}") from None
        raise
    return path


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files `atomic_write` leaves behind when a process is killed mid-write.

    They are hidden (`.<name>.<random>.tmp`) and never read as outputs; call this only where no
    other process is writing (e.g. when a run resumes).
    """
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in [*directory.glob(".*.tmp"), *directory.glob(".pomp-write-test.*")]:
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


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


def check_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove a file can be written there, before any long work starts."""
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
        raise PermissionError(f"{path}: output directory is not writable ({reason})") from None
    return path
