"""The paper's ablation on the tiny world: `motion-adapter toyworld ablate`, the same options, run from a checkout.

runs.json, table.md, plot.png in --out. The full grid took 1 h 36 min 22 s on 2 CPU cores, made from nothing at commit
48d2396 on a fast day of the machine (about 2 h 30 min on a slow one; docs/ablation.md); --quick 2 min 33 s at commit
320a11a.

    python benchmarks/ablation.py [--quick] [--out DIR] [--base PIPELINE_DIR] [--motions bounce orbit ...]
        [--seeds 0 1 ...] [--variants default motion ...] [--steps N] [--prompts N] [--prior-prompts N]
        [--no-composition] [--workers N]

The grid of docs/ablation.md (two commands: the second reads the first's runs back), and its composition study on the
bounce over four seeds (in a copy of the grid's folder, whose composition records it replaces, it reads the bounce runs
of seeds 0 and 1 back):

    python benchmarks/ablation.py --variants reg-weight-0.75 reg-weight-1 --no-composition --out ablation-full
    python benchmarks/ablation.py --out ablation-full
    cp -r ablation-full ablation-bounce
    python benchmarks/ablation.py --motions bounce --seeds 0 1 2 3 --variants default --out ablation-bounce
"""

import sys

from motion_adapter.cli import main

if __name__ == "__main__":
    sys.exit(main(["toyworld", "ablate", *sys.argv[1:]]))
