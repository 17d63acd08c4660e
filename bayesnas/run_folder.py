"""The life cycle every output folder of bayesnas shares: a search run, a population, a comparison, a ranking
(``bayesnas rank``) and, for its lock, a training (``bayesnas train``).

A folder is ours when it holds the marker :data:`RUN_MARKER` (``{"kind": ...}``), written before anything else;
a folder that is not ours is written into only when it is empty (nothing of a user's is ever replaced), a folder
of another kind is refused, and while a process works in a folder it holds :class:`RunLock`, so that a second
process into the same folder is refused instead of mixing its files with the first one's. Temporaries a killed
write left (links of such names included) are removed, never followed. Each kind keeps its own settings file and
refuses to continue under other settings, naming the keys that differ (:func:`config_diff`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bayesnas.config import ConfigError
from bayesnas.io import orphaned_temporaries, read_json, write_json

if TYPE_CHECKING:
    from bayesnas.distributed import World

RUN_MARKER = ".bayesnas-run"
"""Written first into every folder of ours: a folder without it (or, from runs older than the marker, without
its settings file) is not ours, and nothing is written into it unless it is empty."""
LOCK = ".bayesnas.lock"


class RunFolderError(ConfigError):
    """An output folder that cannot be used: a file, a user's folder, another kind's, or one in use."""


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The top-level keys whose values differ between two settings dictionaries."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def folder_kind(folder: Path) -> str | None:
    """The kind the marker of ``folder`` names (None where there is no readable marker)."""
    try:
        data = json.loads((folder / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def check_folder(folder: Path, kind: str, ours: bool = False, preseeded: Collection[str] = ()) -> None:
    """Refuse ``folder`` for a run of ``kind`` before anything is written: a file, a non-empty folder that is not
    ours (``ours``: the caller recognises an older run of its kind without the marker; ``preseeded``: names a new
    folder may already hold), or a folder of another kind."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder} is a file, not a folder; choose another `out`")
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise RunFolderError(f"{folder} holds a bayesnas {found}, not {_a(kind)}; choose another `out`")
    if found is None and not ours and folder.exists() and any(p.name not in preseeded for p in folder.iterdir()):
        raise RunFolderError(f"{folder} is not empty and is not a bayesnas run folder; choose another `out` "
                             "(nothing was written)")


def pin_settings(path: Path, settings: dict[str, Any], kind: str) -> None:
    """Write ``settings`` (JSON-like) to ``path``, or check that the folder being continued was started with the
    same ones: one-line :class:`RunFolderError` naming the keys that differ."""
    settings = json.loads(json.dumps(settings))
    if path.exists():
        saved = read_json(path)
        keys = config_diff(saved, settings) if isinstance(saved, dict) else ["(the whole file)"]
        if keys:
            raise RunFolderError(f"{path.parent} holds {_a(kind)} of other settings (differ in: {', '.join(keys)}; see "
                                 f"{path}); choose another `out`")
        return
    write_json(path, settings)


def claim_folder(folder: Path, kind: str) -> RunLock:
    """Create ``folder`` (checked by :func:`check_folder` first), lock it, remove what killed writes left and write
    the marker; returns the lock, to release when the work ends."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder / LOCK, kind)
    for orphan in orphaned_temporaries(folder):
        orphan.unlink(missing_ok=True)
    if folder_kind(folder) != kind:
        write_json(folder / RUN_MARKER, {"kind": kind})
    return lock


class RunLock:
    """A lock file holding this process's id: a second process into a folder whose run is still going is
    refused; a lock whose process is gone is stale and taken over."""

    def __init__(self, path: Path, kind: str = "run") -> None:
        self.path = path
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _lock_pid(path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise RunFolderError(f"{path.parent} is in use by a running {kind} (process {pid}); wait for "
                                        "it to finish or stop it") from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return
        raise RunFolderError(f"cannot lock {path.parent}: another process keeps taking its lock")

    def release(self) -> None:
        if _lock_pid(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_in_use(folder: Path, kind: str, world: World, prepare: Callable[[], None] | None = None
                  ) -> Iterator[None]:
    """Hold ``folder`` for a run of ``kind`` while the block runs: the main rank claims it (:func:`claim_folder`)
    and then runs ``prepare`` (e.g. pinning the settings); if either fails, every rank raises the same one-line
    error (no rank is left waiting at a barrier). The lock is released at the end."""
    lock, problem = None, ""
    if world.is_main:
        try:
            lock = claim_folder(folder, kind)
            if prepare is not None:
                prepare()
        except ConfigError as err:
            problem = str(err)
            if lock is not None:
                lock.release()
            lock = None
    problem = world.broadcast(problem)
    if problem:
        raise RunFolderError(problem)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
