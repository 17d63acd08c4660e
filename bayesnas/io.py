"""Small file utilities shared by the run folder: atomic writes and JSON lines."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(fileobj)`` into a temporary sibling, then rename it over ``path``.

    A reader (or a crash) never sees a half-written file: the old content stays until the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_of(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_of(path: Path) -> int:
    """The permissions a replaced file keeps, or those a new file gets under the process's umask (``mkstemp``
    alone would leave every file 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_by_name(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write ``path`` atomically through a writer that takes a file name (netCDF's): ``write`` fills a temporary
    that this process created exclusively (a regular file of a fresh name, never a link left in the folder),
    which then replaces ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode_of(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def orphaned_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`atomic_write` left in ``folder`` when a process was killed mid-write (links of such
    names too, dangling or not: they are removed, never followed)."""
    return sorted(p for p in Path(folder).glob(".*.tmp") if p.is_file() or p.is_symlink())


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and write and remove a file in it: an unwritable output location fails here,
    before any work, with the operating system's error."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def flat_figures(figures: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``figures`` with nested dictionaries spread into ``outer.inner`` keys, so that every ``metrics.jsonl`` row is
    one flat record (``pandas.read_json(path, lines=True)`` is a table of scalar and list columns)."""
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, Mapping):
            flat.update(flat_figures(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
