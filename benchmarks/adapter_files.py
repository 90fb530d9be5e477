"""Adapter size and load time on the full-size ZeroScope UNet (random weights, built without downloading).

For the `motion` preset at ranks 8/16/32: the fp16 file size; and the time `load_motion_adapter` takes against
the time safetensors alone takes to read the same file (goal: at most 2x), both from a warm page cache, medians
of interleaved repeats. The "peft wrappers" column times the part of loading that builds peft's LoRA layer
objects around the 324 modules (`adapter.inject` on the meta device, no file): a floor for any loader that keeps
peft's layers. Also: ten adapters loaded one after another, the tenth load's time against the first's.

    python benchmarks/adapter_files.py [--repeats 5]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet3DConditionModel
from safetensors.torch import load_file

import motion_adapter as ma
from motion_adapter import adapter
from motion_adapter.testing import randomize_adapter


def full_size_unet() -> torch.nn.Module:
    """UNet3DConditionModel() at ZeroScope's size in fp16, its memory allocated but not initialised (fast)."""
    with torch.device("meta"):
        unet = UNet3DConditionModel()
    return unet.to_empty(device="cpu").half().eval()


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core: steadier on a shared machine, and loading is not parallel anyway
    torch.manual_seed(0)
    unet = full_size_unet()
    folder = Path(tempfile.mkdtemp())
    print(f"UNet3DConditionModel(): {sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M parameters, fp16\n")
    print(
        "| rank | modules | LoRA params | file (fp16) | safetensors read | peft wrappers "
        "| load_motion_adapter | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rank in args.ranks:
        spec = ma.add_motion_adapter(unet, "bench", rank=rank, alpha=rank, token="pll", trainable=False)
        randomize_adapter(unet, "bench")
        path = ma.save_motion_adapter(unet, "bench", folder / f"rank{rank}") / "pytorch_lora_weights.safetensors"
        ma.unload_motion_adapters(unet)
        ranks, alphas = dict.fromkeys(spec.module_names, rank), dict.fromkeys(spec.module_names, float(rank))
        read_times, wrap_times, load_times = [], [], []
        for _ in range(args.repeats):  # interleaved, so all see the same machine
            read_times.append(timed(load_file, path))
            wrap_times.append(timed(adapter.inject, unet, "bench", ranks, alphas, empty=True))
            adapter.delete(unet, "bench")
            load_times.append(timed(ma.load_motion_adapter, unet, path.parent, adapter_name="bench"))
            ma.unload_motion_adapters(unet)
        read, load = statistics.median(read_times), statistics.median(load_times)
        wrap = statistics.median(wrap_times)
        params = ma.inspect(path.parent).num_params
        print(f"| {rank} | {len(spec.module_names)} | {params / 1e6:.2f} M | {path.stat().st_size / 1e6:.1f} MB "
              f"| {read * 1e3:.0f} ms | {wrap * 1e3:.0f} ms | {load * 1e3:.0f} ms | {load / read:.2f}x |")

    print("\nTen rank-16 adapters (tokens a0..a9) loaded one after another (each load's time, ms):")
    sources = []
    for i in range(10):
        ma.add_motion_adapter(unet, f"a{i}", rank=16, alpha=16, token=f"a{i}", trainable=False)
        sources.append(ma.save_motion_adapter(unet, f"a{i}", folder / f"a{i}"))
        ma.unload_motion_adapters(unet)
    times = [timed(ma.load_motion_adapter, unet, source) for source in sources]
    ma.unload_motion_adapters(unet)
    print("  " + ", ".join(f"{t * 1e3:.0f}" for t in times))
    print(f"  tenth / first: {times[-1] / times[0]:.2f}x (goal: at most 1.2x)")


if __name__ == "__main__":
    main()
