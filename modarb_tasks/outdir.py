"""Output folders that never lose the user's files and never show a half-written or mixed result.

A command checks its --out before any work (`check_out`), writes into a hidden folder beside it and
moves that into place at the end (`staged`). An existing --out is replaced only when modarb wrote
it: its manifest (`.modarb-output.json`) lists every file in it, so a folder holding anything else
(the user's notes, another tool's output, a file in place of the folder) is refused, never touched.

What is written names the folder where it will be read (`OutputFolder.final`), never the hidden one
it is written in, so no file is rewritten after the move.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modarb_tasks.errors import ModarbError
from modarb_tasks.files import check_writable, write_json

MANIFEST = ".modarb-output.json"


@dataclass(frozen=True)
class OutputFolder:
    """A folder a command writes: files go under `work`; the paths and commands written inside them
    name `final`, the folder as the user gave it, where it is once moved into place."""

    work: Path
    final: Path

    def __truediv__(self, name: str) -> OutputFolder:
        return OutputFolder(self.work / name, self.final / name)

    @classmethod
    def of(cls, folder: str | os.PathLike | OutputFolder) -> OutputFolder:
        """`folder` when it already is one; a plain path is written in place and named as given."""
        return folder if isinstance(folder, OutputFolder) else cls(Path(folder), Path(folder))


def check_out(out: Path, flag: str = "--out") -> None:
    """ModarbError unless `out` can be created, or replaced because a previous modarb run wrote it."""
    out = Path(out)
    if out.is_symlink():
        raise ModarbError(f"{flag} {out} is a symbolic link; give the real folder path (modarb replaces a finished "
                          "folder by renaming, which would replace the link, not the folder it points to)")
    if out.exists() and not out.is_dir():
        raise ModarbError(f"{flag} {out} is a file, not a folder; give a new folder path (modarb leaves the file alone)")
    if out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise ModarbError(f"{flag} {out} is the current folder or holds it; give a new folder "
                          "for modarb's output, e.g. reports/run1")
    check_writable(out.absolute().parent, flag, shown=out)  # the finished folder is renamed into place there
    foreign = _foreign_entry(out) if out.is_dir() else None
    if foreign is not None:
        raise ModarbError(f"{flag} {out} already holds {foreign}, which modarb did not write; give a new or empty "
                          "folder (modarb replaces only a folder an earlier modarb run wrote)")


@contextmanager
def staged(out: Path, flag: str = "--out") -> Iterator[OutputFolder]:
    """A fresh hidden work folder beside `out` (`.work`; `.final` is `out`), moved into place as `out`
    when the block ends well; on any error or Ctrl-C it is removed and `out` is left as it was."""
    out = Path(out)
    check_out(out, flag)
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the finished folder gets the usual mode
        yield OutputFolder(work, out)
        _write_manifest(work)
        check_out(out, flag)  # the folder may have changed while the command ran
        _swap(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _foreign_entry(folder: Path) -> str | None:
    """The first file in `folder` that its modarb manifest does not list (None: all are modarb's)."""
    files = [name for name in _files(folder) if name != MANIFEST]
    if not files:
        return None
    try:
        listed = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return files[0]
    return next((name for name in files if name not in listed), None)


def _write_manifest(work: Path) -> None:
    write_json(work / MANIFEST, {"written_by": "modarb", "files": _files(work)}, indent=1)


def _swap(work: Path, out: Path) -> None:
    if not out.exists():
        work.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
    old.rmdir()
    out.rename(old)
    work.rename(out)
    shutil.rmtree(old)
