"""Full tuning as an adapter: a full delta of the selected weights, written as an exact LoRA, and its SVD compression.

A full delta D of a layer (out, in, *kernel) is stored as the LoRA pair down = D (rank = out), up = identity
(alpha = rank, scale 1): B A = D exactly, and every loader (this library's, diffusers') applies it unchanged.
`compress` keeps the top r singular directions of each delta: the LoRA closest to it in Frobenius norm.
"""

import torch

from ..format import LoraPair


def delta_as_lora(delta: torch.Tensor) -> LoraPair:
    """The exact LoRA of a full delta (out, in, *kernel): down = delta, up = identity."""
    out_features = delta.shape[0]
    kernel_ones = (1,) * (delta.ndim - 2)
    up = torch.eye(out_features).reshape(out_features, out_features, *kernel_ones)
    return LoraPair(down=delta.float().clone(), up=up, alpha=float(out_features))


def lora_delta(pair: LoraPair) -> torch.Tensor:
    """The weight change (alpha / r) * B A of a LoRA pair, shaped like its layer's weight."""
    delta = pair.up.flatten(1) @ pair.down.flatten(1) * (pair.alpha / pair.rank)
    return delta.reshape(pair.up.shape[0], *pair.down.shape[1:])


def compress(modules: dict[str, LoraPair], rank: int) -> tuple[dict[str, LoraPair], float]:
    """Truncated SVD of every module's delta to `rank`; returns the LoRA and the fraction of energy kept.

    Energy is the squared Frobenius norm, summed over all modules: 1.0 means nothing was lost.
    """
    compressed, kept, total = {}, 0.0, 0.0
    for name, pair in modules.items():
        delta = lora_delta(pair)
        matrix = delta.flatten(1).double()  # (out, in * kernel)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        r = min(rank, s.numel())
        kept += s[:r].square().sum().item()
        total += s.square().sum().item()
        kernel_ones = (1,) * (delta.ndim - 2)
        compressed[name] = LoraPair(
            down=vh[:r].float().reshape(r, *delta.shape[1:]),
            up=(u[:, :r] * s[:r]).float().reshape(delta.shape[0], r, *kernel_ones),
            alpha=float(r),
        )
    return compressed, (kept / total if total > 0 else 1.0)
