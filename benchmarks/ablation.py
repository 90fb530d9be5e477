"""The paper's ablation on the tiny world: `motion-adapter toyworld ablate`, the same options, run from a checkout.

runs.json, table.md, plot.png in --out. The full grid took 2 h 18 min 28 s on 2 CPU cores, made from nothing at commit
bb1cb7e; its sweeps read two motions since d26aecc, about 6 minutes more, and the row reg-nearby came at 534a14b,
about 8 more (docs/ablation.md); --quick 3 min 56 s at commit d92ba6f.

    python benchmarks/ablation.py [--quick] [--out DIR] [--base PIPELINE_DIR] [--motions bounce orbit ...]
        [--seeds 0 1 ...] [--variants default motion ...] [--steps N] [--prompts N] [--prior-prompts N]
        [--no-composition] [--workers N]

The grid of docs/ablation.md was made with the bounce first (the learning-rate sweeps read the first two motions and
the composition study the first; without --motions the grid starts with the zigzag):

    python benchmarks/ablation.py --motions bounce orbit zigzag spiral square_path --seeds 0 1 --out ablation-full
"""

import sys

from motion_adapter.cli import main

if __name__ == "__main__":
    sys.exit(main(["toyworld", "ablate", *sys.argv[1:]]))
