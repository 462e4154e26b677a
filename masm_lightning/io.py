"""Writing files so that a reader never sees half of one, and stamps that say "this was made with these settings".

Every file the project writes — results tables, CSVs, JSON, plots, manifests, per-video records, exports — goes
through :func:`atomic_path` (or its two shorthands): the content is written to a temporary name beside the target
and renamed over it, so a crash, a kill or a full disk leaves the old file or none, never a truncated one.

A :class:`Stamp` is the one mechanism for "same inputs and settings → reuse, else redo": a JSON file holding what
was made and how (plus its :func:`settings_digest`), written only once the work is complete. Work that is
interrupted leaves no stamp (or a stale one that does not match) and is redone; finer-grained work (per video)
records its own digest and resumes where it stopped.

:func:`walk_files` is the one way the project lists a folder tree (datasets, ``detect``'s folders): it follows
symlinked sub-folders, which large datasets use to span disks, and visits each real folder once, so a link loop
(or two links to one folder) ends instead of recursing forever or counting files twice.

:func:`lazy_exports` is the one way a package re-exports names that load on first use.

Standard library only: every layer of the package may import it.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import InvalidInputError

__all__ = [
    "Stamp",
    "atomic_open",
    "atomic_path",
    "check_shard",
    "lazy_exports",
    "settings_digest",
    "shard_inputs",
    "walk_files",
    "write_atomic",
    "write_csv",
]

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` in one rename.

    The temporary name keeps the target's suffix (``.png``, ``.csv``), so writers that pick a format from the
    extension (matplotlib, OpenCV) still do. The file gets the permissions of any new file (``0666`` less the
    umask: ``0644`` usually), whatever the writer chose (safetensors creates its files ``0600``). On an exception
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask, read without changing it (Linux's /proc), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing whose file appears at ``path`` only when the block completes."""
    with atomic_path(path) as tmp, tmp.open(mode, **kwargs) as f:
        yield f


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> Path:
    """Write dict rows as a CSV with a header, atomically; keys outside ``fieldnames`` are ignored."""
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def settings_digest(settings: Any) -> str:
    """A short, stable hash of JSON-able settings (key order and tuple/list spelling do not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stamp:
    """A JSON file recording that some work was completed with given inputs and settings.

    ``matches(expected)`` is true only when the file exists and records exactly ``expected`` (compared as read
    back from JSON, so tuples and lists are equal); ``write(expected)`` is called once the work is complete;
    ``clear()`` before redoing it, so an interrupted redo is never taken for a finished one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @staticmethod
    def _normal(content: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(content, default=str))

    def read(self) -> dict[str, Any] | None:
        """The recorded content, or None when there is no (readable) stamp."""
        try:
            content = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return content if isinstance(content, dict) else None

    def matches(self, expected: dict[str, Any]) -> bool:
        return self.read() == self._normal(expected)

    def write(self, content: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(self._normal(content), indent=2))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Stamp({str(self.path)!r})"


def walk_files(root: str | Path, suffixes: Iterable[str] | None = None) -> list[Path]:
    """Every file under ``root`` (recursively, symlinked sub-folders followed), sorted; only those whose
    lower-cased suffix is in ``suffixes`` when given.

    Paths are spelled through the links (``root/real/linked/a.mp4``, not the link's target), so ids derived from
    them stay relative to ``root``. Each real folder, identified by ``(st_dev, st_ino)``, is listed once: a link
    back to an ancestor (a loop), or a second link to a folder already listed, is skipped with a log line.
    Unlistable folders are skipped with a log line too; broken links are ignored like any non-file.
    """
    wanted = None if suffixes is None else {s.lower() for s in suffixes}
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                log.info("%s: already listed through another path (a symlink loop or a second link): skipped", folder)
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as error:
            log.warning("cannot list %s (%s): skipped", folder, error.strerror or error)
            continue
        folders = []
        for entry in entries:
            try:
                if entry.is_dir():  # follows symlinks
                    folders.append(folder / entry.name)
                elif entry.is_file() and (wanted is None or Path(entry.name).suffix.lower() in wanted):
                    found.append(folder / entry.name)
            except OSError:  # a link into a folder we may not read
                continue
        stack.extend(reversed(folders))
    return sorted(found)


def check_shard(shard: int, num_shards: int) -> None:
    """Refuse a shard outside ``[0, num_shards)`` (``preprocess`` and ``detect``), before any work starts.

    Raises:
        InvalidInputError: one line naming both values.
    """
    if not 0 <= shard < num_shards:
        raise InvalidInputError(f"--shard must be in [0, --num_shards={num_shards}), got {shard}")


def shard_inputs(inputs: Sequence[Any], shard: int, num_shards: int, key: Any = str) -> list[Any]:
    """The deterministic partition of a job array (``preprocess``'s videos, ``detect``'s inputs): ``inputs``
    sorted by ``key``, every ``num_shards``-th from ``shard``; the shards together hold every input once."""
    check_shard(shard, num_shards)
    return sorted(inputs, key=key)[shard::num_shards]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` that imports each re-exported name from its home module on first use
    (``homes``: name → module, relative to ``package``), so importing a light module of the package does not load
    the heavy ones: ``__getattr__ = lazy_exports(__name__, {"Detector": "inference.detector"})``."""

    def attribute(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{homes[name]}", package), name)

    return attribute
