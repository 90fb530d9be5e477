"""Latent caching: the VAE is frozen, so each clip is encoded once (in memory or on disk) instead of every step.

A `LatentStore` holds, for every training example, the VAE latents of all its frames, (f_total, c, h, w) scaled
by the VAE's scaling factor; each step takes a window of them. With `mode="off"` it keeps the frames and encodes
the window at every step (the slow path, kept to measure what caching saves); the other modes let the frames go.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..format import atomic_save_tensors
from .data import ClipExample, progress_options

ENCODE_CHUNK = 8  # frames encoded at once: bounds the VAE's memory on long clips


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor) -> torch.Tensor:
    """VAE latents of frames (f, 3, h, w) in [-1, 1] -> (f, c, h/8, w/8), scaled; the distribution's mean."""
    parameter = next(vae.parameters())
    chunks = []
    for start in range(0, frames.shape[0], ENCODE_CHUNK):
        chunk = frames[start : start + ENCODE_CHUNK].to(parameter.device, parameter.dtype)
        chunks.append(vae.encode(chunk).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(chunks).float()


def _with_progress(examples: list[ClipExample]) -> tqdm:
    """`examples` with a progress bar: encoding many long clips takes a while before training starts."""
    return tqdm(examples, desc="encoding latents", unit="clip", **progress_options())


class LatentStore:
    """Latents of a list of examples, by index; `window(i, frames)` gives (f, c, h, w) for one step."""

    def __init__(self, vae, examples: list[ClipExample], *, mode: str = "memory", folder: Path | None = None):
        self.vae, self.mode, self.folder = vae, mode, folder
        self.frame_counts = [example.frames.shape[0] for example in examples]
        self.examples = examples if mode == "off" else None  # decoded frames are kept only to encode every step
        self.latents: list[torch.Tensor] = []
        if mode == "memory":
            self.latents = [encode_frames(vae, example.frames) for example in _with_progress(examples)]
        elif mode == "disk":
            folder.mkdir(parents=True, exist_ok=True)
            for i, example in enumerate(_with_progress(examples)):  # atomic: every process of a run writes them
                latents = encode_frames(vae, example.frames).contiguous()
                atomic_save_tensors({"latents": latents}, folder / f"{i}.safetensors")

    def __len__(self) -> int:
        return len(self.frame_counts)

    def num_frames(self, i: int) -> int:
        return self.frame_counts[i]

    def window(self, i: int, frames: slice) -> torch.Tensor:
        if self.mode == "memory":
            return self.latents[i][frames]
        if self.mode == "disk":
            return load_file(self.folder / f"{i}.safetensors")["latents"][frames]
        return encode_frames(self.vae, self.examples[i].frames[frames])
