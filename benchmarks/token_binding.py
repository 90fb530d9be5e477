"""What a grid's adapters tie their motion to: the token, any unknown word, or every prompt.

Each run of a finished grid is scored on its new-appearance prompts ("a yellow triangle doing the pll", as the grid
scores it) and on the same prompts and starting noises worded two other ways: another unknown word in the token's place
("a yellow triangle doing the qrv") and a motion the base knows ("a yellow triangle standing still"). It prints, per
run, the share of clips read as the taught motion in each wording and the share of "standing still" clips read still;
the base, with no adapter, beside them.

    python benchmarks/token_binding.py --grid ablation-full [--variants default motion] [--word qrv]

Measured by this script as first committed (280 s on the 2-core machine) on the grid's default and paper's-layers
rows, made at commit 4b0e61a by `python benchmarks/ablation.py --seeds 0 1 --variants default motion
--no-composition --prior-prompts 16` (every clip as in docs/ablation.md's grid), 16 clips a run and wording:

| adapters | token: its motion | other word: the motion | standing still: still | standing still: the motion |
|---|---:|---:|---:|---:|
| base (seeds 0, 1) | 0.0 | 0.0 | 100.0 | 0.0 |
| default (temporal layers) | 87.5 | 24.4 | 45.0 | 36.2 |
| motion (the paper's layers) | 68.8 | 43.1 | 85.6 | 5.0 |

The temporal layers never see the prompt, and their adapter moves a still subject in 55% of the clips; the paper's
cross-attention keys and values keep it still in 86% (ahead in 9 of 10 runs, 1 even), though they answer another
unknown word more often (docs/ablation.md, "What the motion is tied to").
"""

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from motion_adapter.toyworld.ablation import new_appearances, run_folder
from motion_adapter.toyworld.demo import TOKEN
from motion_adapter.toyworld.evaluate import classify
from motion_adapter.toyworld.runs import (
    SAMPLES_PER_PROMPT,
    appearance_clip_seed,
    sample_for_scoring,
    shipped_pipe_with,
)
from motion_adapter.toyworld.world import caption


def wordings(count: int, word: str) -> dict[str, list[str]]:
    """The grid's new-appearance prompts (each SAMPLES_PER_PROMPT times), with the token, another word, or still."""
    makers = {
        "token": lambda shape, color: caption(shape, color, token=TOKEN),
        "word": lambda shape, color: caption(shape, color, token=word),
        "still": lambda shape, color: caption(shape, color, "still"),
    }
    pairs = [pair for pair in new_appearances(count) for _ in range(SAMPLES_PER_PROMPT)]
    return {name: [make(shape, color) for shape, color in pairs] for name, make in makers.items()}


def read(pipe, prompts: dict[str, list[str]], seed: int) -> dict[str, list[str | None]]:
    """The motion read off each clip, per wording; every wording from the grid's starting noises of that seed."""
    return {
        name: [classify(clip)["motion"] for clip in sample_for_scoring(pipe, texts, seed=appearance_clip_seed(seed))]
        for name, texts in prompts.items()
    }


def shares(found: dict[str, list[str | None]], motion: str) -> list[float]:
    """In percent: the taught motion with the token, with the other word, "still" kept, the motion in its place."""

    def share(name: str, asked: str) -> float:
        return 100 * float(np.mean([found_motion == asked for found_motion in found[name]]))

    return [share("token", motion), share("word", motion), share("still", "still"), share("still", motion)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True, help="a finished grid's folder (its runs.json)")
    parser.add_argument("--variants", nargs="+", default=["default", "motion"], help="whose adapters to sample")
    parser.add_argument("--word", default="qrv", help="the unknown word put in the token's place (default: qrv)")
    args = parser.parse_args(argv)
    if args.word == TOKEN:
        parser.error(f"--word must differ from the token {TOKEN!r}")
    started = time.time()
    results = json.loads((args.grid / "runs.json").read_text())
    prompts = wordings(results["settings"]["prompts_per_run"], args.word)
    header = f"| motion | seed | token: its motion | {args.word}: the motion | still: still | still: the motion |"
    runs = [run for run in results["runs"] if run["variant"] in args.variants]
    if not runs:
        raise SystemExit(f"{args.grid / 'runs.json'} has no run of {', '.join(args.variants)}")
    for seed in sorted({run["seed"] for run in runs}):
        found = read(shipped_pipe_with(), prompts, seed)
        print(f"base, seed {seed}, motions read: " + "; ".join(
            f"{name} {dict(Counter(found[name]).most_common())}" for name in found))  # fmt: skip
    for variant in args.variants:
        print(f"\n{variant}\n{header}\n|---|---:|---:|---:|---:|---:|")
        rows = []
        for run in (run for run in runs if run["variant"] == variant):
            adapter = run_folder(args.grid, variant, run["motion"], run["seed"]) / "adapter"
            rows.append(shares(read(shipped_pipe_with(adapter), prompts, run["seed"]), run["motion"]))
            print(f"| {run['motion']} | {run['seed']} | " + " | ".join(f"{value:.1f}" for value in rows[-1]) + " |")
            if abs(rows[-1][0] - 100 * run["motion_accuracy"]) > 1e-6:  # another base, or sampling changed since
                print(f"  (the grid recorded {100 * run['motion_accuracy']:.1f} for this run)")
        print("| mean | | " + " | ".join(f"{value:.1f}" for value in np.mean(rows, axis=0)) + " |")
    print(f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
