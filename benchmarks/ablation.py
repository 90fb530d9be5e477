"""The paper's ablation on the tiny world (`motion_adapter.toyworld.ablation.run_ablation`): runs.json, table.md,
plot.png in --out. The full grid took 2 h 18 min 28 s on 2 CPU cores, made from nothing at commit bb1cb7e, and its
sweeps read two motions since d26aecc, about 6 minutes more (docs/ablation.md); --quick 3 min 56 s at commit d92ba6f.

    python benchmarks/ablation.py [--quick] [--out DIR] [--base PIPELINE_DIR] [--motions bounce orbit ...]
        [--seeds 0 1 ...] [--variants default motion ...] [--steps N] [--prompts N] [--prior-prompts N]
        [--no-composition] [--workers N]

The grid of docs/ablation.md was made with the bounce first (the learning-rate sweeps read the first two motions and
the composition study the first; without --motions the grid starts with the zigzag):

    python benchmarks/ablation.py --motions bounce orbit zigzag spiral square_path --seeds 0 1 --out ablation-full
"""

import argparse
import functools

import torch

from motion_adapter.toyworld.ablation import GRID, run_ablation
from motion_adapter.toyworld.ablation_report import format_table
from motion_adapter.toyworld.model import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="motion-adapter-ablation", help="output folder")
    parser.add_argument("--quick", action="store_true", help="the reduced grid")
    parser.add_argument("--base", default=None, help="a pipeline folder of the tiny world (default: the shipped base)")
    parser.add_argument("--motions", nargs="+", default=None, help="held-out motions (default: the grid's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default: the grid's)")
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted({v.name for v in GRID}))
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the grid's)")
    parser.add_argument("--prompts", type=int, default=None, help="new-appearance prompts per run")
    parser.add_argument("--prior-prompts", type=int, default=None, help="pretraining prompts for prior preservation")
    parser.add_argument("--no-composition", action="store_true", help="skip the subject + motion composition")
    parser.add_argument("--workers", type=int, default=None, help="processes side by side (default: one per core)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # tiny models gain nothing from threads on a busy 2-core machine
    results = run_ablation(
        args.out, quick=args.quick, motions=args.motions, seeds=args.seeds, variants=args.variants, steps=args.steps,
        prompts_per_run=args.prompts, prior_prompts=args.prior_prompts, composition=not args.no_composition,
        workers=args.workers,
        pipe_factory=functools.partial(load_pipeline, args.base) if args.base else None,
    )  # fmt: skip
    print(format_table(results))
    print(f"wrote {args.out}/: runs.json, table.md, plot.png ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
