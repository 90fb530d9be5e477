"""The ablation's composition study: a subject ("sks", a star the base never saw, learned from still images) with a
motion ("pll", a default run of the grid), trained apart and loaded together, with and without per-group weights,
against the paper's joint training.

The grid (`ablation`) starts one study per seed of its first motion's default runs; each is recorded in
composition/s<seed>/composition.json under the grid's folder, and `composition_summary` makes runs.json's
"composition".
"""

import dataclasses
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import temporary_sibling
from ..format import read_info
from ..pipeline import fuse_motion_adapters, load_motion_adapter, set_motion_adapters, unfuse_motion_adapters
from ..targets import resolve_targets
from ..training.config import TrainConfig
from ..training.loop import subject_preset, train_subject
from .ablation_report import spread
from .demo import GUIDANCE, TOKEN, write_examples, write_metadata, write_regularization
from .evaluate import evaluate
from .runs import (
    SAMPLES_PER_PROMPT,
    SCORING_STEPS,
    Settings,
    appearance_clip_seed,
    files_digest,
    fresh_pipe,
    recorded,
    sample_for_scoring,
    save_readings,
)
from .world import COLORS, HELD_OUT_SHAPES, render

SUBJECT_TOKEN = "sks"
SUBJECT_SHAPE = HELD_OUT_SHAPES[0]
SUBJECT_CLASS_WORD = "cross"  # the pretraining shape nearest the star (concave): the token's first embedding
SUBJECT_COLORS = ("red", "blue", "green")
# Eight images drew the star in about half the composed clips, sixteen in most, twenty-four fewer (docs/ablation.md)
SUBJECT_IMAGES = 16
# Where the images put the star's centre, as fractions of the canvas: about as far out as the held-out motions take a
# shape (0.25 to 0.75; the spiral's last frames a little further). Placed between 0.4 and 0.6, the star was lost more
# often where the motion took it: 56 against 47% both right on the bounce, 39 against 28% on the zigzag, over four
# seeds (docs/ablation.md, Composition)
SUBJECT_PLACES = (0.25, 0.75)
# The star's sizes in the images, relative to the world's shapes: drawn from 1.0 to 1.3 its points survive in the clips
# more often (both right 72 against 66% on the bounce, 61 against 45% on the zigzag; from 0.8 to 1.2 before, 1.1 to 1.5
# read 50 and 58%)
SUBJECT_SCALES = (1.0, 1.3)
# The subject's steps, times the motion's: half as many again read both right in more clips (66 against 56% on the
# bounce, 45 against 39% on the zigzag, four seeds); twice as many, 61% on the bounce
SUBJECT_STEP_FACTOR = 1.5
SUBJECT_RATE = 1e-3  # composed with the bounce: 56% both right against 28% at the motion's 3e-3 (docs/ablation.md)
# The subject's own sampler: composed with the recipe's cubic bounce adapters, subjects trained on uniform timesteps
# read both right in 69% of clips, fine 53%, coarse 41%, cubic 28% (with coarse adapters: coarse 69%, uniform 53%)
SUBJECT_TIMESTEPS = "uniform"


def composition_seed(s: Settings, default_run: dict, recipe: TrainConfig) -> dict:
    """`_composition_seed_now`, recorded in its folder's composition.json: a grid run again reads it back.

    `recipe` is the config the default run trained with: the joint training's, and the subject's but for its rate,
    timesteps and steps (its layers: `subject_preset`).
    """
    motion, seed = default_run["motion"], default_run["seed"]
    folder = s.out / "composition" / f"s{seed}"
    subject = recipe.replace(learning_rate=SUBJECT_RATE, timestep_sampling=SUBJECT_TIMESTEPS,
                             max_train_steps=round(SUBJECT_STEP_FACTOR * recipe.max_train_steps))  # fmt: skip
    images = _write_subject_images(folder / "subject-images", seed=seed)
    write_examples(folder / "examples", motion, seed=seed)  # the joint training's
    drawn = sorted(images.iterdir()) + sorted((folder / "examples").iterdir())
    identity = {"base": s.base, "default_run": default_run, "prompts_per_run": s.prompts_per_run,
                "sampling": [SAMPLES_PER_PROMPT, SCORING_STEPS, GUIDANCE], "drawn": files_digest(drawn),
                "subject": {"preset": subject_preset(subject), "config": dataclasses.asdict(subject),
                            "images": SUBJECT_IMAGES}}  # fmt: skip
    return recorded(folder / "composition.json", identity,
                    partial(_composition_seed_now, s, default_run, folder, recipe, subject, images))  # fmt: skip


def _composition_seed_now(s: Settings, default_run: dict, folder: Path, recipe: TrainConfig, subject: TrainConfig,
                          images: Path) -> dict:  # fmt: skip
    """Subject "sks" (a star, from still images) with the default run's motion "pll", for that run's seed:
    trained apart and loaded together, then with per-group weights, and trained jointly (the motion's layers and the
    subject's). {method: scores}. Per-group weights keep the subject to its spatial groups and the motion to its
    temporal one; where neither adapter has a group to turn off they are the composed pipeline's, whose scores are
    then reused, not sampled twice."""
    motion, seed = default_run["motion"], default_run["seed"]
    train_subject(fresh_pipe(s), data=images, token=SUBJECT_TOKEN, class_word=SUBJECT_CLASS_WORD,
                  output_dir=folder / SUBJECT_TOKEN, config=subject)  # fmt: skip
    scores = {}
    pipe = fresh_pipe(s)
    load_motion_adapter(pipe, folder / SUBJECT_TOKEN, adapter_name=SUBJECT_TOKEN)
    load_motion_adapter(pipe, default_run["adapter_dir"], adapter_name=TOKEN)
    scores["separate, composed"] = _score_composition(pipe, motion, seed, s.prompts_per_run, folder / "composed.png")
    weights = [_weight_on(pipe, folder / SUBJECT_TOKEN, temporal=False),
               _weight_on(pipe, default_run["adapter_dir"], temporal=True)]  # fmt: skip
    if weights == [1.0, 1.0]:
        scores["separate, per-group weights"] = scores["separate, composed"]
    else:
        unfuse_motion_adapters(pipe)
        set_motion_adapters(pipe, [SUBJECT_TOKEN, TOKEN], weights=weights)
        scores["separate, per-group weights"] = _score_composition(pipe, motion, seed, s.prompts_per_run,
                                                                  folder / "per-group-weights.png")  # fmt: skip

    write_regularization(folder / "regularization", seed=seed, near=motion)
    joint = recipe.replace(max_train_steps=2 * s.steps, motion_first_steps=s.steps // 2)
    pipe = fresh_pipe(s)
    train_subject(pipe, data=images, token=SUBJECT_TOKEN, class_word=SUBJECT_CLASS_WORD, output_dir=folder / "joint",
                  config=joint, preset=f"{recipe.preset}+appearance", motion_data=folder / "examples",
                  motion_token=TOKEN, reg_data=folder / "regularization")  # fmt: skip
    scores["joint"] = _score_composition(pipe, motion, seed, s.prompts_per_run, folder / "joint.png")
    return scores


def composition_summary(motion: str, per_seed: list[dict]) -> dict:
    """The composition's runs per method, with mean and spread over seeds."""
    methods = {name: [scores[name] for scores in per_seed] for name in per_seed[0]}
    return {
        "motion": motion, "subject": SUBJECT_SHAPE, "subject_token": SUBJECT_TOKEN, "motion_token": TOKEN,
        "class_word": SUBJECT_CLASS_WORD,
        "methods": {name: {"runs": runs, **spread(runs, ("shape_accuracy", "motion_accuracy", "both"))}
                    for name, runs in methods.items()},
    }  # fmt: skip


def _write_subject_images(folder: Path, *, seed: int) -> Path:
    """Still PNG frames of the subject shape in several colours, positions, sizes and angles, captioned "a red sks"."""
    rng = np.random.default_rng([seed, 7])
    entries = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(SUBJECT_IMAGES):
        color = SUBJECT_COLORS[i % len(SUBJECT_COLORS)]
        pose = (*rng.uniform(*SUBJECT_PLACES, 2), rng.uniform(*SUBJECT_SCALES), rng.uniform(0.0, 360.0))
        frame = render(SUBJECT_SHAPE, color, lambda u: pose, seed=seed * 100 + i, num_frames=2)[0]
        name = f"{SUBJECT_SHAPE}-{i}.png"
        with temporary_sibling(folder / name) as tmp:
            Image.fromarray(frame).save(tmp)
        entries.append({"file_name": name, "text": f"a {color} {SUBJECT_TOKEN}"})
    write_metadata(folder, entries)
    return folder


def _weight_on(pipe, adapter_dir, *, temporal: bool) -> float | dict[str, float]:
    """A per-group weight that keeps an adapter to its temporal group (temporal=True) or to its spatial groups."""
    groups = resolve_targets(pipe, read_info(adapter_dir).preset).groups
    off = {group: 0.0 for group in groups if (group == "temporal") != temporal}
    return off or 1.0


def _score_composition(pipe, motion: str, seed: int, count: int, picture: Path) -> dict:
    """Shape (the subject's) and motion read off "a <color> sks doing the pll" clips, with the adapters fused;
    the first clips with what was read off them go to `picture`."""
    fuse_motion_adapters(pipe)
    subjects = [SUBJECT_TOKEN] + [f"{color} {SUBJECT_TOKEN}" for color in COLORS]
    prompts = [f"a {subjects[i % len(subjects)]} doing the {TOKEN}" for i in range(count)]
    prompts = [p for p in prompts for _ in range(SAMPLES_PER_PROMPT)]
    clips = sample_for_scoring(pipe, prompts, seed=appearance_clip_seed(seed))
    report = evaluate(clips, prompts, tokens={TOKEN: motion, SUBJECT_TOKEN: SUBJECT_SHAPE})
    save_readings(picture, clips, report)
    return {
        "seed": seed,
        "shape_accuracy": float(np.mean([c.shape_ok for c in report.clips])),
        "motion_accuracy": report.motion_accuracy,
        "both": float(np.mean([bool(c.shape_ok and c.motion_ok) for c in report.clips])),
        "clips": [{"prompt": c.prompt, "motion": c.found_motion, "color": c.found_color, "shape": c.found_shape}
                  for c in report.clips],
    }  # fmt: skip
