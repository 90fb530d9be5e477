"""Sampling the tiny world's models: clips for a list of prompts, and a base's quality measured on them.

Used to score a pretrained base, by the demo, the ablation and the tests; seeded per clip, so that a clip
does not depend on the batch it falls in.
"""

import numpy as np
import torch

from motion_adapter.toyworld.evaluate import evaluate
from motion_adapter.toyworld.world import (
    COLORS,
    NUM_FRAMES,
    PRETRAIN_MOTIONS,
    SHAPES,
    SIZE,
    caption,
    valid_pairs,
)


def sample_clips(pipe, prompts, *, seed: int = 0, num_inference_steps: int = 25, guidance_scale: float = 3.0,
                 batch_size: int = 16) -> list[np.ndarray]:  # fmt: skip
    """Generate one clip per prompt with the base (or an adapted) pipeline: uint8 arrays (8, 32, 32, 3).

    Clip i uses its own generator seeded `seed + i`, so a clip does not depend on the batch it falls in (up to
    floating-point rounding).
    """
    clips = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
        frames = pipe(
            batch, num_frames=NUM_FRAMES, height=SIZE, width=SIZE, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, generator=generators, output_type="np",
        ).frames  # fmt: skip
        clips.extend((np.clip(np.asarray(f), 0.0, 1.0) * 255).round().astype(np.uint8) for f in frames)
    return clips


def quality_prompts(count: int = 64, *, seed: int = 0) -> list[str]:
    """`count` prompts spread over shapes x colours x pretraining motions (valid pairs), for measuring a base."""
    rng = np.random.default_rng(seed)
    pairs = valid_pairs(SHAPES, PRETRAIN_MOTIONS)
    order = rng.permutation(len(pairs) * len(COLORS))
    picks = [(pairs[i // len(COLORS)], COLORS[i % len(COLORS)]) for i in order]
    while len(picks) < count:
        picks += picks
    return [caption(shape, color, motion) for (shape, motion), color in picks[:count]]


def measure_quality(pipe, *, count: int = 64, seed: int = 0, num_inference_steps: int = 25,
                    guidance_scale: float = 3.0) -> dict:  # fmt: skip
    """Generate `count` clips over the pretraining world and score them with `toyworld.evaluate`.

    Returns {"motion", "color", "shape", "num_clips", "num_inference_steps", "guidance_scale", "scheduler"}.
    """
    prompts = quality_prompts(count, seed=seed)
    clips = sample_clips(pipe, prompts, seed=seed, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale)  # fmt: skip
    report = evaluate(clips, prompts)
    return {
        "motion": report.motion_accuracy,
        "color": float(np.mean([c.color_ok for c in report.clips])),
        "shape": float(np.mean([c.shape_ok for c in report.clips])),
        "num_clips": len(clips),
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "scheduler": type(pipe.scheduler).__name__,
    }


__all__ = ["measure_quality", "quality_prompts", "sample_clips"]
