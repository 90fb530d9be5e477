"""The Hub path, for real but offline: a snapshot laid into a temporary Hub cache, read with HF_HUB_OFFLINE=1."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

import motion_adapter as ma
from motion_adapter import hub, testing

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
    assert ma.inspect("user/pll", cache_dir=cache).tokens == ["pll"]


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
    with pytest.raises(ma.AdapterNotFoundError, match="user/nothing is neither a local path nor a Hub repo"):
        ma.inspect("user/nothing", cache_dir=tmp_path / "hub")


def fake_hub(monkeypatch, repo: Path, snapshot: Path) -> None:
    """Stands in for snapshot_download: copies what huggingface_hub's own filter lets through of `repo`'s files."""

    def download(repo_id, *, allow_patterns=None, ignore_patterns=None, **kwargs):
        files = [str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(hub, "snapshot_download", download)


def test_only_the_adapter_at_the_repos_root_is_downloaded(tmp_path, adapter_dir, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(adapter_dir, repo)
    (repo / "checkpoints" / "step-000500").mkdir(parents=True)
    (repo / "checkpoints" / "step-000500" / "state.safetensors").write_bytes(b"optimizer state")
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    fake_hub(monkeypatch, repo, tmp_path / "snapshot")
    assert ma.inspect("user/pll").tokens == ["pll"]
    assert sorted(p.name for p in (tmp_path / "snapshot").iterdir()) == sorted(p.name for p in adapter_dir.iterdir())


def test_a_repo_of_pickle_weights_only_is_refused_naming_the_repo(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "pytorch_lora_weights.bin").write_bytes(b"pickle")
    (tmp_path / "snapshot").mkdir()
    fake_hub(monkeypatch, tmp_path / "repo", tmp_path / "snapshot")
    with pytest.raises(ma.AdapterFormatError, match=r"Hub repo user/pll \(revision main\) has no \.safetensors file "
                       r"at its root.*pickle \.bin files are never downloaded"):
        ma.inspect("user/pll")


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what the upload would send."""

    def __init__(self):
        self.calls, self.sent = [], {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        self.sent = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return "commit-info"


def test_push_sends_one_commit_with_adapter_and_card(adapter_dir):
    (adapter_dir / "sample.gif").write_bytes(b"GIF89a")
    api = RecordingApi()
    assert (
        ma.push_to_hub(adapter_dir, "user/pll", private=True, revision="v1", commit_message="first", api=api)
        == "commit-info"
    )
    kinds = [call[0] for call in api.calls]
    assert kinds == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[2][2]["revision"] == "v1"
    assert api.calls[2][2]["commit_message"] == "first"
    assert set(api.sent) == {"pytorch_lora_weights.safetensors", "README.md", "sample.gif"}
    card = api.sent["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert (
        meta["library_name"] == "motion-adapter"
        and {"text-to-video", "lora", "motion-customization"} <= set(meta["tags"])
    )
    assert 'pipe.load_motion_adapter("user/pll", revision="v1")' in card and "![sample](sample.gif)" in card
    assert (
        api.sent["pytorch_lora_weights.safetensors"]
        == (adapter_dir / "pytorch_lora_weights.safetensors").read_bytes()
    )


def test_push_keeps_a_users_readme(adapter_dir):
    (adapter_dir / "README.md").write_text("my card")
    api = RecordingApi()
    ma.push_to_hub(adapter_dir, "user/pll", api=api)
    assert api.sent["README.md"] == b"my card"


def test_the_token_never_reaches_a_file_or_a_message(adapter_dir, monkeypatch, capsys):
    secret = "hf_" + "S3cr3tT0k3nValue" * 2
    seen = {}

    class FakeHfApi(RecordingApi):
        def __init__(self, token=None):
            super().__init__()
            seen["token"] = token

        def upload_folder(self, **kwargs):
            super().upload_folder(**kwargs)
            seen["sent"] = self.sent
            raise RuntimeError("upload refused")

    monkeypatch.setattr(ma.hub, "HfApi", FakeHfApi)
    with pytest.raises(RuntimeError) as error:
        ma.push_to_hub(adapter_dir, "user/pll", token=secret)
    assert seen["token"] == secret  # handed to huggingface_hub, and only there
    assert secret not in str(error.value) and secret not in "".join(capsys.readouterr())
    assert seen["sent"] and not any(secret.encode() in data for data in seen["sent"].values())
    for file in adapter_dir.rglob("*"):
        assert secret.encode() not in file.read_bytes()


def test_push_refuses_what_is_not_an_adapter(tmp_path):
    with pytest.raises(ma.AdapterFormatError):
        ma.push_to_hub(tmp_path, "user/nothing", api=RecordingApi())
    with pytest.raises(ma.AdapterNotFoundError, match=f"no adapter at {tmp_path / 'gone'}: the path does not exist"):
        ma.push_to_hub(tmp_path / "gone", "user/nothing", api=RecordingApi())


def test_a_push_that_cannot_reach_the_hub_says_what_to_check(adapter_dir):
    class OfflineApi(RecordingApi):
        def create_repo(self, repo_id, **kwargs):
            raise OfflineModeIsEnabled("HF_HUB_OFFLINE=1")

    with pytest.raises(ma.MotionAdapterError, match=f"could not push {adapter_dir} to user/pll .*logged in"):
        ma.push_to_hub(adapter_dir, "user/pll", api=OfflineApi())


def test_a_push_over_a_refused_connection_says_what_to_check(adapter_dir):
    unreachable = HfApi(endpoint="http://127.0.0.1:9", token="hf_unused")  # the discard port: nothing listens
    with pytest.raises(ma.MotionAdapterError, match=f"could not push {adapter_dir} to user/pll .*check the connection"):
        ma.push_to_hub(adapter_dir, "user/pll", api=unreachable)
