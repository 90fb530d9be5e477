"""Timestep samplers for training: pure functions of a count and a generator.

The paper draws t from p(t) proportional to 1 - alpha cos(pi t / T) ("coarse": high-noise steps, which set a
motion's structure, come up to 3x as often as clean ones); "fine" is its mirror image, "cubic" draws
t = (1 - u^3) T (T2I-Adapter), "uniform" is the usual DDPM sampler.
"""

import math

import torch

MODES = ("uniform", "coarse", "fine", "cubic")


def timestep_weights(num_train_timesteps: int, mode: str, alpha: float = 0.5) -> torch.Tensor:
    """The normalised probability of each t in {0, ..., T-1} under `mode` (cubic: its discretised law)."""
    _check(mode, alpha)
    T = num_train_timesteps
    t = torch.arange(T, dtype=torch.float64)
    if mode == "uniform":
        weights = torch.ones(T, dtype=torch.float64)
    elif mode in ("coarse", "fine"):
        sign = -1.0 if mode == "coarse" else 1.0
        weights = 1.0 + sign * alpha * torch.cos(math.pi * t / T)
    else:  # cubic: t = floor((1 - u^3) T), so P(t >= k) = ((T - k) / T)^(1/3)
        upper = ((T - t) / T).pow(1 / 3)
        lower = ((T - t - 1) / T).clamp(min=0).pow(1 / 3)
        weights = upper - lower
    return weights / weights.sum()


def sample_timesteps(
    n: int,
    num_train_timesteps: int = 1000,
    mode: str = "coarse",
    alpha: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw n training timesteps (LongTensor of shape (n,), values in [0, T-1]) under `mode`."""
    _check(mode, alpha)
    T = num_train_timesteps
    if mode == "uniform":
        return torch.randint(0, T, (n,), generator=generator)
    if mode == "cubic":
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return ((1.0 - u.pow(3)) * T).long().clamp(0, T - 1)
    if n == 0:  # torch.multinomial refuses to draw none
        return torch.zeros(0, dtype=torch.long)
    return torch.multinomial(timestep_weights(T, mode, alpha), n, replacement=True, generator=generator)


def _check(mode: str, alpha: float) -> None:
    if mode not in MODES:
        raise ValueError(f"timestep sampling {mode!r} is unknown; choose one of {', '.join(MODES)}")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1) so that every timestep keeps a positive probability")
