"""The paper's ablation on the tiny world: `motion-adapter toyworld ablate`, the same options, run from a checkout.

runs.json, table.md, plot.png in --out. The full grid took 1 h 43 min 37 s on 2 CPU cores, made from nothing at commit
291ba23 on a fast day of the machine, and 1 h 52 min 8 s at 5f6fde7 on another (about 2 h 45 min on a slow one;
docs/ablation.md); --quick 2 min 46 s at commit 291ba23.

    python benchmarks/ablation.py [--quick] [--out DIR] [--base PIPELINE_DIR] [--motions bounce orbit ...]
        [--seeds 0 1 ...] [--variants default motion ...] [--steps N] [--prompts N] [--prior-prompts N]
        [--no-composition] [--workers N]

The grid of docs/ablation.md, and its composition studies over four seeds of three motions (each in its own folder;
docs/ablation.md, Composition):

    python benchmarks/ablation.py --out ablation-full
    python benchmarks/ablation.py --motions bounce --seeds 0 1 2 3 --variants default --out ablation-bounce
    python benchmarks/ablation.py --motions zigzag --seeds 0 1 2 3 --variants default --out ablation-zigzag
    python benchmarks/ablation.py --motions orbit --seeds 0 1 2 3 --variants default --out ablation-orbit
"""

import sys

from motion_adapter.cli import main

if __name__ == "__main__":
    sys.exit(main(["toyworld", "ablate", *sys.argv[1:]]))
