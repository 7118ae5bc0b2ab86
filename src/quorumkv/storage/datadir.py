"""The data directory: an exclusive lock and a format marker.

Invariants:
- at most one quorumkv process holds a data directory (an ``flock`` on ``<data-dir>/LOCK``);
- a directory whose ``FORMAT`` names a format this build does not know is refused, never guessed at.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: The on-disk format this build writes and reads. Bump when the schema changes incompatibly.
DATA_FORMAT = "quorumkv-data/1"
FORMAT_FILE = "FORMAT"
LOCK_FILE = "LOCK"
DB_FILE = "quorumkv.db"


class DataDirError(Exception):
    """A data directory that cannot be used; the message names the problem and the fix."""


@dataclass
class DataDir:
    """An opened, locked data directory."""

    path: Path
    created: bool
    _lock_file: IO[bytes]

    @property
    def db_path(self) -> Path:
        return self.path / DB_FILE

    @property
    def lock_fd(self) -> int:
        """The locked file's descriptor (a child process that inherits it holds the lock as long as it lives)."""
        return self._lock_file.fileno()

    def close(self) -> None:
        """Release the lock; idempotent."""
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created/renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_data_dir(path: str | os.PathLike[str]) -> DataDir:
    """Create (if needed), lock and format-check ``path``.

    Raises DataDirError if another process holds the lock or the format is unknown.
    """
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataDirError(
            f"cannot create data dir {root}: {exc.strerror}; choose a writable --data-dir"
        ) from exc
    lock_file = open(root / LOCK_FILE, "ab")
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock_file.close()
        raise DataDirError(
            f"data dir {root} is in use by another quorumkv process (lock {root / LOCK_FILE} is held); "
            "stop that process or choose another --data-dir"
        ) from exc
    fmt_path = root / FORMAT_FILE
    created = False
    try:
        if fmt_path.exists():
            found = fmt_path.read_text(encoding="utf-8", errors="replace").strip()
            if found != DATA_FORMAT:
                raise DataDirError(
                    f"data dir {root} has format {found!r} but this quorumkv reads {DATA_FORMAT!r}; "
                    "use the quorumkv version that wrote it, or restore a snapshot into a new --data-dir"
                )
        else:
            # fixtures/: --auto-tls certificates, generated (as etcd does) before the data dir is formatted
            entries = [p.name for p in root.iterdir() if p.name not in (LOCK_FILE, "fixtures")]
            if entries:
                raise DataDirError(
                    f"data dir {root} is not empty and has no {FORMAT_FILE} marker (found: "
                    f"{', '.join(sorted(entries)[:5])}); it is not a quorumkv data dir — "
                    "choose an empty or new --data-dir"
                )
            tmp = root / (FORMAT_FILE + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(DATA_FORMAT + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, fmt_path)
            fsync_dir(root)
            created = True
    except BaseException:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
        lock_file.close()
        raise
    return DataDir(path=root, created=created, _lock_file=lock_file)
