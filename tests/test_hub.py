"""The Hub path, for real but offline: a snapshot laid into a temporary Hub cache, read with HF_HUB_OFFLINE=1."""

import shutil

import numpy as np
import pytest
from huggingface_hub import constants

import motion_adapter as ma
from motion_adapter import testing

from .conftest import assert_same_snapshot, pipeline_snapshot

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def lay_snapshot(cache, repo_id, folder, *, revision="main", commit=COMMIT):
    """Put `folder` into a Hub cache as huggingface_hub itself lays out a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_repo_id_loads_from_the_cache_like_a_folder(tmp_path, adapter_dir, offline):
    cache = tmp_path / "hub"
    lay_snapshot(cache, "user/pll", adapter_dir)
    from_folder = testing.tiny_pipeline()
    from_folder.load_motion_adapter(adapter_dir)
    from_hub = testing.tiny_pipeline()
    assert from_hub.load_motion_adapter("user/pll", cache_dir=cache) == "pll"
    np.testing.assert_array_equal(testing.generate(from_hub), testing.generate(from_folder))
    assert ma.inspect(ma.resolve_source("user/pll", cache_dir=cache)).tokens == ["pll"]


def test_revision_selects_a_snapshot(tmp_path, adapter_dir, offline):
    cache = tmp_path / "hub"
    lay_snapshot(cache, "user/pll", adapter_dir, revision="v1", commit="f" * 40)
    assert ma.resolve_source("user/pll", cache_dir=cache, revision="v1").name == "f" * 40
    with pytest.raises(ma.AdapterNotFoundError, match="offline"):
        ma.resolve_source("user/pll", cache_dir=cache, revision="v2")


def test_missing_repo_offline_is_a_clear_error_and_changes_nothing(tmp_path, pipe, offline):
    before = pipeline_snapshot(pipe)
    with pytest.raises(ma.AdapterNotFoundError, match="user/nothing is neither a local path nor a Hub repo"):
        pipe.load_motion_adapter("user/nothing", cache_dir=tmp_path / "hub")
    assert_same_snapshot(before, pipeline_snapshot(pipe))
