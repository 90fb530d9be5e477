"""Checkpoints: a round trip restores tensors, optimizer and step; damage is named with the way out; the files
reach the disk before the folder takes its name."""

import re

import pytest
import torch

from motion_adapter import files
from motion_adapter.training.checkpoint import load_checkpoint, save_checkpoint

KEY = {"rank": 4}


def _training_state(value: float):
    param = torch.nn.Parameter(torch.full((3,), value))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    return [param], optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _checkpoint(output_dir):
    """A checkpoint after one optimizer step; returns its folder and the trained tensor."""
    params, optimizer, scheduler = _training_state(1.0)
    params[0].grad = torch.ones(3)
    optimizer.step()
    scheduler.step()
    return save_checkpoint(output_dir, 1, params, optimizer, scheduler, KEY), params[0].detach().clone()


def test_a_checkpoint_restores_tensors_optimizer_and_step(tmp_path):
    folder, trained = _checkpoint(tmp_path)
    params, optimizer, scheduler = _training_state(0.0)
    assert load_checkpoint(folder, params, optimizer, scheduler, KEY) == 1
    assert torch.equal(params[0].detach(), trained) and optimizer.state[params[0]]["step"] == 1


@pytest.mark.parametrize("name", ["state.safetensors", "state.json"])
def test_a_damaged_checkpoint_names_its_folder_and_the_way_out(tmp_path, name):
    folder, _ = _checkpoint(tmp_path)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    message = f"checkpoint {re.escape(str(folder))} is damaged: its {name} cannot be read .*earlier checkpoint.*delete"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(folder, *_training_state(0.0), KEY)


def test_checkpoint_files_reach_the_disk_before_the_folder_is_renamed(tmp_path, monkeypatch):
    synced = []
    flush = files._flush_to_disk

    def record(path):
        synced.append((path.parent.name, path.suffix))
        flush(path)

    monkeypatch.setattr(files, "_flush_to_disk", record)
    folder, _ = _checkpoint(tmp_path)
    assert sorted(synced) == [(".step-000001.partial", ".json"), (".step-000001.partial", ".safetensors")]
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"]


class _IntStepSGD(torch.optim.Optimizer):
    """Keeps its per-parameter step as a plain int, as bitsandbytes' 8-bit optimizers do."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    def step(self):
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                state["step"] = state.get("step", 0) + 1
                state["momentum"] = param.grad.clone()
                param.data -= group["lr"] * param.grad


def test_an_optimizers_plain_numbers_come_back_as_numbers(tmp_path):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = _IntStepSGD([param])
    param.grad = torch.ones(3)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = save_checkpoint(tmp_path, 1, [param], optimizer, scheduler, KEY)
    resumed = torch.nn.Parameter(torch.zeros(3))
    again = _IntStepSGD([resumed])
    load_checkpoint(folder, [resumed], again, torch.optim.lr_scheduler.LambdaLR(again, lambda step: 1.0), KEY)
    state = again.state[resumed]
    assert type(state["step"]) is int and state["step"] == 1
    assert torch.equal(state["momentum"], torch.ones(3)) and torch.equal(resumed.detach(), param.detach())
