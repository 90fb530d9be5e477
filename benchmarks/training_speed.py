"""Training speed and memory on a mid-size UNet3D (random weights), measured side by side in one run.

1. Seconds per step of `train_motion` against a minimal hand-written diffusers + peft loop on the same model and
   data (goal: at most 1.10x). Per-step time of the library is taken as the difference between a short and a
   long run, so its one-off set-up (caching, saving) is not counted; the hand loop is timed after a warm-up.
2. The speed-up from latent caching: `latent_cache="memory"` against "off" (encode every step).
3. A step with one regularization clip against a step without: the two clips go through the denoiser as one
   batch, so it costs less than two steps.
4. Peak memory that training adds (max resident set during training minus before it, each run in a fresh
   process, on 16 frames of 64x64 so that activations dominate) with and without gradient checkpointing.

    python benchmarks/training_speed.py [--rounds 3] [--steps 20]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from peft import LoraConfig, inject_adapter_in_model

import motion_adapter as ma
from motion_adapter import testing
from motion_adapter.training.data import load_clip_folder
from motion_adapter.video import write_video

SIZE, FRAMES = 32, 8


def mid_size_pipeline():
    """The tiny pipeline with a wider UNet3D (4.94 M parameters), so that steps cost real compute."""
    pipe = testing.tiny_pipeline()
    pipe.unet = testing.tiny_unet3d(block_out_channels=(64, 128))
    return pipe


def write_data(folder: Path, caption: str | None = None) -> Path:
    """Four clips of a square moving right; with `caption`, each gets it in a .txt beside it (regularization clips)."""
    rng = np.random.default_rng(0)
    for i in range(4):
        frames = np.zeros((FRAMES + 4, SIZE, SIZE, 3), np.uint8)
        for f in range(frames.shape[0]):
            frames[f, 8:20, 2 + f : 14 + f] = rng.integers(100, 255, 3)
        write_video(folder / f"clip{i}.gif", frames)
        if caption:
            (folder / f"clip{i}.txt").write_text(caption)
    return folder


def config(steps: int, **changes) -> ma.TrainConfig:
    return ma.TrainConfig(max_train_steps=steps, num_frames=FRAMES, height=SIZE, width=SIZE, rank=16, **changes)


def library_seconds(data: Path, steps: int, reg_data: Path | None = None, **changes) -> float:
    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    ma.train_motion(mid_size_pipeline(), data=data, token="pll", output_dir=out, reg_data=reg_data,
                    config=config(steps, **changes))  # fmt: skip
    return time.perf_counter() - start


def hand_loop_seconds_per_step(data: Path, steps: int) -> float:
    """The minimal loop a user would write with diffusers and peft: same model, data, rank and optimizer."""
    pipe = mid_size_pipeline()
    unet = pipe.unet
    unet.requires_grad_(False)
    names = ma.resolve_targets(unet, "motion").module_names
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=names), unet)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    clips = load_clip_folder(data, token="pll", caption_template="a person doing the {token}", num_frames=FRAMES,
                             height=SIZE, width=SIZE)  # fmt: skip
    with torch.no_grad():
        latents = [pipe.vae.encode(c.frames).latent_dist.mean * pipe.vae.config.scaling_factor for c in clips]
        text = pipe.encode_prompt(clips[0].caption, "cpu", 1, False)[0]
    unet.train()

    def step():
        i = int(torch.randint(len(latents), (1,)))
        start = int(torch.randint(latents[i].shape[0] - FRAMES + 1, (1,)))
        x0 = latents[i][start : start + FRAMES].permute(1, 0, 2, 3).unsqueeze(0)  # (f,c,h,w) -> (1,c,f,h,w)
        noise = torch.randn_like(x0)
        t = torch.randint(1000, (1,))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def peak_memory_child(checkpointing: bool) -> None:
    """Train a few steps on longer, larger clips in this (fresh) process; print the peak memory training added."""
    global SIZE, FRAMES
    SIZE, FRAMES = 64, 16  # activations, not the model, dominate here: what checkpointing is for
    data = write_data(Path(tempfile.mkdtemp()))
    pipe = mid_size_pipeline()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ma.train_motion(pipe, data=data, token="pll", output_dir=Path(tempfile.mkdtemp()),
                    config=config(2, gradient_checkpointing=checkpointing))  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (after - before) / 1024}))


def peak_memory(checkpointing: bool) -> float:
    flag = "--memory-child-checkpointing" if checkpointing else "--memory-child"
    out = subprocess.run([sys.executable, __file__, flag], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_child or args.memory_child_checkpointing:
        return peak_memory_child(args.memory_child_checkpointing)

    data = write_data(Path(tempfile.mkdtemp()))
    reg = write_data(Path(tempfile.mkdtemp()), caption="a square moving right")
    short, long_ = 5, 5 + args.steps
    library, hand, uncached, regularized = [], [], [], []
    for _ in range(args.rounds):  # interleaved: every measurement sees the same machine
        library.append((library_seconds(data, long_) - library_seconds(data, short)) / args.steps)
        hand.append(hand_loop_seconds_per_step(data, args.steps))
        uncached.append((library_seconds(data, long_, latent_cache="off") -
                         library_seconds(data, short, latent_cache="off")) / args.steps)  # fmt: skip
        regularized.append((library_seconds(data, long_, reg) - library_seconds(data, short, reg)) / args.steps)
    lib, ref, off = statistics.median(library), statistics.median(hand), statistics.median(uncached)
    with_reg = statistics.median(regularized)
    params = sum(p.numel() for p in mid_size_pipeline().unet.parameters())
    print(f"UNet3D of {params / 1e6:.1f} M parameters, {FRAMES} frames of {SIZE}x{SIZE}, rank 16, 1 thread, "
          f"median of {args.rounds} rounds\n")  # fmt: skip
    print("| measurement | value |")
    print("|---|---:|")
    print(f"| train_motion, s/step | {lib:.3f} |")
    print(f"| hand-written diffusers + peft loop, s/step | {ref:.3f} |")
    print(f"| ratio library / hand loop (goal <= 1.10) | {lib / ref:.2f}x |")
    print(f"| latent_cache=off, s/step | {off:.3f} |")
    print(f"| speed-up from latent caching | {off / lib:.2f}x |")
    print(f"| with one regularization clip a step, s/step | {with_reg:.3f} |")
    print(f"| ratio to a step without (two passes: about 2x) | {with_reg / lib:.2f}x |")
    without, with_ = peak_memory(False), peak_memory(True)
    print(f"| peak memory added by training (16 frames of 64x64), no gradient checkpointing | {without:.0f} MB |")
    print(f"| the same with gradient checkpointing | {with_:.0f} MB ({with_ / without:.2f}x) |")


if __name__ == "__main__":
    main()
