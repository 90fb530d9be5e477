"""Denoising time with adapters loaded, as ratios to the base model, on the tiny pipeline.

Base, then N = 1, 3, 10 unfused rank-16 `motion` adapters, then the same 3 fused: each configuration runs the
same seeded denoising loop (the UNet calls, no VAE decode), in interleaved rounds so that all see the same
machine; the table shows the median of each and its ratio to the base (goal: fused within 2%).

    python benchmarks/inference_overhead.py [--rounds 7] [--steps 20]
"""

import argparse
import statistics
import time

import torch

import motion_adapter as ma
from motion_adapter import testing


def denoise(pipe, steps: int) -> float:
    """Seconds for one seeded denoising loop, returning latents (no decode)."""
    start = time.perf_counter()
    pipe(
        "a red square moving left",
        num_frames=testing.TINY_NUM_FRAMES,
        height=testing.TINY_SIZE,
        width=testing.TINY_SIZE,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    return time.perf_counter() - start


def pipeline_with(count: int, *, fused: bool = False):
    pipe = testing.tiny_pipeline()
    for i in range(count):
        ma.add_motion_adapter(pipe, f"a{i}", rank=16, alpha=16, token=f"a{i}", trainable=False)
        testing.randomize_adapter(pipe, f"a{i}", seed=i)
    if fused:
        pipe.fuse_motion_adapters()
    return pipe


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    configs = {
        "base": pipeline_with(0),
        "1 adapter": pipeline_with(1),
        "3 adapters": pipeline_with(3),
        "10 adapters": pipeline_with(10),
        "3 adapters, fused": pipeline_with(3, fused=True),
    }
    times = {name: [] for name in configs}
    for pipe in configs.values():
        denoise(pipe, 2)  # warm-up
    for _ in range(args.rounds):
        for name, pipe in configs.items():
            times[name].append(denoise(pipe, args.steps))
    base = statistics.median(times["base"])
    print(f"tiny pipeline, {args.steps} steps, median of {args.rounds} interleaved rounds, 1 thread\n")
    print("| configuration | seconds | ratio to base |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
