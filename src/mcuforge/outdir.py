"""Output directories that are either complete or absent.

Everything is written into a hidden staging folder beside the destination and
moved into place only when the whole job succeeded, so a failure never leaves
a half-written directory that looks finished. A previous mcuforge output at the
destination is replaced; any other non-empty directory is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError, OutputDirError

MARKER = ".mcuforge"


def mark_complete(path: Path) -> None:
    (path / MARKER).write_text("written by mcuforge; the directory is complete\n")


@contextlib.contextmanager
def staged_output_dir(path: str | Path) -> Iterator[Path]:
    dest = Path(path)
    if dest.exists() and not dest.is_dir():
        raise OutputDirError(f"output path '{dest}' exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).exists():
        raise OutputDirError(f"output directory '{dest}' exists, is not empty and was not written by "
                             "mcuforge: choose another path or remove it")
    parent = dest.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
    except OSError as exc:
        raise OutputDirError(f"cannot write output directory '{dest}': {exc.strerror or exc}") from None
    try:
        yield staging
        mark_complete(staging)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=parent))
            os.replace(dest, old / "d")
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputDirError(f"cannot write output directory '{dest}': {exc}") from None
        raise


def write_json_file(path: str | Path, obj) -> None:
    """A results file the user asked for (--json): a clear error if it cannot be written."""
    import json

    try:
        Path(path).write_text(json.dumps(obj, indent=1, default=str))
    except OSError as exc:
        raise InputError(f"cannot write '{path}': {exc.strerror or exc}") from None
