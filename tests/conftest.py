"""Shared fixtures: a tiny real TextToVideoSDPipeline built in code (no downloads) and adapters made on it."""

import pytest
import torch

import motion_adapter as ma
from motion_adapter import testing

# Tiny models gain nothing from threads, and two OpenMP threads on a busy 2-core machine run 30x slower.
torch.set_num_threads(1)


@pytest.fixture
def pipe():
    return testing.tiny_pipeline()


@pytest.fixture(scope="session")
def base_frames():
    """What the tiny pipeline generates with no adapter."""
    return testing.generate(testing.tiny_pipeline())


def make_adapter(path, *, name="pll", token="pll", preset="motion", seed=0, rank=4, dtype="float32"):
    """Save an adapter with random (trained-looking) weights from a fresh tiny pipeline; return its path."""
    pipe = testing.tiny_pipeline()
    ma.add_motion_adapter(pipe, name, preset=preset, rank=rank, alpha=rank, token=token)
    testing.randomize_adapter(pipe, name, seed=seed)
    return ma.save_motion_adapter(pipe, name, path, dtype=dtype)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    """The tiny pipeline saved with save_pretrained: a local stand-in for a Hub model id."""
    folder = tmp_path_factory.mktemp("tiny-base")
    testing.tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def adapter_dir(tmp_path):
    return make_adapter(tmp_path / "pll")


def pipeline_snapshot(pipe) -> dict:
    """Everything a refused call must leave untouched: weights, trainable flags, vocabulary, adapter registry."""
    return {
        "unet": {k: v.clone() for k, v in pipe.unet.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in pipe.unet.named_parameters()},
        "text": {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()},
        "vocab": len(pipe.tokenizer),
        "adapters": dict(ma.motion_adapter_weights(pipe)),
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    for part in ("unet", "text"):
        assert before[part].keys() == after[part].keys(), f"{part}: the set of tensors changed"
        for key in before[part]:
            assert torch.equal(before[part][key], after[part][key]), f"{part}.{key} changed"
    assert before["grad"] == after["grad"]
    assert before["vocab"] == after["vocab"]
    assert before["adapters"] == after["adapters"]
