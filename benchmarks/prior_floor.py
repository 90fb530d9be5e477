"""How firmly a grid's prior-preservation readings stand: the base and one variant's adapters over many noise draws.

`benchmarks/ablation.py` scores a run's prior preservation on one clip per pretraining prompt, against the base's
clip from the same starting noise. This samples the same prompts from `--draws` starting noises each (the first is
the grid's own), with the base and with the adapters of one variant of a finished grid, and prints how often the base
reads each prompt right, and each run's prior preservation on the grid's draw beside that over all the draws.

    python benchmarks/prior_floor.py --grid ablation-full [--variant default] [--draws 16]

Measured at commit 7967bd4 (rows made by `python benchmarks/ablation.py --variants coarse reg-any spatial-kv
--no-composition`, each run as in docs/ablation.md's grid; 11 to 29 min a variant on the 2-core machine, beside other
work): the base reads seed 0's 16 prompts right in 82.8% of its clips over 16 draws (87.5% on the grid's draw), seed
1's in 90.2% (81.2%); 9 of the 32 prompts in 38 to 62% of draws. Prior preservation, in points:

| variant | grid's draw | over 16 draws |
|---|---:|---:|
| default | -9.4 | -15.2 |
| coarse | -4.4 | -10.9 |
| reg-any | -6.2 | -11.4 |
| spatial-kv | -9.4 | -9.7 |
| motion (the paper's layers; at commit d2bdf28) | -11.2 | -9.3 |

The grid's one draw reads every row kinder but the paper's layers, which lose as little as the k/v alone; over the draws
the k/v alone, which learns no motion, keeps more of the base's motions than the default in 9 of 10 runs
(docs/ablation.md, "How far to trust a number").
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from motion_adapter.toyworld.ablation import run_folder
from motion_adapter.toyworld.evaluate import evaluate
from motion_adapter.toyworld.runs import prior_clip_seed, sample_for_scoring, shipped_pipe_with
from motion_adapter.toyworld.sampling import quality_prompts


def readings(pipe, prompts: list[str], seed: int, draws: int) -> np.ndarray:
    """(draws, prompts): 1 where the motion asked for is read off the clip. Draw 0 is the grid's."""
    rows = []
    for k in range(draws):
        clips = sample_for_scoring(pipe, prompts, seed=prior_clip_seed(seed) + k * len(prompts))
        rows.append([clip.motion_ok for clip in evaluate(clips, prompts).clips])
    return np.array(rows, dtype=float)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True, help="a finished grid's folder (its runs.json)")
    parser.add_argument("--variant", default="default", help="whose adapters to sample (default: default)")
    parser.add_argument("--draws", type=int, default=16, help="starting noises per prompt (default: 16)")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    started = time.time()
    results = json.loads((args.grid / "runs.json").read_text())
    count = results["settings"]["prior_prompts"]
    runs = [run for run in results["runs"] if run["variant"] == args.variant]
    if not runs:
        raise SystemExit(f"{args.grid / 'runs.json'} has no run of variant {args.variant!r}")
    prompts = {seed: quality_prompts(count, seed=seed) for seed in sorted({run["seed"] for run in runs})}
    base = {}
    for seed in prompts:
        base[seed] = readings(shipped_pipe_with(), prompts[seed], seed, args.draws)
        print(f"base, seed {seed}: {100 * base[seed][0].mean():.1f}% on the grid's draw, "
              f"{100 * base[seed].mean():.1f}% over {args.draws} draws; read right in under 90% of the draws:")
        for prompt, rate in zip(prompts[seed], base[seed].mean(0)):
            if rate < 0.9:
                print(f"  {100 * rate:5.1f}%  {prompt}")
    print(f"\n{args.variant}: prior preservation in points | motion | seed | grid's draw | over {args.draws} draws |")
    on_grid_draw, over_draws = [], []
    for run in runs:
        seed = run["seed"]
        adapter = run_folder(args.grid, args.variant, run["motion"], seed) / "adapter"
        adapted = readings(shipped_pipe_with(adapter), prompts[seed], seed, args.draws)
        on_grid_draw.append(100 * (adapted[0].mean() - base[seed][0].mean()))
        over_draws.append(100 * (adapted.mean() - base[seed].mean()))
        print(f"| {run['motion']} | {seed} | {on_grid_draw[-1]:.1f} | {over_draws[-1]:.1f} |")
        if abs(on_grid_draw[-1] - run["prior_preservation"]) > 1e-6:  # another base, or sampling changed since
            print(f"  (the grid recorded {run['prior_preservation']:.1f} for this run)")
    print(f"| mean | | {np.mean(on_grid_draw):.1f} | {np.mean(over_draws):.1f} |")
    print(f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
