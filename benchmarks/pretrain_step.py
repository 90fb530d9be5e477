"""Speed of one pretraining step of the tiny world's denoiser (UNet3D + text encoder, random data) on a GPU:
by batch size and precision, then torch's profiler on batch 256 (where the GPU's time goes).

    python benchmarks/pretrain_step.py

Measured on one H200 (torch 2.11; the figures entered toyworld.pretrain's docstring at commit 2654570, and the next
commit, 6bb7225, added this script there as their source): 125 / 210 / 774 ms a step at batch 64 / 256 / 1,024 in
float32, 201 ms at 256 with bf16 autocast; 68% of the GPU's time in the memory-efficient attention kernels. bf16 at
batch 1,024 is left out: that attention kernel refused it there ("CUDA error: invalid argument"). On a CPU it runs
at batch 2, to check the script.
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from motion_adapter.toyworld.model import build_scheduler, build_text_encoder, build_tokenizer, build_unet
from motion_adapter.toyworld.pretrain import velocity_loss

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = [(64, "fp32"), (256, "fp32"), (1024, "fp32"), (256, "bf16")] if DEVICE == "cuda" else [(2, "fp32")]


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    torch.manual_seed(0)
    tokenizer, scheduler = build_tokenizer(), build_scheduler()
    unet, text_encoder = build_unet().to(DEVICE), build_text_encoder(len(tokenizer)).to(DEVICE)
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=1e-4)

    def step(batch: int, precision: str) -> None:
        clean = torch.randn(batch, 4, 8, 8, 8, device=DEVICE)
        ids = torch.randint(0, len(tokenizer), (batch, 16), device=DEVICE)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=DEVICE)
        noise = torch.randn_like(clean)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = velocity_loss(unet, scheduler, clean, noise, t, text_encoder(ids)[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize() -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    for batch, precision in SETTINGS:
        for _ in range(2):
            step(batch, precision)
        synchronize()
        rounds = 12 if DEVICE == "cuda" else 3
        start = time.perf_counter()
        for _ in range(rounds):
            step(batch, precision)
        synchronize()
        seconds = (time.perf_counter() - start) / rounds
        print(f"batch {batch:5d} {precision}: {seconds * 1000:7.1f} ms a step, {batch / seconds:6.0f} clips a second")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(3):
            step(SETTINGS[1][0] if DEVICE == "cuda" else 2, "fp32")
        synchronize()
    key = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
