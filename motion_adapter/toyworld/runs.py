"""What every recorded run of the ablation grid and of its composition study shares: the settings, the record a run
kept (read back when the grid is run again into the same folder), and how its clips are sampled and pictured."""

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from ..pipeline import fuse_motion_adapters, load_motion_adapter
from ..video import save_grid
from .demo import GUIDANCE
from .model import load_pipeline
from .sampling import sample_clips

SAMPLES_PER_PROMPT = 2  # each new-appearance prompt is generated with this many seeds
# DDIM steps of every scored clip, half the demo's 20: the base reads its own motions alike at 8 to 20 steps, and
# adapters score the same within a clip's noise (docs/ablation-history.md, "Scoring steps"); sampling is
# a quarter of a run's cost at 20.
SCORING_STEPS = 10


@dataclass
class Settings:
    """What every run of one ablation shares (sent to the worker processes with each job)."""

    out: Path
    steps: int
    prompts_per_run: int
    prior_prompts: int
    pipe_factory: Callable
    base: str = ""  # `weights_digest` of the base's unet, text encoder and vae
    base_prior: dict = field(default_factory=dict)  # seed -> the base's EvaluationReport on the prior prompts


# ---------------------------------------------------------------- records


def recorded(path: Path, identity: dict, run: Callable[[], dict]) -> dict:
    """`run()`'s record, kept in `path`; read back instead when an earlier call made it with the same identity.

    A grid of two hours that stops (a crash, a closed laptop) resumes where it stopped when run again into the
    same folder; a run whose settings changed is made again.
    """
    identity = json.loads(json.dumps(identity))  # as it reads back from JSON (tuples become lists)
    if path.is_file():
        record = json.loads(path.read_text())
        if record.pop("identity", None) == identity:
            return record
    record = json.loads(json.dumps(run()))  # the same types as a record read back
    write_json(path, {**record, "identity": identity})
    return record


def files_digest(paths: Sequence[Path]) -> str:
    """A short hash of files' bytes: recorded runs and composition studies are reused only on the same example
    clips and subject images (the world may have changed how it draws a motion or a shape since)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- sampling


def fresh_pipe(s: Settings):
    """A base pipeline no adapter has touched, its progress bars off (a grid's runs print their own)."""
    pipe = s.pipe_factory()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shipped_pipe_with(adapter=None):
    """The shipped base, its progress bars off, with an adapter folder loaded and fused as the grid scores it (the
    base's cost, the same clips up to rounding); for the benchmarks that sample a finished grid's adapters again."""
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if adapter is not None:
        load_motion_adapter(pipe, adapter)
        fuse_motion_adapters(pipe)
    return pipe


def sample_for_scoring(pipe, prompts: list[str], *, seed: int) -> list[np.ndarray]:
    """Clips with the demo's guidance and SCORING_STEPS steps, batched; clip i is seeded `seed + i`."""
    return sample_clips(pipe, prompts, seed=seed, num_inference_steps=SCORING_STEPS, guidance_scale=GUIDANCE)


def appearance_clip_seed(seed: int) -> int:
    """The first clip seed of a run's new-appearance (or composed) clips: clip i is seeded this + i."""
    return seed * 1000


def prior_clip_seed(seed: int) -> int:
    """The first clip seed of a run's prior-preservation clips, apart from its new-appearance ones."""
    return appearance_clip_seed(seed) + 500


def save_readings(path: Path, clips, report, count: int = 8) -> None:
    """The first clips as rows of frames, each labelled with the motion, colour and shape read off it."""
    labels = [f"{c.found_motion} {c.found_color} {c.found_shape}" for c in report.clips]
    save_grid(path, clips[:count], labels=labels[:count])


# ---------------------------------------------------------------- files


def write_text(path: Path, text: str) -> None:
    """Write a grid output whole or not at all (a grid stopped midway leaves no half-written record)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1))
