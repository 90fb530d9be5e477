"""Atomic writes: at a path there is nothing, the old file, or the complete new one, never half a file.

Every file the library writes (adapters, checkpoints, videos, pictures, JSON) goes through here, so that a crash
or a full disk midway leaves no truncated file that a later run would trust. The new file's bytes reach the disk
before it takes the path's place, so a power cut cannot leave the path naming an empty file either.
"""

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temporary_sibling(path):
    """A temporary path next to `path` (same suffix, for writers that choose the format by it), moved onto
    `path` when the block ends and removed if it raises (atomic on one disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_empty_sibling(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with one of mode 0600
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_empty_sibling(path: Path) -> Path:
    """Create a new empty file `.{stem}.{random}.tmp{suffix}` next to `path` with the mode a plain open() gives:
    0666 less the umask, applied by the OS (tempfile.mkstemp would make it 0600)."""
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue


def _flush_to_disk(path: Path) -> None:
    """fsync: without it a file renamed into place just before a power cut may come back empty (delayed allocation).
    POSIX syncs a file opened for reading (its mode may forbid writing); Windows wants a writable handle."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    with temporary_sibling(path) as tmp:
        tmp.write_bytes(data)
