"""The paper's ablation on the tiny world: `run_ablation` customizes the shipped base under each setting of a grid.

The grid (`GRID`) is a table of variants, one factor changed at a time around the default, which is the demo's recipe
(`demo.train_config()`, six example clips, real regularization clips of the motions nearest the taught one): the layers
customized, the timestep sampling, the regularization, the tuning (LoRA ranks, a full delta and its rank-16 compression,
each with a learning rate picked by a small sweep), and the number of example clips. Every variant is trained on every
held-out motion and several seeds, each run on a fresh base, and scored by the analytic evaluator on appearances the
examples never showed: motion accuracy, copy score, prior preservation (motion accuracy on pretraining-motion prompts
with the adapter, minus the base's), adapter size and training time. Then the composition study (`composition`): a
subject learned from still images with the default runs' motion.

Outputs in output_dir: runs.json (every run with each clip's reading, prior clips included, the sweeps, the
composition), table.md (the paper's layout: accuracy / copy per variant, grouped by factor; then each variant's accuracy
per motion, per run and by the shape asked for) and plot.png (one panel per factor), both made by `ablation_report`;
each run's folder keeps its examples, adapter, a picture of its first samples with what the evaluator read off them, and
its record (run.json; composition.json for a composition study). Run again into the same folder, the grid reads back
every run and study recorded there with the same base, settings and example clips and makes only the others: an
interrupted grid resumes. Jobs start as soon as what they need is done (`_run_jobs`): the sweeps and the composition
first, the compressed adapters' short scorings last.

Cost, measured on the 2-core development machine with two workers (one torch thread each): the full grid (five motions,
two seeds, 300 steps: 216 trainings, 10 compressed scorings, 2 composition studies) made from nothing at commit 291ba23
took 6,217 s (1 h 43 min 37 s, one command, nothing else running), on a day the machine trained 1.5 to 1.9 times as fast
as on the day of an earlier grid's timing (bb1cb7e: 8,308 s for 188 trainings); such a day would make it about 2 h 45
min. Made again at 5f6fde7 on another day: 6,728 s, every clip read the same. A run is 27 to 59 s of training beside
another and about 12 s for its clips and scoring. 200 steps learn too little (73.8% for the rank-8 recipe, ten runs);
the history of these figures is in docs/ablation.md and docs/ablation-history.md.
`QUICK` (five variants on the bounce, one seed, 200 steps, one composition study) took 2 min 46 s with two workers
at commit 291ba23, nothing else running (2 min 33 s at 320a11a, with 8 prior prompts a run; 2 min 27 s at f1f6e97,
before the subject's 1.5 times as many steps; 2 min 45 s at 2d91209 with the rank-8 recipe; 3 min 56 s at d92ba6f).
"""

import dataclasses
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from ..files import atomic_write_bytes
from ..format import read_info
from ..pipeline import fuse_motion_adapters, load_motion_adapter
from ..training.config import TrainConfig, rate_for_rank
from ..training.data import read_metadata
from ..training.loop import train_motion
from .ablation_report import format_table, plot, summarize, sweep_means
from .composition import composition_seed, composition_summary
from .demo import (
    EXAMPLE_APPEARANCES,
    GUIDANCE,
    NEW_APPEARANCES,
    TOKEN,
    train_config,
    write_examples,
    write_regularization,
)
from .evaluate import evaluate, prior_preservation
from .model import load_pipeline, weights_digest
from .runs import (
    SAMPLES_PER_PROMPT,
    SCORING_STEPS,
    Settings,
    appearance_clip_seed,
    files_digest,
    fresh_pipe,
    prior_clip_seed,
    recorded,
    sample_for_scoring,
    save_readings,
    write_json,
    write_text,
)
from .sampling import quality_prompts
from .world import COLORS, HELD_OUT_MOTIONS, SHAPES, caption, parse_caption

FULL_RATES = (1e-4, 3e-4, 1e-3)  # a full delta moves every weight: smaller steps
DEFAULT_EXAMPLES = 6  # the demo's: three appearances, two clips each


def lora_rates(rank: int) -> tuple[float, ...]:
    """A LoRA's swept rates: a factor of 3 apart around the recipe's rate times the root of its rank over this one.

    A LoRA's best rate falls with its rank, about as rsLoRA has it: rates suited to rank 16 and 64 read 82 and 85%
    where rank 8's 3e-3 read 77 and 56% (docs/ablation.md, Reading, LoRA; docs/ablation-history.md).
    """
    recipe = train_config()
    centre = rate_for_rank(recipe.lr, recipe.rank, rank)
    return tuple(float(f"{centre * factor:.2g}") for factor in (1 / 3, 1, 3))


@dataclass(frozen=True)
class Variant:
    """One row of the grid: what changes from the default recipe, and how its factor's table labels it.

    The row named "default" appears once per factor (as that factor's reference) and is trained once.
    `label` may name default TrainConfig fields, as "{rank}".
    """

    name: str
    factor: str
    label: str
    overrides: dict = field(default_factory=dict)  # TrainConfig fields
    regularization: str = "nearby"  # real clips of "nearby" pretraining motions, of "any", "generated", or "none"
    examples: int = DEFAULT_EXAMPLES
    learning_rates: tuple[float, ...] = ()  # swept on two motions' first runs (`_sweep_cells`); () keeps the recipe's
    compressed_of: str | None = None  # scored from the compressed adapter that this other variant's runs write

    def recipe(self) -> dict:
        """What this variant's runs depend on, not where the table shows it: the default's row of any factor alike."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("factor", "label")}


GRID = (
    Variant("default", "parameters", "{preset} layers (default)"),
    Variant("motion", "parameters", "temporal + spatial k/v (paper)", {"preset": "motion"}),
    Variant("spatial-kv", "parameters", "spatial cross-attention k/v", {"preset": "spatial-kv"}),
    Variant("appearance", "parameters", "spatial attention (appearance)", {"preset": "appearance"}),
    Variant("all-attention", "parameters", "temporal + all spatial attention", {"preset": "temporal+appearance"}),
    Variant("uniform", "timesteps", "uniform", {"timestep_sampling": "uniform"}),
    Variant("coarse", "timesteps", "coarse (paper)", {"timestep_sampling": "coarse"}),
    Variant("fine", "timesteps", "fine", {"timestep_sampling": "fine"}),
    Variant("default", "timesteps", "{timestep_sampling} (default)"),
    Variant("reg-none", "regularization", "none", regularization="none"),
    Variant("reg-generated", "regularization", "generated clips", regularization="generated"),
    Variant("reg-any", "regularization", "real clips of any motion", regularization="any"),
    Variant("default", "regularization", "real clips of nearby motions, weight {reg_weight} (paper, default)"),
    Variant("reg-weight-0.25", "regularization", "real clips of nearby motions, weight 0.25", {"reg_weight": 0.25}),
    Variant("reg-weight-0.75", "regularization", "real clips of nearby motions, weight 0.75", {"reg_weight": 0.75}),
    Variant("reg-weight-1", "regularization", "real clips of nearby motions, weight 1.0", {"reg_weight": 1.0}),
    Variant("rank-4", "tuning", "LoRA rank 4", {"rank": 4}, learning_rates=lora_rates(4)),
    Variant("rank-8", "tuning", "LoRA rank 8", {"rank": 8}, learning_rates=lora_rates(8)),
    Variant("default", "tuning", "LoRA rank {rank} (default)"),
    Variant("rank-64", "tuning", "LoRA rank 64", {"rank": 64}, learning_rates=lora_rates(64)),
    Variant("full", "tuning", "full delta", {"tuning": "full", "compress_to_rank": 16}, learning_rates=FULL_RATES),
    Variant("full-r16", "tuning", "full delta compressed to rank 16", compressed_of="full"),
    Variant("examples-1", "examples", "1 example clip", examples=1),
    Variant("examples-3", "examples", "3 example clips", examples=3),
    Variant("default", "examples", f"{DEFAULT_EXAMPLES} example clips (default)"),
)
GRID_DEFAULT = next(v for v in GRID if v.name == "default")
FACTORS = tuple(dict.fromkeys(v.factor for v in GRID))

# The full grid and --quick (a subset of its variants, on one motion and seed, with fewer steps); sized from the
# measured cost of a run, see the module docstring. 16 prior prompts, not 8: on 8 one prompt is 12.5 points, and the
# default's ten adapters read -6.25 there against -9.4 on 16 (docs/ablation.md, "How far to trust a number").
FULL = dict(motions=HELD_OUT_MOTIONS, seeds=(0, 1), variants=None, steps=300, prompts_per_run=8, prior_prompts=16)
QUICK = {**FULL, "motions": ("bounce",), "seeds": (0,), "steps": 200,
         "variants": ("default", "motion", "coarse", "reg-none", "examples-1")}  # fmt: skip


def run_ablation(
    output_dir="motion-adapter-ablation",
    *,
    quick: bool = False,
    motions: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
    steps: int | None = None,
    prompts_per_run: int | None = None,
    prior_prompts: int | None = None,
    composition: bool = True,
    workers: int | None = None,
    pipe_factory: Callable | None = None,
) -> dict:
    """Run the ablation grid (and the composition study) into `output_dir`; returns what runs.json holds.

    quick: the reduced grid (`QUICK`) instead of the full one (`FULL`); the other options override either.
    motions: held-out motions to teach; seeds: training seeds (each also seeds the examples and the samples).
    variants: names from `GRID` (each factor they touch also shows its default row); steps: training steps per run.
    prompts_per_run: new-appearance prompts, each sampled SAMPLES_PER_PROMPT times; prior_prompts: pretraining
        prompts for prior preservation.
    workers: processes running jobs side by side, one torch thread each (default: one per CPU core); 1 runs
        everything in this process. pipe_factory: makes a fresh base pipeline (default `load_pipeline`); with
        several workers it must pickle (a module-level function or a functools.partial of one).
    """
    started = time.perf_counter()
    preset = QUICK if quick else FULL
    motions = _listed("motions", motions if motions is not None else preset["motions"])
    seeds = _listed("seeds", seeds if seeds is not None else preset["seeds"])
    grid = select_grid(variants if variants is not None else preset["variants"])
    if not motions or any(motion not in HELD_OUT_MOTIONS for motion in motions):
        raise ValueError(f"the ablation teaches motions the base never saw: some of {', '.join(HELD_OUT_MOTIONS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    s = Settings(
        out=Path(output_dir),
        steps=steps if steps is not None else preset["steps"],
        prompts_per_run=prompts_per_run if prompts_per_run is not None else preset["prompts_per_run"],
        prior_prompts=prior_prompts if prior_prompts is not None else preset["prior_prompts"],
        pipe_factory=pipe_factory or load_pipeline,
    )
    for name in ("steps", "prompts_per_run", "prior_prompts"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(s, name)}")
    new_appearance_prompts(s.prompts_per_run)  # refuses more than the world has, before any work
    base = s.pipe_factory()
    s.base = weights_digest(base.unet, base.text_encoder, base.vae)
    workers = workers or os.cpu_count() or 1
    results = {
        "settings": {"motions": motions, "seeds": seeds, "steps": s.steps, "prompts_per_run": s.prompts_per_run,
                     "samples_per_prompt": SAMPLES_PER_PROMPT, "prior_prompts": s.prior_prompts, "quick": quick,
                     "inference_steps": SCORING_STEPS, "guidance_scale": GUIDANCE, "workers": workers},
        "variants": [dataclasses.asdict(v) for v in grid],
        "base_prior_accuracy": {}, "base_prior_clips": {}, "runs": [], "lr_sweeps": {}, "composition": None,
    }  # fmt: skip
    unique = list({v.name: v for v in grid}.values())
    cells = [(motion, seed) for motion in motions for seed in seeds]
    sweep_runs = len(_sweep_cells(cells))  # a sweep's runs at each rate; those at the chosen rate are grid runs too
    total = len(seeds) + sum(len(cells) + max(len(v.learning_rates) - 1, 0) * sweep_runs for v in unique)
    progress = tqdm(total=total + (len(seeds) if composition else 0), desc="ablation runs", unit="run")
    with _pool(workers, s.out / "logs") as pool:
        jobs = [(_FIRST, partial(_base_prior, s, seed), partial(_keep, s.base_prior, seed)) for seed in seeds]
        _run_jobs(pool, workers, jobs, progress)  # every run's scoring needs the base's
        results["base_prior_accuracy"] = {str(seed): s.base_prior[seed].motion_accuracy for seed in seeds}
        results["base_prior_clips"] = {str(seed): _motions_read(s.base_prior[seed]) for seed in seeds}
        runs = _grid(s, pool, workers, unique, cells, results, progress, composition=composition)
    progress.close()
    results["runs"] = [runs[(v.name, *cell)] for v in unique for cell in cells]
    results["summary"] = summarize(results["runs"])
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_json(s.out / "runs.json", results)
    write_text(s.out / "table.md", format_table(results))
    atomic_write_bytes(s.out / "plot.png", plot(results))
    return results


def select_grid(names: Sequence[str] | None) -> list[Variant]:
    """The rows of GRID for these variant names (all rows for None), with the default's row in each factor shown."""
    if names is None:
        return list(GRID)
    names = _listed("variants", names)
    known = list(dict.fromkeys(v.name for v in GRID))
    unknown = set(names) - set(known)
    if unknown:
        raise ValueError(f"unknown variants {', '.join(sorted(unknown))}; the grid has {', '.join(known)}")
    for v in GRID:
        if v.name in names and v.compressed_of and v.compressed_of not in names:
            raise ValueError(f"{v.name} is scored from the runs of {v.compressed_of}: select {v.compressed_of} too")
    factors = {v.factor for v in GRID if v.name in names and v.name != "default"} or {GRID_DEFAULT.factor}
    return [v for v in GRID if v.factor in factors and (v.name in names or v.name == "default")]


def _listed(option: str, value) -> list:
    """`value` as a list; one string (which would read as its letters) or one number is refused with the fix."""
    if isinstance(value, (str, int)):
        raise ValueError(f"{option}: give a list, such as [{value!r}], not one value")
    return list(value)


# ---------------------------------------------------------------- jobs, in this process or in workers


@contextmanager
def _pool(workers: int, log_dir: Path):
    """A pool of `workers` processes (None for one: jobs then run here). Workers log to log_dir/worker-<pid>.log."""
    if workers == 1:
        yield None
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state forked from this one
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(log_dir,)) as pool:
        yield pool


def _start_worker(log_dir: Path) -> None:
    """One torch thread per worker (the workers share the cores), progress bars and warnings into a log file."""
    import torch

    torch.set_num_threads(1)
    sys.stderr = open(log_dir / f"worker-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115 (the worker's life)


# A job's rank: lower ranks start first. Long jobs that others wait on go first, and the short scorings of
# compressed adapters last, where they fill the gaps left by the last trainings.
_FIRST, _TRAINING, _LAST = 0, 1, 2


def _run_jobs(pool, workers: int, jobs: list[tuple[int, Callable, Callable]], progress) -> None:
    """Run jobs (rank, work, then) here or in the pool, lowest rank first (in order within a rank), at most
    `workers` at a time; `then(result)` runs here when `work` is done and returns the jobs that now can start.

    Jobs are handed out one by one, so the order holds and nothing waits for a whole stage to end.
    """
    waiting, running = list(jobs), {}
    while waiting or running:
        waiting.sort(key=lambda job: job[0])  # stable: a rank's jobs keep their order
        if waiting and pool is None:
            _, work, then = waiting.pop(0)
            waiting += then(work())
            progress.update(1)
        elif waiting and len(running) < workers:
            _, work, then = waiting.pop(0)
            running[pool.submit(work)] = then
        else:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                waiting += running.pop(future)(future.result())
                progress.update(1)


def _grid(s: Settings, pool, workers: int, variants: list[Variant], cells: list[tuple[str, int]], results: dict,
          progress, *, composition: bool) -> dict:  # fmt: skip
    """Every run of the grid, each started as soon as what it needs is done: the learning-rate sweeps (on
    `_sweep_cells`), the other trainings, the scores of the compressed adapters, and the composition study (on the first
    motion's default runs), whose summary goes to results["composition"].

    Returns {(variant, motion, seed): run}.
    """
    runs, swept, sweeps, composed = {}, {}, {}, {}
    first_motion = cells[0][0]  # the composition studies this motion
    sweep_cells = _sweep_cells(cells)

    def train(v: Variant, motion: str, seed: int, rate: float | None = None, folder: Path | None = None):
        return partial(_train_and_score, s, v, motion=motion, seed=seed, learning_rate=rate, folder=folder)

    def ran(run: dict) -> list:
        runs[_key(run)] = run
        after = [(_LAST, partial(_score_compressed, s, v, run), ran)
                 for v in variants if v.compressed_of == run["variant"]]  # fmt: skip
        if composition and run["variant"] == GRID_DEFAULT.name and run["motion"] == first_motion:
            recipe = _config(s, GRID_DEFAULT, seed=run["seed"], learning_rate=None)  # the default run's
            after.append((_FIRST, partial(composition_seed, s, run, recipe), partial(_keep, composed, run["seed"])))
        return after

    def sweep_ran(v: Variant, run: dict) -> list:
        swept.setdefault(v.name, []).append(run)
        if len(swept[v.name]) < len(v.learning_rates) * len(sweep_cells):
            return []
        swept[v.name].sort(key=lambda r: (v.learning_rates.index(r["learning_rate"]), sweep_cells.index(_cell(r))))
        sweeps[v.name] = _sweep_record(swept[v.name], v.learning_rates)
        rate = sweeps[v.name]["chosen"]
        chosen = [job for r in swept[v.name] if r["learning_rate"] == rate for job in ran(r)]  # this variant's runs
        rest = [(_TRAINING, train(v, *cell, rate), ran) for cell in cells if cell not in sweep_cells]
        return chosen + rest

    def sweep(v: Variant, rate: float, motion: str, seed: int):
        return train(v, motion, seed, rate, folder=s.out / "sweeps" / v.name / f"lr-{rate:g}" / f"{motion}-s{seed}")

    jobs = [(_FIRST, sweep(v, rate, *cell), partial(sweep_ran, v))
            for v in variants for rate in v.learning_rates for cell in sweep_cells]  # fmt: skip
    jobs += [(_TRAINING, train(v, motion, seed), ran)
             for v in variants if not v.learning_rates and not v.compressed_of for motion, seed in cells]  # fmt: skip
    _run_jobs(pool, workers, jobs, progress)
    results["lr_sweeps"] = {v.name: sweeps[v.name] for v in variants if v.learning_rates}
    if composition:
        per_seed = [composed[seed] for motion, seed in cells if motion == first_motion]
        results["composition"] = composition_summary(first_motion, per_seed)
    return runs


def _keep(into: dict, key, value) -> list:
    """A job's `then` that keeps its result under `key` and starts nothing more."""
    into[key] = value
    return []


def _key(run: dict) -> tuple[str, str, int]:
    return run["variant"], run["motion"], run["seed"]


def _cell(run: dict) -> tuple[str, int]:
    return run["motion"], run["seed"]


def _sweep_cells(cells: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Where the learning rates are swept: the first cell, and the first of another motion where there is one.

    One cell chose badly: the bounce is learned at rates where the other motions are not, and one clip more or less
    on it turned the choice (docs/ablation.md, "How the sweep came to read two motions").
    """
    other = [cell for cell in cells if cell[0] != cells[0][0]]
    return cells[:1] + other[:1]


def _sweep_record(runs: list[dict], rates: Sequence[float]) -> dict:
    """A sweep as runs.json keeps it: its cells, each rate's runs (in the order of its cells), and the chosen rate:
    the one whose runs read most accurately on average; ties go to the lower mean copy score, then to the earlier rate.
    """
    keys = ("motion_accuracy", "copy_score", "prior_preservation", "final_loss")
    entries = [{"learning_rate": rate, "runs": [{"motion": r["motion"], "seed": r["seed"], **{k: r[k] for k in keys}}
                                                for r in runs if r["learning_rate"] == rate]}
               for rate in rates]  # fmt: skip

    def score(entry: dict) -> tuple[float, float]:
        mean = sweep_means(entry["runs"])
        return mean["motion_accuracy"], -mean["copy_score"]

    chosen = max(entries, key=score)["learning_rate"]  # max keeps the first of equals: the earlier rate
    return {"cells": list(dict.fromkeys(_cell(r) for r in runs)), "chosen": chosen, "rates": entries}


def _train_and_score(
    s: Settings, variant: Variant, *, motion: str, seed: int, learning_rate: float | None = None, folder=None
) -> dict:
    """One run (recorded in its folder's run.json): render the examples and regularization, train on a fresh base,
    score the adapter."""
    folder = folder or run_folder(s.out, variant.name, motion, seed)
    config = _config(s, variant, seed=seed, learning_rate=learning_rate)
    examples, appearances = _examples(folder / "examples", motion, seed=seed, count=variant.examples)
    identity = {"base": s.base, "variant": variant.recipe(), "config": dataclasses.asdict(config),
                "motion": motion, "examples": files_digest(examples),
                "prompts_per_run": s.prompts_per_run, "prior_prompts": s.prior_prompts,
                "sampling": [SAMPLES_PER_PROMPT, SCORING_STEPS, GUIDANCE]}  # fmt: skip
    return recorded(folder / "run.json", identity, partial(_train_and_score_now, s, variant, motion, seed, config,
                                                           folder, examples, appearances))  # fmt: skip


def _train_and_score_now(s: Settings, variant: Variant, motion: str, seed: int, config: TrainConfig, folder: Path,
                         examples: list[Path], appearances: list[tuple[str, str]]) -> dict:  # fmt: skip
    started = time.perf_counter()
    reg_data = None
    if variant.regularization != "none":
        near = None if variant.regularization == "any" else motion  # the paper's set: motions like the taught one
        write_regularization(folder / "regularization", seed=seed, near=near)
        if variant.regularization == "generated":  # the nearby clips' captions, clips made by the base itself
            captions = list(read_metadata(folder / "regularization").values())
            config = config.replace(reg_source="generated", reg_prompts=captions)
        else:
            reg_data = folder / "regularization"
    pipe = fresh_pipe(s)
    result = train_motion(pipe, data=examples, token=TOKEN, output_dir=folder / "adapter", reg_data=reg_data,
                          config=config)  # fmt: skip
    scores = _score(s, pipe, motion=motion, seed=seed, appearances=appearances, folder=folder)
    return {
        "variant": variant.name, "factors": _factors(variant), "motion": motion, "seed": seed,
        "learning_rate": config.lr, "regularization": variant.regularization, "num_examples": len(examples),
        "training_appearances": appearances, "config": dataclasses.asdict(config),
        **scores,
        "adapter_bytes": read_info(folder / "adapter").file_bytes, "train_seconds": round(result.seconds, 2),
        "final_loss": result.final_loss, "adapter_dir": str(folder / "adapter"),
        "compressed_dir": str(result.compressed_dir) if result.compressed_dir else None,
        "energy_kept": result.energy_kept, "run_seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip


def _score_compressed(s: Settings, variant: Variant, parent: dict) -> dict:
    """Score the compressed adapter a full-delta run wrote, loaded into a fresh base (recorded beside the run's)."""
    folder = Path(parent["compressed_dir"]).parent
    identity = {"variant": variant.recipe(), "parent": parent}
    return recorded(folder / f"{variant.name}.json", identity, partial(_score_compressed_now, s, variant, parent,
                                                                       folder))  # fmt: skip


def _score_compressed_now(s: Settings, variant: Variant, parent: dict, folder: Path) -> dict:
    started = time.perf_counter()
    pipe = fresh_pipe(s)
    load_motion_adapter(pipe, parent["compressed_dir"], adapter_name=TOKEN)
    scores = _score(s, pipe, motion=parent["motion"], seed=parent["seed"],
                    appearances=parent["training_appearances"], folder=folder, name=variant.name)  # fmt: skip
    return {
        **parent, **scores, "variant": variant.name, "factors": _factors(variant),
        "adapter_bytes": read_info(parent["compressed_dir"]).file_bytes, "adapter_dir": parent["compressed_dir"],
        "compressed_dir": None, "run_seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip


def _factors(variant: Variant) -> list[str]:
    """The factors whose tables show this variant: one, or every factor for the default."""
    return [v.factor for v in GRID if v.name == variant.name]


def _config(s: Settings, variant: Variant, *, seed: int, learning_rate: float | None) -> TrainConfig:
    """The demo's recipe with the run's seed and steps, the variant's changes and the swept rate."""
    rate = {"learning_rate": learning_rate} if learning_rate is not None else {}
    return train_config(**{"seed": seed, "max_train_steps": s.steps, **variant.overrides, **rate})


def _examples(folder: Path, motion: str, *, seed: int, count: int) -> tuple[list[Path], list[tuple[str, str]]]:
    """The first `count` example clips of the demo's set, taken appearance by appearance; and their appearances."""
    per_appearance = math.ceil(count / len(EXAMPLE_APPEARANCES))
    write_examples(folder, motion, seed=seed, per_appearance=per_appearance)
    by_appearance: dict[tuple[str, str], list[str]] = {}
    for file_name, text in read_metadata(folder).items():
        shape, color, _ = parse_caption(text, {TOKEN: motion})
        by_appearance.setdefault((shape, color), []).append(file_name)
    order = [(a, names[k]) for k in range(per_appearance) for a, names in by_appearance.items() if k < len(names)]
    chosen = order[:count]
    return [folder / name for _, name in chosen], list(dict.fromkeys(a for a, _ in chosen))


# ---------------------------------------------------------------- scoring


def new_appearances(count: int) -> list[tuple[str, str]]:
    """`count` (shape, color) pairs that no example shows, the demo's first."""
    shown = set(EXAMPLE_APPEARANCES) | set(NEW_APPEARANCES)
    rest = [(shape, color) for shape in SHAPES for color in COLORS if (shape, color) not in shown]
    pairs = list(NEW_APPEARANCES) + rest
    if count > len(pairs):
        raise ValueError(f"the world has {len(pairs)} appearances the examples never show; ask for at most that many")
    return pairs[:count]


def new_appearance_prompts(count: int) -> list[str]:
    """`count` prompts "a <color> <shape> doing the pll" for appearances no example shows (`new_appearances`)."""
    return [caption(shape, color, token=TOKEN) for shape, color in new_appearances(count)]


def _score(s: Settings, pipe, *, motion: str, seed: int, appearances, folder: Path, name: str = "samples") -> dict:
    """Motion accuracy and copy score on new appearances, prior preservation on pretraining prompts.

    The adapters are fused first: sampling then costs what the base costs, with the same outputs up to rounding.
    """
    base_prior = s.base_prior[seed]
    fuse_motion_adapters(pipe)
    prompts = [p for p in new_appearance_prompts(s.prompts_per_run) for _ in range(SAMPLES_PER_PROMPT)]
    clips = sample_for_scoring(pipe, prompts, seed=appearance_clip_seed(seed))
    report = evaluate(clips, prompts, tokens={TOKEN: motion}, training_appearances=appearances)
    prior_prompts = [c.prompt for c in base_prior.clips]
    prior = evaluate(sample_for_scoring(pipe, prior_prompts, seed=prior_clip_seed(seed)), prior_prompts)
    save_readings(folder / f"{name}.png", clips, report)
    return {
        "motion_accuracy": report.motion_accuracy,
        "copy_score": report.copy_score,
        "appearance_accuracy": report.appearance_accuracy,
        "prior_preservation": prior_preservation(prior, base_prior),
        "prior_clips": _motions_read(prior),
        "clips": [{"prompt": c.prompt, "motion": c.found_motion, "color": c.found_color, "shape": c.found_shape}
                  for c in report.clips],
    }  # fmt: skip


def run_folder(out: Path, variant: str, motion: str, seed: int) -> Path:
    """Where a grid in `out` keeps one run: its examples, its adapter (the "adapter" folder) and run.json."""
    return out / "runs" / variant / f"{motion}-s{seed}"


def _motions_read(report) -> list[dict]:
    """Each prior clip's prompt and the motion read off it: runs.json then shows which prompts a run lost."""
    return [{"prompt": c.prompt, "motion": c.found_motion} for c in report.clips]


def _base_prior(s: Settings, seed: int):
    """The base's report on the prior-preservation prompts of one seed (computed once, used by every run)."""
    prompts = quality_prompts(s.prior_prompts, seed=seed)
    return evaluate(sample_for_scoring(fresh_pipe(s), prompts, seed=prior_clip_seed(seed)), prompts)
