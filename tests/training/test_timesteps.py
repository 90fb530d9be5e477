import math

import pytest
import torch

from motion_adapter.training.timesteps import sample_timesteps, timestep_weights

N = 200_000


def draw(mode):
    return sample_timesteps(N, 1000, mode, 0.5, generator=torch.Generator().manual_seed(0)).double()


@pytest.mark.parametrize(
    "mode, mean, p_high",
    [("uniform", 499.5, 0.5), ("coarse", 600.9, 0.5 + 0.5 / math.pi), ("fine", 398.2, 0.5 - 0.5 / math.pi),
     ("cubic", 749.5, 0.5 ** (1 / 3))],
)
def test_empirical_law_matches_the_exact_one(mode, mean, p_high):
    t = draw(mode)
    assert t.min() >= 0 and t.max() <= 999 and sample_timesteps(3, mode=mode).dtype == torch.long
    assert abs(t.mean().item() - mean) < 3.0  # standard error of the mean is about 0.65
    assert abs((t >= 500).double().mean().item() - p_high) < 0.005
    weights = timestep_weights(1000, mode)
    assert abs((weights * torch.arange(1000)).sum().item() - mean) < 0.05
    assert abs(weights[500:].sum().item() - p_high) < 0.001


def test_paper_figures():
    t = draw("coarse")
    assert round(t.mean().item()) in range(599, 604)
    assert round((t >= 500).double().mean().item(), 2) == 0.66  # the paper's 0.659
    weights = timestep_weights(1000, "coarse")
    assert weights[-1] / weights[0] == pytest.approx(3.0, rel=0.01)  # high noise 3x as often as clean


def test_histogram_follows_the_weights():
    t = draw("coarse").long()
    counts = torch.bincount(t // 100, minlength=10).double() / N
    expected = timestep_weights(1000, "coarse").reshape(10, 100).sum(1)
    assert torch.allclose(counts, expected, atol=0.004)


def test_seeded_draws_repeat():
    a = sample_timesteps(10, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["uniform", "coarse", "fine", "cubic"])
def test_none_drawn_is_an_empty_draw(mode):
    drawn = sample_timesteps(0, mode=mode)
    assert drawn.shape == (0,) and drawn.dtype == torch.long


def test_bad_arguments():
    with pytest.raises(ValueError, match="uniform, coarse, fine, cubic"):
        sample_timesteps(1, mode="coarser")
    with pytest.raises(ValueError, match="alpha"):
        sample_timesteps(1, mode="coarse", alpha=1.5)
