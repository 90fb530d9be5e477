"""The training loop: the paper's recipe for motions (`train_motion`) and subjects (`train_subject`), on accelerate.

One loop serves both. Each optimizer step draws one target example (a clip of the motion, or a subject image as a
one-frame clip, the temporal layers bypassed unless `bypass_temporal_on_images` is off) and, when a regularization
set is given, one regularization clip, each with its own noise and timestep, the two in one forward pass when
their sizes agree (an image and a clip take one each):
loss = L(target) + reg_weight * L(reg),  where L = || model(x_t, c, t) - target ||^2 and the target follows the
scheduler (epsilon, v or sample).
Every step's randomness is seeded by (seed, step, process), so a resumed run repeats an uninterrupted one (under
fp16 up to the loss scale, which restarts).
It runs unchanged under `accelerate launch` with several processes; the main process writes the files.
"""

import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
import warnings
from collections import Counter
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from .. import adapter
from ..constants import FORMAT_VERSION
from ..format import AdapterFile, AdapterInfo, write_adapter
from ..hub import model_card
from ..pipeline import (
    add_motion_adapter,
    attach_adapter,
    base_model_id,
    delete_motion_adapter,
    learn_token,
    learned_embeddings,
    safe_adapter_name,
    save_motion_adapter,
)
from ..targets import architecture_fingerprint, architecture_of, denoiser_of, resolve_targets
from ..video import write_video
from .cache import LatentStore
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import ClipExample, holds_token, load_clip_folder, load_image_folder, progress_options, sample_window
from .timesteps import sample_timesteps
from .tuning import compress, delta_as_lora

MAX_TOKEN_PIECES = 3  # a token split into more pieces than this is hard to bind: warn


@dataclass
class TrainResult:
    """What a run made: the adapter folder and a few facts about the run."""

    adapter_dir: Path
    steps: int
    final_loss: float
    seconds: float
    samples: list[Path] = field(default_factory=list)
    compressed_dir: Path | None = None
    energy_kept: float | None = None  # with compress_to_rank: fraction of the full delta's energy kept


@dataclass
class _Set:
    """One source of training examples: their latents, captions, whether they are single images, and a fingerprint
    of the data (`_fingerprint`)."""

    store: LatentStore
    captions: list[str]
    images: bool = False
    fingerprint: str = ""


def train_motion(
    pipe, *, data, token: str, output_dir, reg_data=None, config: TrainConfig | None = None
) -> TrainResult:
    """Teach `pipe` the motion shown in the clips of `data`, bound to `token`; write the adapter to `output_dir`.

    `reg_data` is a folder of real clips of similar motions with their own captions (the paper's regularization);
    with `config.reg_source="generated"` the base model makes them from `config.reg_prompts` instead.
    The trained adapter stays loaded in `pipe` under the name `safe_adapter_name(token)`: the token's letters, digits,
    '_' and '-' ("pll" stays "pll").
    """
    config = config or TrainConfig()
    _check_before_work(output_dir, token=token)
    _check_precision(pipe, config)
    accelerator = _accelerator(config, output_dir, images=False)
    _place(pipe, accelerator.device)
    clips = _load_clips(pipe, data, config, Path(output_dir) / "latent_cache" / "clips", token=token)
    reg = _load_regularization(pipe, reg_data, config, Path(output_dir))
    return _run(
        pipe, config, Path(output_dir), accelerator,
        adapter_name=safe_adapter_name(token), kind="motion", preset=config.preset, tokens=[token],
        prompt_template=_prompt_template(clips, token), learned=[],
        targets=[clips], reg=reg, schedule=lambda step: 0,
    )  # fmt: skip


def train_subject(
    pipe,
    *,
    data,
    token: str,
    class_word: str,
    output_dir,
    config: TrainConfig | None = None,
    preset: str | None = None,
    caption_template: str = "a photo of a {token} {class_word}",
    motion_data=None,
    motion_token: str | None = None,
    reg_data=None,
) -> TrainResult:
    """Teach `pipe` a subject from still images of `data`, as a new token whose embedding starts from `class_word`.

    The token's embedding and the layers of `subject_preset(config)` are trained. Images are one-frame clips,
    with the temporal layers bypassed (`config.bypass_temporal_on_images`: off for a base trained on video from the
    start, whose spatial layers never ran alone). With `motion_data` and `motion_token`, the paper's joint
    schedule: the motion alone for `config.motion_first` steps, then both, each step drawn from one of the
    two sets; one adapter ("motion+appearance" layers) carries both tokens.
    """
    config = config or TrainConfig()
    joint = motion_data is not None
    if joint != (motion_token is not None):
        raise ValueError("joint training needs both motion_data and motion_token")
    _check_before_work(output_dir, token=token, class_word=class_word, motion_token=motion_token)
    preset = preset or ("motion+appearance" if joint else subject_preset(config))
    _check_precision(pipe, config)
    accelerator = _accelerator(config, output_dir, images=True)
    _place(pipe, accelerator.device)
    template = caption_template.replace("{class_word}", class_word)
    cache = Path(output_dir) / "latent_cache"
    images = _load_images(pipe, data, config, cache / "images", token=token, caption_template=template)
    targets = [images]
    if joint:
        targets.insert(0, _load_clips(pipe, motion_data, config, cache / "clips", token=motion_token))
    reg = _load_regularization(pipe, reg_data, config, Path(output_dir))

    def schedule(step: int) -> int:  # which target set this step draws from
        if not joint:
            return 0
        return 0 if step < config.motion_first or step % 2 == 0 else 1

    return _run(
        pipe, config, Path(output_dir), accelerator,
        adapter_name=safe_adapter_name(token), kind="subject", preset=preset,
        tokens=[motion_token, token] if joint else [token],
        prompt_template=_prompt_template(images, token), learned=[(token, class_word)],
        targets=targets, reg=reg, schedule=schedule,
    )  # fmt: skip


def subject_preset(config: TrainConfig) -> str:
    """The layers a subject adapter trains unless told: "subject", the spatial attention but the cross-attention k/v
    (through which every word of a prompt is read, a motion's token too), plus the temporal layers where the images
    run through them (`bypass_temporal_on_images` off). On the tiny world, whose images run through them, subjects
    on the spatial layers alone (with or without the k/v) stilled every clip of the motion adapter loaded beside
    them at one seed of two; trained with the temporal layers too, they kept it (docs/ablation.md, Composition)."""
    return "subject" if config.bypass_temporal_on_images else "subject+temporal"


# ---------------------------------------------------------------- the loop


def _run(pipe, config, output_dir, accelerator, **setup) -> TrainResult:
    """`_train`, and if it stops half-way (an error, Ctrl-C), the pipeline as it was before: no half-trained adapter
    or learned token left in it, full-tuned weights restored, no training hooks, eval mode. (Under mixed precision
    its frozen weights keep the cast: taking it back exactly would need a full-precision copy of every model.)"""
    undo = ExitStack()  # `_train` registers how to take back each change it makes to the pipeline
    try:
        return _train(pipe, config, output_dir, accelerator, undo=undo, **setup)
    except BaseException:
        undo.close()
        raise


def _train(pipe, config, output_dir, accelerator, *, adapter_name, kind, preset, tokens, prompt_template, learned,
           targets, reg, schedule, undo: ExitStack) -> TrainResult:  # fmt: skip
    started = time.perf_counter()
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    # what a checkpoint must agree on to be resumed: the settings, the tokens, the base model and the data
    resume_key = {**config.resume_key(), "tokens": tokens, "base_model": base_model_id(pipe),
                  "fingerprint": architecture_fingerprint(unet), "data": [t.fingerprint for t in targets],
                  "reg_data": reg.fingerprint if reg is not None else None}  # fmt: skip
    device = accelerator.device
    weight_dtype = _weight_dtype(config)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    for token in set(tokens) - {token for token, _ in learned} - {None}:
        _warn_if_split(pipe, token)  # learned tokens become one new token each

    # 1. the trainable parameters: a LoRA, or the selected weights themselves (full tuning), and learned tokens
    set_seed(config.seed)  # the LoRA's initial A
    for module in (vae, text_encoder, unet):  # on the device already (`_place`)
        if weight_dtype != torch.float32 and not (learned and module is text_encoder):
            module.to(dtype=weight_dtype)  # the frozen weights; trainable ones are set back to fp32 below
    if config.tuning == "lora":
        add_motion_adapter(
            pipe, adapter_name, preset=preset, rank=config.rank, alpha=config.lora_alpha, dropout=config.dropout,
            token=[t for t in tokens if t], kind=kind, prompt_template=prompt_template,
        )  # fmt: skip
        undo.callback(delete_motion_adapter, pipe, adapter_name)
        params = adapter.set_trainable(unet, adapter_name)
        originals = {}
    else:
        spec = resolve_targets(unet, preset)
        unet.requires_grad_(False)
        modules = dict(unet.named_modules())
        originals = {name: modules[name].weight.detach().cpu().clone() for name in spec.module_names}
        undo.callback(_restore_weights, unet, originals)
        params = [modules[name].weight for name in spec.module_names]
        for param in params:
            param.requires_grad_(True)
    for param in params:
        param.data = param.data.float()  # trainable tensors in fp32, even under mixed precision
    learned_ids = set()
    if learned:
        if config.tuning == "full":  # a placeholder adapter owns the learned tokens until the delta replaces it
            add_motion_adapter(pipe, adapter_name, preset=preset, rank=1, token=tokens, kind=kind, trainable=False)
            undo.callback(delete_motion_adapter, pipe, adapter_name)
            for param in params:  # peft froze every parameter but its own as it injected the placeholder
                param.requires_grad_(True)
        for token, class_word in learned:
            learn_token(pipe, adapter_name, token, init_from=class_word)
            learned_ids.add(pipe.tokenizer.convert_tokens_to_ids(token))
        text_encoder = pipe.text_encoder  # resized
        text_encoder.to(device)
    embedding = text_encoder.get_input_embeddings().weight if learned else None
    session = undo.enter_context(ExitStack())  # hooks, modes and bar of the training itself: dropped either way
    if embedding is not None:  # the text encoder keeps its dtype (not cast above): only the token's rows train
        text_encoder.requires_grad_(False)
        embedding_dtype = embedding.dtype
        embedding.data = embedding.data.float()
        embedding.requires_grad_(True)
        mask = torch.zeros(embedding.shape[0], 1, device=embedding.device)
        mask[sorted(learned_ids)] = 1.0
        mask_handle = embedding.register_hook(lambda grad: grad * mask)  # only the new rows learn
        session.callback(mask_handle.remove)
        if embedding_dtype != torch.float32:  # the fp32 rows feed a half-precision encoder in its own dtype
            cast = text_encoder.get_input_embeddings().register_forward_hook(
                lambda module, args, output: output.to(embedding_dtype)
            )
            session.callback(cast.remove)
    if config.gradient_checkpointing:
        _enable_checkpointing(unet)
        session.callback(_disable_checkpointing, unet)

    # 2. optimizer and learning-rate schedule (the embedding without weight decay: its other rows never move)
    groups = [{"params": params, "weight_decay": config.weight_decay}]
    if embedding is not None:
        groups.append({"params": [embedding], "weight_decay": 0.0})
    optimizer = _optimizer(config, groups)
    # not given to accelerate, which would step it once per process: the schedule counts optimizer steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    trained_unet, optimizer = accelerator.prepare(unet, optimizer)
    # the text encoder is not given to accelerate: a process whose captions lack the token this step would skip
    # its forward and leave the others waiting; the learned rows' gradients are averaged by hand (`_share_rows`)
    learned_rows = sorted(learned_ids)

    # 3. text embeddings of captions without learned tokens never change: encode them once
    text_cache = {}
    learning = {}  # caption -> whether it holds a learned token (then encoded with gradient at every step)

    def encode_text(caption: str) -> torch.Tensor:
        if caption not in learning:  # tokenized once per caption, not at every step
            learning[caption] = embedding is not None and not learned_ids.isdisjoint(pipe.tokenizer(caption).input_ids)
        if learning[caption]:
            return _encode_prompt(pipe.tokenizer, text_encoder, caption, device)
        if caption not in text_cache:
            with torch.no_grad():
                text_cache[caption] = _encode_prompt(pipe.tokenizer, text_encoder, caption, device)
        return text_cache[caption]

    # 4. resume
    start_step = 0
    resume = _resume_folder(config, output_dir)
    all_params = params + ([embedding] if embedding is not None else [])
    if resume is not None:
        start_step = load_checkpoint(resume, all_params, optimizer, lr_scheduler, resume_key)
        if start_step > config.max_train_steps:
            raise ValueError(
                f"{resume} is at step {start_step}, past max_train_steps={config.max_train_steps}; resume from an "
                "earlier checkpoint or raise max_train_steps"
            )

    # 5. the loop
    unet.train()
    session.callback(unet.eval)
    bypass = _temporal_blocks(unet)
    text_per_frame = getattr(architecture_of(unet), "text_per_frame", False)
    progress = tqdm(total=config.max_train_steps, initial=start_step, desc=f"training {adapter_name}",
                    **progress_options())
    session.callback(progress.close)
    if config.report_to:
        accelerator.init_trackers("motion_adapter", config={k: str(v) for k, v in dataclasses.asdict(config).items()})
    step, loss_value, samples = start_step, math.nan, []
    for micro_step in range(start_step * config.gradient_accumulation_steps,
                            config.max_train_steps * config.gradient_accumulation_steps):  # fmt: skip
        generator = torch.Generator().manual_seed(
            _step_seed(config.seed, micro_step, accelerator.process_index)
        )
        torch.manual_seed(_step_seed(config.seed, micro_step, accelerator.process_index))  # LoRA dropout
        with accelerator.accumulate(trained_unet):
            batch = [(targets[schedule(step)], 1.0)] + ([(reg, config.reg_weight)] if reg is not None else [])
            draws = [_draw(data, weight, config, generator, num_timesteps) for data, weight in batch]
            loss = 0.0
            for group in _same_shape(draws):  # the example and the regularization clip in one forward pass
                text = torch.cat([encode_text(d.caption) for d in group])  # (b, tokens, dim)
                if text_per_frame:
                    text = text.repeat_interleave(group[0].latents.shape[2], dim=0)  # (b * frames, tokens, dim)
                with _bypassed(bypass) if group[0].images and config.bypass_temporal_on_images else nullcontext():
                    loss = loss + _group_loss(trained_unet, noise_scheduler, group, text, weight_dtype)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if embedding is not None and accelerator.num_processes > 1:
                    _share_rows(accelerator, embedding, learned_rows)
                accelerator.clip_grad_norm_(all_params, config.max_grad_norm)
            optimizer.step()
            if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:  # fp16: an inf skips
                lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        step += 1
        loss_value = loss.detach().item()
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        if config.report_to:
            accelerator.log({"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0]}, step=step)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_train_steps:
            if accelerator.is_main_process:
                save_checkpoint(output_dir, step, all_params, optimizer, lr_scheduler, resume_key)
            accelerator.wait_for_everyone()
        if config.validation_every and config.validation_prompts and step % config.validation_every == 0:
            if accelerator.is_main_process and step < config.max_train_steps:
                samples += _validate(pipe, config, output_dir, step, unet)
    undo.pop_all()  # trained: what follows finishes the adapter rather than taking it back

    # 6. back to inference: eval mode, hooks and accelerate's autocast wrappers off, fp32 views released, the adapter
    # written by the main process
    session.close()
    accelerator.unwrap_model(trained_unet, keep_fp32_wrapper=False)
    text_encoder.eval()
    for param in all_params:
        param.requires_grad_(False)
    if embedding is not None:
        embedding.data = embedding.data.to(embedding_dtype)  # its text encoder's dtype again
    summary = {
        "steps": step, "learning_rate": config.lr, "tuning": config.tuning,
        "timestep_sampling": config.timestep_sampling,
        "reg_weight": config.reg_weight if reg is not None else 0.0, "num_clips": sum(len(t.store) for t in targets),
        "num_reg_clips": len(reg.store) if reg is not None else 0, "preset": preset, "rank": config.rank,
    }  # fmt: skip
    result = TrainResult(adapter_dir=output_dir, steps=step, final_loss=loss_value, seconds=0.0)
    if config.tuning == "full":
        _finish_full(pipe, config, output_dir, originals, adapter_name, kind, tokens, prompt_template, summary,
                     result, accelerator, has_learned_tokens=bool(learned))  # fmt: skip
    if accelerator.is_main_process:
        save = partial(save_motion_adapter, pipe, adapter_name, output_dir, dtype=config.dtype, training=summary)
        save(sample=samples[-1] if samples else None)  # before the final sample: interrupting that loses nothing
        final = _validate(pipe, config, output_dir, step, unet) if config.validation_prompts else []
        if final:
            samples += final
            save(sample=final[-1])  # again, for the card to show the trained adapter's own sample
    if learned and weight_dtype != torch.float32:
        text_encoder.to(dtype=weight_dtype)  # saved from its fp32 rows; now in one precision with the other models
    accelerator.wait_for_everyone()
    if config.report_to:
        accelerator.end_training()
    result.samples = samples
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- pieces


def _weight_dtype(config: TrainConfig) -> torch.dtype:
    """The dtype of the frozen weights under the config's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)


def _place(pipe, device: torch.device) -> None:
    """Put the models on this process's device before any data is encoded (a pipeline handed over on the CPU, or
    every process's on the first GPU, would otherwise encode there)."""
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.to(device)


def _check_before_work(output_dir, **words: str | None) -> None:
    """Refuse at once what would otherwise fail only after training: an empty word, an output_dir that is a file."""
    for name, word in words.items():
        if word is not None and not word.strip():
            raise ValueError(f"{name}={word!r} is empty; give the word that prompts will use")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise FileExistsError(f"output_dir {output_dir} is a file; give a folder for the adapter (it is created)")


def _share_rows(accelerator: Accelerator, embedding: torch.Tensor, rows: list[int]) -> None:
    """Average the learned rows' gradient over the processes, as DDP averages the denoiser's (zero where a process's
    captions held no learned token)."""
    grad = embedding.grad if embedding.grad is not None else torch.zeros_like(embedding)
    grad[rows] = accelerator.reduce(grad[rows].contiguous(), reduction="mean")
    embedding.grad = grad


def _check_precision(pipe, config: TrainConfig) -> None:
    """A half-precision pipeline trains only under mixed precision (fp32 trainable weights, fp16 gradients scaled):
    refused before any work, with the setting that fixes it."""
    dtype = next(denoiser_of(pipe).parameters()).dtype
    if config.mixed_precision == "no" and dtype != torch.float32:
        setting = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "bf16")
        raise ValueError(f"the pipeline's denoiser is in {dtype}: train it with TrainConfig(mixed_precision="
                         f"'{setting}') (--mixed-precision {setting}), or load the pipeline in float32")  # fmt: skip


def _accelerator(config: TrainConfig, output_dir, *, images: bool) -> Accelerator:
    """The accelerate object of a run (single or multi-process); images leave the temporal LoRA unused.

    The config's mixed precision is the run's: a launcher's other setting is named in a warning (accelerate launch
    sets "no" unless told, which is no request), and a process whose accelerate state already holds another one (set
    once per process) is refused with what to do."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched not in ("no", config.mixed_precision):
        warnings.warn(
            f"accelerate launch asks for mixed precision {launched!r} (ACCELERATE_MIXED_PRECISION), but this run "
            f"trains with TrainConfig(mixed_precision={config.mixed_precision!r}), which wins; give the same to both "
            f"(--mixed-precision on the motion-adapter command, --mixed_precision on accelerate launch)",
            stacklevel=3,
        )
    try:
        return Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=config.report_to,
            project_dir=str(Path(output_dir) / "logs"),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=images)],
        )
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        current = AcceleratorState().mixed_precision
        raise ValueError(
            f"TrainConfig(mixed_precision={config.mixed_precision!r}) cannot take effect: accelerate keeps one mixed "
            f"precision per Python process, and this one already runs with {current!r} (an earlier training run or "
            f"Accelerator); train with TrainConfig(mixed_precision={current!r}), or in a new Python process"
        ) from None


def _step_seed(seed: int, micro_step: int, process: int) -> int:
    return (seed * 1_000_003 + micro_step) * 64 + process


def _prompt_template(data: _Set, token: str) -> str:
    """The prompt an adapter suggests (its header, its card): the most common training caption that holds the token
    (ties: the first). A caption_template shows there only where it captioned the data."""
    return Counter(caption for caption in data.captions if holds_token(caption, token)).most_common(1)[0][0]


def _size_multiple(pipe) -> int:
    """Pixels a training size must divide by: the VAE's factor times the UNet's down-sampling."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def _load_clips(pipe, data, config: TrainConfig, cache: Path, *, token: str | None) -> _Set:
    examples = load_clip_folder(
        data, token=token, caption_template=config.caption_template if token else None,
        num_frames=config.num_frames, height=config.height, width=config.width, frame_stride=config.frame_stride,
        fps=config.fps, multiple_of=_size_multiple(pipe), skip_bad_clips=config.skip_bad_clips, bucket=config.bucket,
    )  # fmt: skip
    return _latents(pipe, examples, config, cache, images=False)


def _load_images(pipe, data, config: TrainConfig, cache: Path, *, token: str, caption_template: str) -> _Set:
    examples = load_image_folder(
        data, token=token, caption_template=caption_template, height=config.height, width=config.width,
        multiple_of=_size_multiple(pipe), bucket=config.bucket,
    )  # fmt: skip
    return _latents(pipe, examples, config, cache, images=True)


def _latents(pipe, examples: list[ClipExample], config: TrainConfig, cache: Path, *, images: bool) -> _Set:
    return _Set(
        store=LatentStore(pipe.vae, examples, mode=config.latent_cache, folder=cache),
        captions=[example.caption for example in examples],
        images=images,
        fingerprint=_fingerprint(examples, images=images),
    )


def _fingerprint(examples: list[ClipExample], *, images: bool) -> str:
    """The data a checkpoint was trained on, as it must match to be resumed: a digest of each example's file name,
    size, frame count and caption, after the count, short enough to read in the error that compares two."""
    digest = hashlib.sha256()
    for example in examples:
        source = example.source  # a file, a frame folder, or a name for clips the base generated
        files = [source] if source.is_file() else sorted(source.iterdir()) if source.is_dir() else []
        size = sum(path.stat().st_size for path in files)
        digest.update(json.dumps([source.name, size, example.frames.shape[0], example.caption]).encode())
    return f"{len(examples)} {'images' if images else 'clips'}, sha256 {digest.hexdigest()[:12]}"


def _load_regularization(pipe, reg_data, config: TrainConfig, output_dir: Path) -> _Set | None:
    """Real regularization clips from a folder, or clips the base model generates from reg_prompts."""
    cache = output_dir / "latent_cache" / "reg"
    if config.reg_source == "generated":
        return _latents(pipe, _generate_clips(pipe, config), config, cache, images=False)
    if reg_data is None:
        return None
    return _load_clips(pipe, reg_data, config, cache, token=None)


@torch.no_grad()
def _generate_clips(pipe, config: TrainConfig) -> list[ClipExample]:
    """The paper's weaker regularization: clips of the class made by the base model itself, before training."""
    examples = []
    for i in range(config.num_reg_generated):
        prompt = config.reg_prompts[i % len(config.reg_prompts)]
        frames = _sample(pipe, prompt, config, seed=config.seed + i)
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2) * 2 - 1  # (f,h,w,3) in [0,1] -> (f,3,h,w) in [-1,1]
        examples.append(ClipExample(frames=clip.float(), caption=prompt, source=Path(f"generated-{i}")))
    return examples


def _sample(pipe, prompt: str, config: TrainConfig, *, seed: int):
    """One clip (frames, h, w, 3) in [0, 1] at the training size, with the pipeline as it is: under mixed precision
    its models are in two precisions (the trained weights fp32), so it samples under autocast."""
    dtype = _weight_dtype(config)
    with torch.autocast(pipe.unet.device.type, dtype=dtype, enabled=dtype != torch.float32):
        return pipe(
            prompt,
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            num_inference_steps=config.validation_steps,
            guidance_scale=config.guidance_scale,
            generator=torch.Generator().manual_seed(seed),  # on the CPU: the same noise on any device
            output_type="np",
        ).frames[0]


def _validate(pipe, config: TrainConfig, output_dir: Path, step: int, unet) -> list[Path]:
    """Sample each validation prompt into output_dir/samples/step-NNNNNN-i.gif; the model stays as it was.

    A sample that fails (NaN frames from a half-precision overflow, out of memory) is a warning: the samples are a
    view of the run, and losing the run, or the adapter it trained, to one of them would cost far more."""
    was_training = unet.training
    unet.eval()
    paths = []
    try:
        for i, prompt in enumerate(config.validation_prompts):
            try:
                frames = _sample(pipe, prompt, config, seed=config.seed)
                paths.append(write_video(output_dir / "samples" / f"step-{step:06d}-{i}.gif", frames, fps=8))
            except Exception as error:
                warnings.warn(
                    f"the validation sample of {prompt!r} at step {step} failed, so it is left out (training goes on "
                    f"and the adapter is saved): {type(error).__name__}: {error}",
                    stacklevel=2,
                )
    finally:
        unet.train(was_training)
    return paths


@dataclass
class _Draw:
    """One clip drawn for a training step: a window of its latents (1, c, f, h, w), its noise, timestep, caption."""

    latents: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    caption: str
    weight: float
    images: bool


def _draw(data: _Set, weight: float, config: TrainConfig, generator, num_timesteps: int) -> _Draw:
    """A random clip of `data`, a random window of its frames (one for images), its noise and its timestep."""
    i = int(torch.randint(len(data.store), (1,), generator=generator))
    frames = 1 if data.images else config.num_frames
    window = sample_window(data.store.num_frames(i), frames, generator)
    latents = data.store.window(i, window).permute(1, 0, 2, 3).unsqueeze(0)  # (f,c,h,w) -> (1,c,f,h,w)
    noise = torch.randn(latents.shape, generator=generator)
    t = sample_timesteps(1, num_timesteps, config.timestep_sampling, config.timestep_alpha, generator)
    return _Draw(latents, noise, t, data.captions[i], weight, data.images)


def _same_shape(draws: list[_Draw]) -> list[list[_Draw]]:
    """The draws grouped so that each group goes through the denoiser as one batch: same size, both clips or both
    images (images may skip the temporal layers)."""
    groups: dict[tuple, list[_Draw]] = {}
    for d in draws:
        groups.setdefault((d.images, tuple(d.latents.shape[1:])), []).append(d)
    return list(groups.values())


def _group_loss(unet, noise_scheduler, group: list[_Draw], text: torch.Tensor, dtype) -> torch.Tensor:
    """The weighted sum of the group's per-clip losses, from one forward pass of the denoiser over them all."""
    device = text.device
    latents = torch.cat([d.latents for d in group]).to(device, dtype)
    noise = torch.cat([d.noise for d in group]).to(device, dtype)
    t = torch.cat([d.t for d in group]).to(device)
    prediction = unet(noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=text.to(dtype)).sample
    target = _target(noise_scheduler, latents, noise, t)
    per_clip = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
    return (per_clip * torch.tensor([d.weight for d in group], device=device)).sum()


def _encode_prompt(tokenizer, text_encoder, caption: str, device) -> torch.Tensor:
    """CLIP text embeddings (1, tokens, dim) of one caption, padded to the tokenizer's length as pipelines do."""
    ids = tokenizer(
        caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(device))[0]


def _target(noise_scheduler, latents, noise, t) -> torch.Tensor:
    """What the model predicts, per the scheduler: the noise, the velocity, or the clean latents."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, t)
    if kind == "sample":
        return latents
    raise ValueError(f"the scheduler's prediction_type {kind!r} is not one of epsilon, v_prediction, sample")


def _optimizer(config: TrainConfig, groups):
    """AdamW; the 8-bit one of bitsandbytes when asked, or on "auto" when it and a GPU are there.

    torch's AdamW loops over the tensors in Python on CPU unless told otherwise: with a LoRA's hundreds of small
    tensors the loop shows. Its fused kernel, on CPU and CUDA, does the whole update in one pass (the tiny world's
    rank-8 LoRA, 256 tensors, one thread: 2.0 ms for the update and the gradient clipping against 5.7 ms with
    `foreach`; the same update up to rounding); other devices keep torch's default.
    """
    want_8bit = config.use_8bit_adam == "yes" or (config.use_8bit_adam == "auto" and torch.cuda.is_available())
    if want_8bit:
        try:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(groups, lr=config.lr)
        except ImportError:
            if config.use_8bit_adam == "yes":
                raise ImportError("use_8bit_adam='yes' needs bitsandbytes: pip install bitsandbytes") from None
    # fp16's loss scaler would not see a fused step skip on an overflow, and the schedule would step on
    fused = groups[0]["params"][0].device.type in ("cpu", "cuda") and config.mixed_precision != "fp16"
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)


def _warn_if_split(pipe, token: str) -> None:
    pieces = pipe.tokenizer.tokenize(token)
    if len(pieces) > MAX_TOKEN_PIECES:
        warnings.warn(
            f"the tokenizer splits token {token!r} into {len(pieces)} pieces ({' '.join(pieces)}); a rarer word "
            "of one or two pieces binds better (e.g. 'sks', 'pll', 'olis')",
            stacklevel=3,
        )


def _resume_folder(config: TrainConfig, output_dir: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        return latest_checkpoint(output_dir)  # None: nothing to resume yet, start afresh
    return Path(config.resume)


def _temporal_blocks(unet) -> list:
    """The blocks that mix frames, per the target table; bypassed when the target is a still image."""
    arch = architecture_of(unet)
    names = arch.temporal_blocks if arch else ()
    return [module for module in unet.modules() if type(module).__name__ in names]


@contextmanager
def _bypassed(blocks):
    """Make each block return its input unchanged (a one-frame clip has no motion to model)."""

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, torch.Tensor):
            return hidden
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        return dataclasses.replace(output, sample=hidden)

    handles = [block.register_forward_hook(identity, with_kwargs=True) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _checkpointed_blocks(unet) -> list:
    """The blocks whose activations are recomputed in the backward pass: each down, mid and up block."""
    blocks = [*getattr(unet, "down_blocks", []), *getattr(unet, "up_blocks", [])]
    mid = getattr(unet, "mid_block", None)
    return blocks + ([mid] if mid is not None else [])


def _enable_checkpointing(unet) -> None:
    """Gradient checkpointing, also for models whose diffusers class lacks it (UNet3DConditionModel does)."""
    if unet._supports_gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        return
    for block in _checkpointed_blocks(unet):
        forward = block.forward
        block.forward = lambda *args, forward=forward, **kwargs: torch.utils.checkpoint.checkpoint(
            forward, *args, use_reentrant=False, **kwargs
        )


def _disable_checkpointing(unet) -> None:
    if unet._supports_gradient_checkpointing:
        unet.disable_gradient_checkpointing()
        return
    for block in _checkpointed_blocks(unet):
        block.__dict__.pop("forward", None)  # back to the class's own forward


def _restore_weights(unet, originals: dict[str, torch.Tensor]) -> None:
    """Put the weights full tuning started from back into their modules (frozen, on their device and dtype)."""
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, original in originals.items():
            weight = modules[name].weight
            weight.data = original.to(weight.device)  # in the dtype of the layers around it, not the trained fp32
            weight.requires_grad_(False)


def _finish_full(pipe, config, output_dir, originals, adapter_name, kind, tokens, prompt_template, summary, result,
                 accelerator, *, has_learned_tokens: bool) -> None:  # fmt: skip
    """Full tuning: turn the trained weights into an exact delta adapter, restore the base, load the delta."""
    unet = pipe.unet
    modules = dict(unet.named_modules())
    deltas = {}
    with torch.no_grad():
        for name, original in originals.items():
            deltas[name] = delta_as_lora(modules[name].weight.detach().float().cpu() - original.float())
    _restore_weights(unet, originals)
    learned = {}
    if has_learned_tokens:  # the placeholder adapter holds them: take them over
        learned = learned_embeddings(pipe, adapter_name)
        delete_motion_adapter(pipe, adapter_name)
    rank = statistics.mode(pair.rank for pair in deltas.values())  # a full delta's rank: a layer's output size
    info = AdapterInfo(
        kind=kind, tokens=[t for t in tokens if t], prompt_template=prompt_template, base_model=base_model_id(pipe),
        preset=summary["preset"], rank=rank, alpha=float(rank), num_params=0, file_bytes=0,
        format_version=FORMAT_VERSION, base_class=type(unet).__name__, fingerprint=architecture_fingerprint(unet),
        training=summary,
    )  # fmt: skip
    attach_adapter(pipe, adapter_name, AdapterFile(info=info, modules=deltas, embeddings=learned))
    if config.compress_to_rank and accelerator.is_main_process:
        compressed, energy = compress(deltas, config.compress_to_rank)
        result.compressed_dir = output_dir.with_name(f"{output_dir.name}-rank{config.compress_to_rank}")
        result.energy_kept = energy
        compressed_info = dataclasses.replace(
            info, rank=config.compress_to_rank, alpha=float(config.compress_to_rank),
            training={**summary, "compressed_from": "full", "energy_kept": round(energy, 4)},
        )  # fmt: skip
        write_adapter(result.compressed_dir, compressed_info, compressed, embeddings=learned, dtype=config.dtype,
                      card=partial(model_card, source=str(result.compressed_dir)))
