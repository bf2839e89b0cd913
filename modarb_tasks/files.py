"""Atomic file writes (a reader, or a CI diff, never sees a half-written spec, report or entry), and
the check that an output folder can be written before any work starts.

Every JSON, text and PNG file modarb writes goes through `write_atomic` (or `write_all_atomic` for a
set of files that must change together): `write_json`, `write_text` and `write_png` only turn their
content into bytes first. A full disk is a DiskFullError: one line, and nothing half-written.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path

from modarb_tasks.errors import ModarbError


class DiskFullError(ModarbError):
    """A write failed for want of space: bad luck rather than a bug, so one line and exit 2."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(folder: Path | str) -> str:
    return f"the disk is full: no space left to write in {folder}; free some space (or choose another folder) and run again"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    write_all_atomic({Path(path): data})


def write_all_atomic(files: dict[Path, bytes]) -> None:
    """Write every file of `files` (path -> bytes), all or none: each goes to a temporary file beside
    it first, and only when all are whole are they renamed into place (a rename needs no space), so a
    full disk or an error leaves every path as it was. DiskFullError when space runs out."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp_name, path))
            os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
            with os.fdopen(handle, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
        for tmp_name, path in staged:
            os.replace(tmp_name, path)
    except BaseException as error:
        for tmp_name, _ in staged:
            Path(tmp_name).unlink(missing_ok=True)
        if is_disk_full(error):
            folder = staged[-1][1].parent if staged else next(iter(files)).parent
            raise DiskFullError(disk_full_message(folder)) from None
        raise


def check_writable(folder: Path, flag: str = "--out", shown: Path | None = None) -> None:
    """ModarbError unless `folder` (or the nearest folder above it that exists) can be written in;
    messages name `shown` (what the user typed) when given."""
    folder = Path(folder)
    shown = folder if shown is None else shown
    if folder.exists() and not folder.is_dir():
        raise ModarbError(f"{flag} {shown} is a file, not a folder; give a folder path (it is created if missing)")
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ModarbError(f"{flag} {shown}: {existing} is a file, not a folder; give a folder path")
    try:  # a real write: permissions, read-only mounts and root all answer the same way
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".modarb-write-test-")
    except OSError as error:
        reason = (error.strerror or type(error).__name__).lower()
        raise ModarbError(f"{flag} {shown}: cannot write in {existing} ({reason}); choose a writable folder") from None
    os.close(handle)
    os.unlink(probe)


def write_text(path: Path, text: str) -> Path:
    """`text` as UTF-8, atomically; returns `path`."""
    write_atomic(Path(path), text.encode("utf-8"))
    return Path(path)


def write_json(path: Path, document, indent: int = 2) -> Path:
    """`document` as indented JSON with a final newline, atomically; returns `path`."""
    return write_text(path, json.dumps(document, indent=indent) + "\n")


def png_bytes(figure, dpi: int = 120, **savefig_options) -> bytes:
    """A matplotlib figure as PNG bytes, without matplotlib's version stamp, so the bytes depend on the
    figure alone (a matplotlib upgrade does not change every committed or compared PNG)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, **savefig_options)
    return buffer.getvalue()


def write_png(figure, path: Path, dpi: int = 120) -> Path:
    """Render a matplotlib figure to PNG, close it, and write it atomically to `path`; returns `path`."""
    import matplotlib.pyplot as plt

    png = png_bytes(figure, dpi)
    plt.close(figure)
    write_atomic(Path(path), png)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
