"""Atomic writes: a complete file or none, with the mode a plain open() gives."""

import os
import stat

import pytest

from motion_adapter.files import atomic_write_bytes, temporary_sibling


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mode):
    """Atomic writes give the mode a plain open() would, not mkstemp's 0600, and leave no temporary file."""
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "card.md", b"hello")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "card.md").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["card.md"]


def test_a_writer_that_recreates_the_file_still_gives_the_umask_mode(tmp_path):
    """safetensors' save_file replaces the file with one of mode 0600: the move into place restores the mode."""
    previous = os.umask(0o022)
    try:
        with temporary_sibling(tmp_path / "adapter.safetensors") as tmp:
            tmp.unlink()
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "adapter.safetensors").stat().st_mode) == 0o644


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError), temporary_sibling(tmp_path / "clip.gif") as tmp:
        assert tmp.suffix == ".gif" and tmp.parent == tmp_path  # writers pick the format by the suffix
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_the_new_bytes_reach_the_disk_before_the_file_takes_the_path(tmp_path, monkeypatch):
    """A rename is atomic, not durable: the file is synced first, or a power cut may leave the path naming an
    empty file."""
    synced = []

    def fsync(fd):
        synced.append((os.fstat(fd).st_size, (tmp_path / "run.json").exists()))

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_bytes(tmp_path / "run.json", b"{}\n")
    assert synced == [(3, False)]  # the whole file, before it took the path
    assert (tmp_path / "run.json").read_bytes() == b"{}\n"
