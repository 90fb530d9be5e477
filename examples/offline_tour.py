"""The examples end to end, offline, on a tiny random pipeline: train an adapter, inspect it, generate with it.

Nothing is downloaded: the tiny pipeline is built in code and saved to a temporary folder, which then stands in
for `--base cerspense/zeroscope_v2_576w`. The weights are random, so the clip shows noise, not a motion; the
point is to see every step run. (`motion-adapter demo`, with a real tiny world, replaces this tour.)

    python examples/offline_tour.py --out tour/
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np

import motion_adapter as ma
from motion_adapter import testing
from motion_adapter.video import write_video

HERE = Path(__file__).parent


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def moving_square_clips(folder: Path, count: int = 3) -> None:
    """A few 8-frame clips of a white square sliding right, as training examples."""
    for i in range(count):
        frames = np.zeros((8, 16, 16, 3), np.uint8)
        for f in range(8):
            frames[f, 4 + i : 10 + i, f : f + 6] = 255
        write_video(folder / f"clip{i}.gif", frames)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tour", help="folder for the tiny base, clips, adapter and clip")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    out = Path(args.out)

    base = out / "tiny-base"
    testing.tiny_pipeline().save_pretrained(base)
    moving_square_clips(out / "clips")
    print("== targets")
    example("show_targets").main(["--base", str(base), "--rank", "4"])
    print("== training")
    example("your_own_training_loop").main(
        ["--base", str(base), "--clips", str(out / "clips"), "--out", str(out / "pll"), "--steps", str(args.steps),
         "--frames", "4", "--size", "16"]
    )
    print("== the adapter")
    print(ma.inspect(out / "pll"))
    print("== generating")
    example("generate_with_adapters").main(
        ["--base", str(base), "--adapter", str(out / "pll"), "--prompt", "a dog doing the pll", "--frames", "4",
         "--height", "16", "--width", "16", "--steps", "4", "--out", str(out / "clip.gif")]
    )


if __name__ == "__main__":
    main()
