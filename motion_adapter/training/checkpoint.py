"""Resumable checkpoints: the trained tensors, the optimizer's state and the step, written atomically.

A checkpoint is a folder `checkpoints/step-000100/` holding `state.safetensors` (tensors) and `state.json`
(step, learning-rate schedule, the config fields and data it must match). It is written under a temporary name and
renamed when complete, so a crash never leaves a folder that looks like a checkpoint; its files are written with
files.py's atomic helpers, so their bytes are on disk before the rename. Safetensors only.
"""

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..files import atomic_write_bytes
from ..format import atomic_save_tensors

PREFIX = "step-"


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint under output_dir/checkpoints, or None."""
    folder = checkpoint_dir(output_dir)
    found = sorted(folder.glob(f"{PREFIX}*")) if folder.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(output_dir: Path, step: int, params: list[torch.Tensor], optimizer, scheduler, key: dict) -> Path:
    """Write the trainable tensors and optimizer state after `step` optimizer steps; returns the folder."""
    tensors = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
    optimizer_state = optimizer.state_dict()
    optimizer_tensors, optimizer_numbers = flatten_optimizer_state(optimizer_state["state"], "optimizer.")
    tensors.update(optimizer_tensors)
    meta = {
        "step": step,
        "key": key,
        "param_groups": optimizer_state["param_groups"],
        "optimizer_numbers": optimizer_numbers,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
    }
    final = checkpoint_dir(output_dir) / f"{PREFIX}{step:06d}"
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    atomic_save_tensors(tensors, partial / "state.safetensors")
    atomic_write_bytes(partial / "state.json", json.dumps(meta, indent=1).encode())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def load_checkpoint(folder: Path, params: list[torch.Tensor], optimizer, scheduler, key: dict) -> int:
    """Restore a checkpoint into the given tensors, optimizer and scheduler; returns its step."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a checkpoint (no state.json); checkpoints live in output_dir/checkpoints"
        )
    try:
        meta = json.loads((folder / "state.json").read_text())
        saved_key, step = dict(meta["key"]), int(meta["step"])
        param_groups, scheduler_state = meta["param_groups"], meta["scheduler"]
        numbers = dict(meta.get("optimizer_numbers", {}))
    except (ValueError, KeyError, TypeError) as error:
        raise _damaged(folder, "state.json", error) from None
    differing = {k: (saved_key[k], v) for k, v in key.items() if k in saved_key and saved_key[k] != v}
    unchecked = [k for k in key if k not in saved_key]
    if unchecked and not differing:
        warnings.warn(
            f"{folder} was written by an earlier motion_adapter, which did not record its {', '.join(unchecked)}: "
            "resuming without checking them; resume only a run of the same data",
            stacklevel=3,
        )
    if differing:
        details = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in differing.items())
        raise ValueError(
            f"{folder} was written by a run with another config or data ({details}); resume with the same settings "
            "and data, or start afresh in another output_dir"
        )
    try:
        tensors = load_file(folder / "state.safetensors")
        saved = [tensors[f"param.{i}"] for i in range(len(params))]
    except (SafetensorError, OSError, KeyError) as error:
        raise _damaged(folder, "state.safetensors", error) from None
    with torch.no_grad():
        for param, value in zip(params, saved, strict=True):
            param.copy_(value)
    state = optimizer_moments(tensors, "optimizer.", numbers)
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    scheduler.load_state_dict({**scheduler.state_dict(), **scheduler_state})
    return step


def _damaged(folder: Path, name: str, error: Exception) -> ValueError:
    return ValueError(
        f"checkpoint {folder} is damaged: its {name} cannot be read ({type(error).__name__}: {error}); resume from "
        "an earlier checkpoint (give its folder as resume), or delete this one and resume='latest' takes the one before"
    )


def flatten_optimizer_state(
    per_parameter: dict[int, dict], prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, int | float]]:
    """An optimizer state dict's "state" (per parameter), flat (safetensors holds no dicts): its tensors as
    `{prefix}{index}.{name}`, and its plain numbers as `{index}.{name}` (bitsandbytes keeps its step as an int, which
    must come back an int)."""
    tensors, numbers = {}, {}
    for index, state in per_parameter.items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                numbers[f"{index}.{name}"] = value
    return tensors, numbers


def optimizer_moments(
    tensors: dict[str, torch.Tensor], prefix: str, numbers: dict[str, int | float] | None = None
) -> dict[int, dict]:
    """The per-parameter state `flatten_optimizer_state` flattened, back as an optimizer state dict's "state"."""
    flat = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    state = {}
    for key, value in {**flat, **(numbers or {})}.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return state
