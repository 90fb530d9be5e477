"""Atomic writes: at a path there is nothing, the old file, or the complete new one, never half a file.

Every file the library writes (adapters, checkpoints, videos, pictures, JSON) goes through here, so that a crash
or a full disk midway leaves no truncated file that a later run would trust.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temporary_sibling(path):
    """A temporary path next to `path` (same suffix, for writers that choose the format by it), moved onto
    `path` when the block ends and removed if it raises (atomic on one disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes 0600 files; give the mode a plain open() would (0666 less the umask, read and restored).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with temporary_sibling(path) as tmp:
        tmp.write_bytes(data)
