"""TrainConfig: every training setting, with its help text and its check, in one dataclass.

The command line builds its flags from these fields (`motion-adapter train --help` prints the help texts), and a
TOML file can hold any subset of them. Defaults are the paper's recipe, except where this project measured better.
"""

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import STORAGE_DTYPES
from .timesteps import MODES as TIMESTEP_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TUNINGS = ("lora", "full")
REG_SOURCES = ("real", "generated")
LATENT_CACHES = ("memory", "disk", "off")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_LEARNING_RATES = {"lora": 1e-4, "full": 5e-6}  # full: the paper's; LoRA needs a far larger step
DEFAULT_LORA_RATE_RANK = 16  # the rank DEFAULT_LEARNING_RATES["lora"] is for; other ranks scale it (`rate_for_rank`)


def _field(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help}, **kwargs)


def rate_for_rank(rate: float, rank_of_rate: int, rank: int) -> float:
    """A LoRA learning rate good at `rank_of_rate`, carried to `rank`: times the root of their ratio.

    A LoRA's good rate falls with its rank about as rsLoRA's analysis has it (at alpha = rank): on the tiny world,
    3e-3 times the root of 8 / rank brought ranks 8, 16 and 64 to the full delta's accuracy, where 3e-3 for all had
    rank 64 at 56% (docs/ablation.md, Reading, LoRA; docs/ablation-history.md).
    """
    return rate * math.sqrt(rank_of_rate / rank)


def _fits(kind, value) -> bool:
    """Whether `value` is of the declared type `kind`: an int passes for a float, a bool never for a number, a list
    or tuple of the item type for a list."""
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and all(_fits(item, v) for v in value)
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


def _check_types(values: dict, where: str) -> None:
    """Raise a ValueError naming the first of `values` (field name -> value) that its TrainConfig field's declared
    type refuses, with the value and the type expected."""
    for item in dataclasses.fields(TrainConfig):
        if item.name not in values:
            continue
        value = values[item.name]
        kinds = typing.get_args(item.type) if isinstance(item.type, types.UnionType) else (item.type,)
        if any(_fits(kind, value) for kind in kinds):
            continue
        expected = " or ".join("None" if k is type(None) else k.__name__ if isinstance(k, type) else str(k)
                               for k in kinds)  # int or None, list[str] or None
        if isinstance(value, str) and any(typing.get_origin(k) is list for k in kinds):
            raise ValueError(f"{where}: {item.name} must be {expected}, not the str {value!r}: give a list of "
                             f"prompts, e.g. [{value!r}]")
        raise ValueError(f"{where}: {item.name} must be {expected}, not {value!r} ({type(value).__name__})")


@dataclass
class TrainConfig:
    """Settings of one customization run (motion or subject)."""

    max_train_steps: int = _field(400, "optimizer steps to train (the paper: 3000 of full tuning at 5e-6; a LoRA's "
                                  "rate is 20 times that; the tiny world's recipe learns in 300 to 500)")
    learning_rate: float | None = _field(None, "AdamW learning rate; None picks the tuning's default "
                                         "(lora 1e-4 at rank 16, times the root of 16 / rank; full 5e-6)")
    preset: str = _field("motion", "layers to customize: motion, temporal, spatial-kv, appearance, subject, a+b, "
                         "or a regex (train_subject: its own preset= argument)")
    tuning: str = _field("lora", "lora: low-rank adapter; full: a full delta of the selected weight matrices "
                         "(their biases and the norms stay, as an adapter file holds no biases)")
    rank: int = _field(16, "LoRA rank")
    alpha: float | None = _field(None, "LoRA alpha; None means alpha = rank (scale 1)")
    dropout: float = _field(0.0, "LoRA dropout")
    compress_to_rank: int | None = _field(None, "with tuning=full: also save the delta compressed to this LoRA "
                                          "rank (SVD)")
    timestep_sampling: str = _field("coarse", "uniform, coarse (the paper's: more high-noise steps), fine, cubic")
    timestep_alpha: float = _field(0.5, "skew of the coarse / fine samplers")
    reg_weight: float = _field(0.5, "weight lambda of the regularization clip's loss")
    reg_source: str = _field("real", "real: clips from reg_data; generated: clips the base model makes "
                             "from reg_prompts")
    reg_prompts: list[str] | None = _field(None, "prompts for reg_source=generated")
    num_reg_generated: int = _field(8, "how many clips to generate for reg_source=generated")
    num_frames: int = _field(16, "frames per training window")
    height: int = _field(384, "training height in pixels")
    width: int = _field(384, "training width in pixels")
    frame_stride: int = _field(1, "keep every n-th frame of a clip")
    fps: float | None = _field(None, "resample clips to this frame rate instead of a stride")
    caption_template: str = _field("a person doing the {token}", "caption for clips without metadata.jsonl or .txt")
    skip_bad_clips: bool = _field(False, "skip unreadable or too short clips with a warning instead of failing")
    bucket: bool = _field(False, "aspect buckets: keep each clip's aspect ratio at about the same pixel count")
    latent_cache: str = _field("memory", "encode clips once: memory, disk (output_dir/latent_cache), or off")
    seed: int = _field(0, "seed of everything random in the run")
    mixed_precision: str = _field("no", "no, fp16 or bf16 (the paper trains in fp16); the pipeline's frozen weights "
                                        "are cast to it in place and stay so, as for inference")
    gradient_checkpointing: bool = _field(False, "recompute activations in the backward pass to save memory (the "
                                          "paper's recipe turns it on; it changes memory, not the result)")
    gradient_accumulation_steps: int = _field(1, "micro-steps per optimizer step")
    warmup_steps: int = _field(0, "linear learning-rate warm-up steps")
    lr_schedule: str = _field("constant", "after the warm-up: constant (the paper's) or cosine "
                              "(decays to 0 at the end)")
    weight_decay: float = _field(0.01, "AdamW weight decay")
    max_grad_norm: float = _field(1.0, "gradient clipping norm")
    use_8bit_adam: str = _field("auto", "auto: 8-bit AdamW when bitsandbytes and a GPU are present (the paper: "
                                "plain AdamW); yes; no")
    checkpoint_every: int = _field(0, "write a resumable checkpoint every n steps (0: never)")
    resume: str | None = _field(None, "resume from a checkpoint folder, or 'latest' in output_dir/checkpoints")
    validation_prompts: list[str] | None = _field(None, "prompts sampled during training into output_dir/samples")
    validation_every: int = _field(0, "sample the validation prompts every n steps (0: only at the end)")
    validation_steps: int = _field(25, "denoising steps of the validation samples")
    guidance_scale: float = _field(9.0, "classifier-free guidance of the validation samples")
    motion_first_steps: int | None = _field(None, "joint subject+motion training: steps on the motion alone before "
                                            "both, the paper's schedule (None: the first half of max_train_steps)")
    bypass_temporal_on_images: bool = _field(True, "subject images skip the temporal layers (the paper's way, for a "
                                             "video model grown from an image model); False runs them through every "
                                             "layer as one-frame clips, for a base trained on video from the start")
    report_to: str | None = _field(None, "accelerate tracker, e.g. tensorboard (logs under output_dir/logs)")
    dtype: str = _field("float16", "storage dtype of the saved adapter: float16, bfloat16, float32")

    def __post_init__(self):
        _check_types(vars(self), "TrainConfig")
        checks = [
            (self.max_train_steps >= 1, "max_train_steps must be >= 1"),
            (self.learning_rate is None or 0 < self.learning_rate < math.inf, "learning_rate must be finite and > 0"),
            (self.tuning in TUNINGS, f"tuning must be one of {', '.join(TUNINGS)}"),
            (self.rank >= 1, "rank must be >= 1"),
            (self.alpha is None or 0 < self.alpha < math.inf,
             "alpha must be finite and > 0 (alpha 0 trains an adapter that changes nothing; None: alpha = rank)"),
            (0.0 <= self.dropout < 1.0, "dropout must lie in [0, 1)"),
            (self.compress_to_rank is None or (self.tuning == "full" and self.compress_to_rank >= 1),
             "compress_to_rank needs tuning='full' and a rank >= 1"),
            (self.timestep_sampling in TIMESTEP_MODES, f"timestep_sampling must be one of {', '.join(TIMESTEP_MODES)}"),
            (0.0 <= self.timestep_alpha < 1.0, "timestep_alpha must lie in [0, 1)"),
            (0.0 <= self.reg_weight < math.inf, "reg_weight must be finite and >= 0"),
            (self.reg_source in REG_SOURCES, f"reg_source must be one of {', '.join(REG_SOURCES)}"),
            (self.num_frames >= 1 and self.height >= 1 and self.width >= 1, "num_frames, height, width must be >= 1"),
            (self.frame_stride >= 1, "frame_stride must be >= 1"),
            (self.fps is None or self.fps > 0, "fps must be > 0"),
            (self.fps is None or self.frame_stride == 1,
             f"fps={self.fps} resamples clips in place of frame_stride={self.frame_stride}: give one of the two "
             "(frame_stride=1 with fps)"),
            ("{token}" in self.caption_template, "caption_template must contain {token}"),
            (self.latent_cache in LATENT_CACHES, f"latent_cache must be one of {', '.join(LATENT_CACHES)}"),
            (self.mixed_precision in MIXED_PRECISIONS, f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.warmup_steps >= 0 and self.checkpoint_every >= 0 and self.validation_every >= 0,
             "warmup_steps, checkpoint_every, validation_every must be >= 0"),
            (self.use_8bit_adam in ("auto", "yes", "no"), "use_8bit_adam must be auto, yes or no"),
            (self.motion_first_steps is None or self.motion_first_steps >= 0, "motion_first_steps must be >= 0"),
            (self.motion_first_steps is None or self.motion_first_steps < self.max_train_steps,
             f"motion_first_steps={self.motion_first_steps} must be < max_train_steps={self.max_train_steps}, or a "
             "joint run never trains the subject: lower it, or leave it None (the first half)"),
            (self.warmup_steps < self.max_train_steps,
             f"warmup_steps={self.warmup_steps} must be < max_train_steps={self.max_train_steps}, or the learning "
             "rate never reaches learning_rate: lower warmup_steps or raise max_train_steps"),
            (self.num_reg_generated >= 1, "num_reg_generated must be >= 1"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (0 <= self.weight_decay < math.inf, "weight_decay must be finite and >= 0"),
            (self.validation_steps >= 1, "validation_steps must be >= 1"),
            (self.dtype in STORAGE_DTYPES, f"dtype must be one of {', '.join(STORAGE_DTYPES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")
        if self.reg_source == "generated" and not self.reg_prompts:
            raise ValueError("TrainConfig: reg_source='generated' needs reg_prompts (e.g. ['a person dancing'])")

    @property
    def motion_first(self) -> int:
        """Steps of a joint subject+motion run on the motion alone, before both."""
        return self.max_train_steps // 2 if self.motion_first_steps is None else self.motion_first_steps

    @property
    def lr(self) -> float:
        """The learning rate in effect: the given one, or the tuning's default (a LoRA's scaled to its rank)."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.tuning == "lora":
            return rate_for_rank(DEFAULT_LEARNING_RATES["lora"], DEFAULT_LORA_RATE_RANK, self.rank)
        return DEFAULT_LEARNING_RATES[self.tuning]

    def lr_factor(self, step: int) -> float:
        """The learning rate's multiplier at optimizer step `step` (from 0): linear warm-up, then the schedule."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.max_train_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_toml(cls, path, **overrides) -> "TrainConfig":
        """Read fields from a TOML file (top level, or a [train] table); keyword overrides win."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}; write each field as `rank = 8` or "
                             '`preset = "motion"`') from None
        data = data.get("train", data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown TrainConfig fields {', '.join(sorted(unknown))}")
        _check_types(data, str(path))
        return cls(**{**data, **overrides})

    def resume_key(self) -> dict:
        """The fields a checkpoint must agree on to be resumed: what shapes the trained tensors, the data and the
        updates. max_train_steps only under a schedule that depends on it: a constant-rate run may be extended."""
        keys = ("preset", "tuning", "rank", "alpha", "dropout", "num_frames", "height", "width", "frame_stride", "fps",
                "bucket", "caption_template", "seed", "timestep_sampling", "timestep_alpha", "reg_weight", "reg_source",
                "learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "max_grad_norm",
                "gradient_accumulation_steps", "motion_first_steps", "bypass_temporal_on_images")
        steps = ("max_train_steps",) if self.lr_schedule != "constant" else ()
        return {key: getattr(self, key) for key in keys + steps}
