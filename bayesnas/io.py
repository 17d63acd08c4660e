"""Small file utilities shared by the run folder: atomic writes and JSON lines."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from bayesnas.errors import ConfigError


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


class DamagedFileError(ConfigError):
    """A file that a run reads back is damaged or not of the form bayesnas writes: one line names the file and
    what is wrong with it."""


def read_text(path: str | os.PathLike) -> str:
    """The text of a regular file (a FIFO, a device or a folder is refused at once instead of blocking or failing
    later); :class:`DamagedFileError` for bytes that are not UTF-8 text."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise DamagedFileError(f"{path} is not a regular file")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise DamagedFileError(f"{path} is not a text file (it holds binary data)") from None


def parse_json(text: str, origin: str | os.PathLike) -> Any:
    """``text`` parsed as JSON, with a one-line :class:`DamagedFileError` naming ``origin`` (and the place) if it
    is not JSON, or nests deeper than the parser can follow."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedFileError(f"{origin} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno})") \
            from None
    except RecursionError:
        raise DamagedFileError(f"{origin} nests its JSON too deeply") from None


def read_json(path: str | os.PathLike, kind: type = dict) -> Any:
    """The JSON value in ``path``, which must be a ``kind`` (a JSON object by default)."""
    data = parse_json(read_text(path), path)
    if not isinstance(data, kind):
        names = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
        raise DamagedFileError(f"{path} holds a JSON {names.get(type(data), 'null')}, not a JSON "
                               f"{names.get(kind, kind.__name__)}")
    return data


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per line (none where the file is missing)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            row = parse_json(line, f"{path}, line {number},")
            if not isinstance(row, dict):
                raise DamagedFileError(f"{path}, line {number}, holds a JSON {type(row).__name__}, not an object")
            rows.append(row)
    return rows


def load_weights(path: str | os.PathLike, device: Any = "cpu") -> dict[str, Any]:
    """A state dict (tensors by name) saved by ``torch.save``, read with the weights-only unpickler: a file that
    holds anything else (code included) is one line, and nothing in it runs."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as err:
        kind = "objects other than tensors" if isinstance(err, pickle.UnpicklingError) else "no readable weights"
        raise DamagedFileError(f"{path} holds {kind}: not a weights file bayesnas wrote (refused, nothing in it "
                               "was run)") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise DamagedFileError(f"{path} is not a state dict of tensors by name")
    return state


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


def cache_dir() -> str:
    """bayesnas' cache folder: ``$BAYESNAS_CACHE``, else ``$XDG_CACHE_HOME/bayesnas`` (``~/.cache/bayesnas``)."""
    if os.environ.get("BAYESNAS_CACHE"):
        return os.path.abspath(os.environ["BAYESNAS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bayesnas")
