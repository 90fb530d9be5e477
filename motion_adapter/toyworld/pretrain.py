"""Pretraining the tiny world's base model: `pretrain(output_dir)` makes the weights that ship in `weights/`.

Three stages, each a plain loop that reads top to bottom, checkpointed atomically and resumable:
1. the VAE: an AutoencoderKL trained on single frames rendered from the pretraining world (shapes x colours x
   backgrounds, at random poses), reconstruction MSE plus a small KL term, a warmup-stable-decay rate; then
   frozen.
   Its `scaling_factor` is set to one over the standard deviation of the latents of the clip pool.
2. the denoiser: a pool of clips (every valid (shape, motion) pair x colour x background, several jittered
   clips each) is rendered and encoded once; the UNet3DConditionModel and the CLIPTextModel are trained
   together on it with v-prediction (cosine schedule), cubic timesteps (most of them noisy), an auxiliary
   frame-order loss (`_FrameOrder`), AdamW with a short warmup and then a constant rate, captions from
   `toyworld.caption`, some captions without their colour and some empty (for classifier-free guidance).
   The exported weights are an exponential moving average of the trained ones.
3. the refinement: the denoiser's averaged weights trained on (fresh AdamW and average, same rates and data)
   with timesteps drawn uniformly from the middle of the schedule (t in 350-850), where a clip's shape is
   decided and the cubic timesteps of stage 2 left the prompt's shape word without effect
   (`python benchmarks/base_shapes.py`). Its average is the exported model. A stage-2 run trained further
   makes the refinement start over.
A VAE trained further on resume (a larger `vae_steps`) encodes the pool again and makes the denoiser and the
refinement start over (their checkpoints trained on the earlier VAE's latents).
Held-out motions and held-out shapes are never rendered here.

Every step draws its randomness from (seed, step) alone, so a resumed run takes the same steps as an
uninterrupted one (equal up to floating-point rounding). The output folder is a diffusers pipeline folder
once the first denoiser checkpoint is written (`toyworld.load_pipeline(output_dir)` reads it), plus
`checkpoints/`, `latents.safetensors` (the encoded pool) and `log.txt`.

Cost on CPU, measured (one thread of a 2-core x86 machine shared with other jobs, torch 2.13): the VAE stage
0.57 s a step (median; 0.51 to 0.88), 1,500 steps in about 15 minutes; rendering and encoding the pool of
7,200 clips 2 minutes 15 seconds; the denoiser 1.10 s a step at batch 16 (median; 1.05 to 2.3 when the
machine is busy), about 18 minutes per 1,000 steps. On one NVIDIA H200 (`device="cuda"`, float32, torch 2.11),
two runs side by side at batch 256 kept the GPU 99% busy at 0.46 s a step each (about 1,100 clips a second
together, some 75 times one CPU thread); encoding the pool took 26 s. Alone
(`python benchmarks/pretrain_step.py`), a step (UNet and text encoder, random data) takes 125 / 210 / 774 ms at
batch 64 / 256 / 1,024: about 1,300 clips a second at most, and bf16 autocast does not help (201 ms at 256).
torch's profiler at batch 256: 68% of the GPU's time goes to the memory-efficient attention kernels (float32,
8-wide heads over 8 frames or 64 positions) and 19% to AdamW's step; the math attention backend and a fused
AdamW are the untried leads.

Status: the shipped weights are this function's defaults: 4,000 denoiser steps (cubic timesteps, the
frame-order loss, learning rate 1e-3, unit-scale word embeddings), then 4,000 refinement steps on t in 350-850:
about 90 minutes on one CPU thread for the first two stages (15 + 2 + 73) and 0.7 to 0.9 s a refinement step on
two threads (66 minutes for the 4,000, measured across three calls that resumed). On 64 clips
(`measure_quality()`), after the denoiser alone: motion 61%, colour 100%, shape 23%; after 1,000 / 2,000 / 3,000
/ 4,000 refinement steps: motion 67 / 92 / 88 / 88%, colour 100% each, shape 58 / 77 / 80 / 84% (79.7%: 51 of
64, then 84.4%: 54 of 64; on a second set, `measure_quality(seed=1)`, step 4,000 scores 88 / 100 / 89%). The
quality bar is 85 / 90 / 80: step 4,000 (shipped) meets all three.
Where the refinement came from (`python benchmarks/base_shapes.py`, 32 rendered clips noised part of the way and
denoised): the denoiser alone kept a clip's shape from t = 400 (91%) but not from t = 600 to 800 (59%, 34%),
where the shape is decided; its shape word steered the result in 12% of clips at t = 600, and the empty prompt
kept more shapes (78%) than the right one with guidance. In latent space a red circle and a red square at one
pose lie a seventh as far apart as a red and a blue circle, so the shape's share of the denoising loss is small,
and cubic timesteps spend 58% of the steps above t = 800. Diagnostic fine-tunes of the denoiser (throw-away
scripts, not kept), 1,000 steps each from its weights, scored from pure noise on 64 clips: cubic timesteps,
shape 27%; cubic with the loss weighted 5x on the shape's latent pixels, 31%; shapes drawn upright (angle within
10 degrees), no change at 500 steps; t drawn from 350-850, 66% (and motion 59% -> 78%).
The earlier recipe (uniform timesteps, rate 5e-4, CLIP's embedding init; `pretrain(out, steps=2000,
learning_rate=5e-4, token_init_std=None, frame_order_weight=0, temporal_conv_init="identity",
timestep_sampling="uniform")`) scored motion 9.4%, colour 100%, shape 23%, flat from step 500 to 3,000.
Twice the data did not help: the shipped recipe on that GPU at batch 256 for 500 steps (128,000 clips, against
the shipped base's 64,000) scored motion 66%, colour 100%, shape 19% with rates of 2e-3 (`learning_rate` and
`text_learning_rate`), and 36%, 97%, 14% with 1e-3; it was not shipped.

Why the recipe changed (measured): that base learned a motion's axis from its words ("moving up" came out
vertical) but not its sense (up or down followed the starting noise). A clip's layout, its sense of motion
included, is decided at the noisiest steps, which uniform timesteps rarely train. On the world cut down to two
motions (`python benchmarks/pretrain_sense.py`, 16 clips per point), the sense follows the words at step 300
with cubic timesteps (94%) and stays at chance with uniform ones (50%); the frame-order loss brings cubic
sampling there by step 200 (94%, against 50% without it) and does nothing for uniform sampling.
Shapes still come out as blobs that change from frame to frame, whatever the guidance (the GPU run's step 500:
shape right in 12 to 22% of 32 clips at guidance 1, 3 and 7). The VAE is not the cause: with a VAE of this
recipe (retrained, same seed), 48 pool latents with Gaussian noise of 0.5 of their standard deviation added
still decode to clips whose shape reads right 98% of the time (colour 100%).
"""

import copy
import json
import math
import os
import re
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from motion_adapter.format import atomic_save_tensors
from motion_adapter.toyworld.model import (
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    weights_digest,
    without_deprecation_notice,
    write_tokenizer_files,
)
from motion_adapter.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    NUM_FRAMES,
    PRETRAIN_MOTIONS,
    SHAPES,
    caption,
    render,
    valid_pairs,
)
from motion_adapter.training.checkpoint import flatten_optimizer_state, optimizer_moments
from motion_adapter.training.timesteps import MODES, sample_timesteps

_CHECKPOINTS = "checkpoints"
_LATENTS = "latents.safetensors"
_LOG = "log.txt"
_VAE_DECAY_FROM = 2 / 3  # the VAE's rate decays (cosine, to 0) over its last third: at a constant 2e-3 it can blow up
_STEP_SEED = 1_000_003  # each step's generator is seeded with seed * _STEP_SEED + step (+ a stage offset)
REFINE_STEPS = 4000  # the shipped recipe's refinement (see the module docstring)
_REFINE_SEED = 500_000  # the refinement's stage offset: its draws differ from the denoiser's first 500,000 steps
_STEPS_SETTING = {"vae": "vae_steps", "unet": "steps", "refine": "refine_steps"}  # each stage's length, for errors


def pretrain(
    output_dir,
    *,
    steps: int = 4000,
    vae_steps: int = 1500,
    batch_size: int = 16,
    vae_batch_size: int = 32,
    learning_rate: float = 1e-3,
    text_learning_rate: float = 1e-3,
    vae_learning_rate: float = 2e-3,
    warmup_steps: int = 200,
    pool_size: int = 7200,
    caption_dropout: float = 0.1,
    color_dropout: float = 0.15,
    ema_decay: float = 0.999,
    token_init_std: float | None = 1.0,
    frame_order_weight: float = 1.0,
    temporal_conv_init: str = "random",
    timestep_sampling: str = "cubic",
    refine_steps: int = REFINE_STEPS,
    refine_min_t: int = 350,
    refine_max_t: int = 850,
    seed: int = 0,
    device: str | None = None,
    resume: bool = True,
    log_every: int = 50,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 2,
) -> Path:
    """Pretrain the tiny world's base model into `output_dir`; the defaults are the shipped recipe.

    steps: denoiser (UNet + text encoder) training steps; vae_steps: VAE training steps, run first.
    batch_size: clips per denoiser step; vae_batch_size: frames per VAE step.
    learning_rate / text_learning_rate / vae_learning_rate: AdamW rates of the UNet, the text encoder and
        the VAE, reached after `warmup_steps` of linear warmup and then held (the denoiser's, so that its
        checkpoint at step k is the recipe with steps=k); the VAE's decays to 0 over its last third.
    pool_size: clips in the denoiser's pool, rendered once and encoded: clip i is the i-th (shape, colour,
        motion, background) of the pretraining world, cycling (900 of them: 7200 is 8 jittered clips each).
    caption_dropout: share of captions replaced by "" (the unconditional prompt of classifier-free guidance);
        color_dropout: share of the others written without their colour ("a circle moving left").
    ema_decay: decay of the exponential moving average whose weights are exported.
    token_init_std: standard deviation of the text encoder's initial word embeddings; None keeps CLIP's own
        init (0.02), with which motion words stay nearly indistinct in the encoder's output.
    frame_order_weight: weight of the auxiliary loss that teaches the UNet which frame is which (see
        `_FrameOrder`); 0 leaves it out.
    temporal_conv_init: "identity" starts each temporal convolution stack as diffusers does (last convolution
        zeroed, the stack passes its input through); "random" starts it with PyTorch's default init (see
        `_unet_for_training`).
    timestep_sampling: how the denoiser's training timesteps are drawn, a mode of
        `motion_adapter.training.timesteps` ("uniform", "coarse", "fine", "cubic").
    refine_steps: steps of the refinement that follows the denoiser: the denoiser's averaged weights trained
        further (fresh AdamW, same rates and warmup, a fresh average) on timesteps drawn uniformly from
        `refine_min_t` to `refine_max_t`, where a clip's shape is decided; 0 leaves it out.
    device: where to train ("cpu", "cuda", "cuda:1"); None: the GPU when there is one, else the CPU. A run
        may resume on another device than it started on.
    resume: continue from the latest checkpoint in `output_dir/checkpoints` (False: start over there); a stage
        whose latest checkpoint is past its steps is refused, as its weights are not the recipe asked for.
    log_every: steps between log lines (log.txt, also printed); checkpoint_every: steps between checkpoints,
        each also exporting the pipeline folder; keep_checkpoints: how many to keep per stage (0: all).
    Returns the output folder, a pipeline folder that `toyworld.load_pipeline` reads.
    """
    options = {k: v for k, v in locals().items() if k != "output_dir"}
    for name, value in (("steps", steps), ("vae_steps", vae_steps), ("batch_size", batch_size),
                        ("vae_batch_size", vae_batch_size), ("pool_size", pool_size),
                        ("log_every", log_every), ("checkpoint_every", checkpoint_every)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if temporal_conv_init not in ("identity", "random"):
        raise ValueError(f"temporal_conv_init must be 'identity' or 'random', got {temporal_conv_init!r}")
    if timestep_sampling not in MODES:
        raise ValueError(f"timestep_sampling {timestep_sampling!r} is unknown; choose one of {', '.join(MODES)}")
    tokenizer, scheduler = build_tokenizer(), build_scheduler()
    timesteps = scheduler.config.num_train_timesteps
    if refine_steps < 0 or not 0 <= refine_min_t <= refine_max_t < timesteps:
        raise ValueError(
            f"refine_steps must be 0 or more and 0 <= refine_min_t <= refine_max_t < {timesteps}, "
            f"got {refine_steps}, {refine_min_t}, {refine_max_t}"
        )
    if keep_checkpoints < 0:
        raise ValueError(f"keep_checkpoints must be 0 (keep all) or more, got {keep_checkpoints}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} asked for, but torch sees no GPU here; use device='cpu' (--device cpu)"
        )
    output_dir = Path(output_dir)
    (output_dir / _CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    log = _Log(output_dir / _LOG)
    log(f"pretrain {output_dir} {json.dumps(options, sort_keys=True)}")
    if not resume:
        for path in (output_dir / _CHECKPOINTS).glob("*.safetensors"):
            path.unlink()
        (output_dir / _LATENTS).unlink(missing_ok=True)
    started = time.time()

    # Stage 1: the VAE.
    vae = _seeded(build_vae, seed).to(device)
    vae_trained = _train(
        "vae", vae, None, steps=vae_steps, lrs=[vae_learning_rate], warmup_steps=warmup_steps,
        step_loss=lambda step: _vae_loss(vae, _frame_batch(seed, step, vae_batch_size).to(device)),
        ema_decay=None, seed=seed, output_dir=output_dir, log=log, log_every=log_every,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, export=None, decay_from=_VAE_DECAY_FROM,
    )  # fmt: skip
    vae.eval().requires_grad_(False)

    # The clip pool, encoded once: (n, 4, frames, 8, 8) latents scaled to unit standard deviation.
    latents, combos, other_vae = _latent_pool(vae, seed, pool_size, output_dir, log, device)
    if vae_trained or other_vae:  # the second: a call stopped after the VAE trained on, before this point
        why = "trained on the earlier VAE's latents (the VAE trained further since)"
        _drop_checkpoints(output_dir, ("unet", "refine"), why, log)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    latents = latents.to(device) * vae.config.scaling_factor
    captions = _caption_ids(tokenizer, combos).to(device)

    # Stage 2: the denoiser, UNet and text encoder together.
    text_encoder = _seeded(_text_encoder_for_training, seed, len(tokenizer), token_init_std)
    unet = _seeded(_unet_for_training, seed, temporal_conv_init)
    denoiser = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).to(device)
    ema = copy.deepcopy(denoiser)  # the exported weights: an exponential moving average of the trained ones
    ema.eval().requires_grad_(False)
    frame_order = _FrameOrder(unet) if frame_order_weight else None

    def step_loss(step, stream, draw_timesteps):
        draw = seed * _STEP_SEED + stream + step
        generator = torch.Generator().manual_seed(draw)  # on the CPU, whatever the device
        torch.manual_seed(draw)  # the UNet's dropout
        pick = torch.randint(len(latents), (batch_size,), generator=generator)
        variant = torch.rand(batch_size, generator=generator)
        which = torch.where(variant < caption_dropout, 2, torch.where(variant < caption_dropout + color_dropout, 1, 0))
        pick, which = pick.to(device), which.to(device)
        ids = captions[pick, which]  # (b, MAX_TOKENS): full caption, caption without colour, or ""
        clean = latents[pick]  # (b, 4, frames, 8, 8)
        noise = torch.randn(clean.shape, generator=generator).to(device)
        t = draw_timesteps(generator=generator)
        loss = velocity_loss(unet, scheduler, clean, noise, t.to(device), text_encoder(ids)[0])
        return loss + frame_order_weight * frame_order.loss() if frame_order else loss

    def exporter(averaged):
        return lambda: _export(output_dir, vae, averaged["text_encoder"], tokenizer, averaged["unet"], scheduler)

    schedule = dict(
        lrs=[learning_rate, text_learning_rate], warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed,
        output_dir=output_dir, log=log, log_every=log_every, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
    )  # fmt: skip
    denoiser_loss = partial(step_loss, stream=0,
                            draw_timesteps=partial(sample_timesteps, batch_size, timesteps, timestep_sampling))
    trained = _train("unet", denoiser, ema, steps=steps, step_loss=denoiser_loss, export=exporter(ema), **schedule)
    if refine_steps:
        # Stage 3: the refinement, from the denoiser's averaged weights (refinements of an older denoiser are stale).
        if trained:
            why = "trained from the earlier denoiser (the denoiser trained further in this call)"
            _drop_checkpoints(output_dir, ("refine",), why, log)
        denoiser.load_state_dict(ema.state_dict())
        ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
        middle = partial(torch.randint, refine_min_t, refine_max_t + 1, (batch_size,))
        refine_loss = partial(step_loss, stream=_REFINE_SEED, draw_timesteps=middle)
        _train("refine", denoiser, ema, steps=refine_steps, step_loss=refine_loss, export=exporter(ema), **schedule)
    if frame_order:
        frame_order.remove()
    exporter(ema)()
    log(f"done in {_clock(time.time() - started)} (this call); pipeline in {output_dir}")
    return output_dir


def velocity_loss(unet, scheduler, clean, noise, t, text_states) -> torch.Tensor:
    """The denoiser's loss: mean squared error of the UNet's v-prediction on `clean` latents noised to `t`."""
    prediction = unet(scheduler.add_noise(clean, noise, t), t, text_states).sample
    return F.mse_loss(prediction.float(), scheduler.get_velocity(clean, noise, t))


class _Log:
    """Appends timestamped lines to log.txt and prints them."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with self.path.open("a") as file:
            file.write(line + "\n")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _text_encoder_for_training(vocab_size: int, token_init_std: float | None):
    """A fresh text encoder whose word embeddings start at `token_init_std` (None: CLIP's own init, 0.02).

    At CLIP's init every word is a small vector next to the attention output, and a word whose clips differ only
    in motion ("left" / "right") never becomes distinct: the denoiser learns the colour words and ignores the
    motion words. Unit-scale embeddings make every word distinct in the text encoder's output from the start.
    """
    text_encoder = build_text_encoder(vocab_size)
    if token_init_std is not None:
        torch.nn.init.normal_(text_encoder.get_input_embeddings().weight, std=token_init_std)
    return text_encoder


def _unet_for_training(temporal_conv_init: str):
    """A fresh UNet; with "random", its temporal convolution stacks start random rather than as the identity.

    diffusers zeroes the last convolution of each stack, so at first no feature depends on a frame's place in
    the clip; started random, the zero padding at the clip's ends shows in the features from the first step.
    """
    from diffusers.models.unets.unet_3d_blocks import TemporalConvLayer

    unet = build_unet()
    if temporal_conv_init == "random":
        for module in unet.modules():
            if isinstance(module, TemporalConvLayer):
                module.conv4[-1].reset_parameters()
    return unet


class _FrameOrder:
    """An auxiliary loss that writes each frame's place in the clip into one channel of an early feature.

    UNet3DConditionModel's temporal attention has no position embedding: only the zero padding of its temporal
    convolutions tells frame 0 from frame 7. Trained on the denoising loss alone, the base learned the axis of
    a motion from its words ("moving up" is vertical) but not its sense (up or down followed the starting
    noise). This loss asks channel 0 after the first temporal convolution stack to equal a ramp from -1 (first
    frame) to 1 (last frame) at every pixel, which the stack learns within a few hundred steps (mean squared
    error 0.011 at step 300), so that the layers after it have the frame order to combine with the prompt.
    Measured (`benchmarks/pretrain_sense.py`): with cubic timesteps it brings the sense of a motion earlier
    (step 200 rather than 300); with uniform ones it does not help. It lives only in pretraining (a forward
    hook); the exported UNet is the stock class.
    """

    def __init__(self, unet):
        self.output = None
        self.handle = unet.down_blocks[0].temp_convs[0].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.output = output  # (batch * frames, channels, height, width), frames of one clip side by side

    def loss(self) -> torch.Tensor:
        channel = self.output.reshape(-1, NUM_FRAMES, *self.output.shape[1:])[:, :, 0]
        self.output = None
        ramp = torch.linspace(-1.0, 1.0, NUM_FRAMES, device=channel.device).view(1, NUM_FRAMES, 1, 1)
        return F.mse_loss(channel, ramp.expand_as(channel))

    def remove(self) -> None:
        self.handle.remove()


def _seeded(build, seed, *args):
    """A model built under a fixed seed, leaving the global random state as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(*args)


def lr_scale(step: int, *, steps: int, warmup_steps: int, decay_from: float | None) -> float:
    """The learning rate's factor at a step (1-based): linear warmup, then constant; with `decay_from` (a
    fraction of `steps`), a cosine decay to 0 from that point to the last step (warmup-stable-decay)."""
    scale = min(1.0, step / max(warmup_steps, 1))
    if decay_from is not None and step > decay_from * steps:
        start = decay_from * steps
        scale *= 0.5 * (1.0 + math.cos(math.pi * (step - start) / max(steps - start, 1)))
    return scale


def _train(stage, model, ema, *, steps, lrs, warmup_steps, step_loss, ema_decay, seed, output_dir, log,
           log_every, checkpoint_every, keep_checkpoints, export, decay_from=None):  # fmt: skip
    """One stage's loop: AdamW (one parameter group per child of a ModuleDict, rates `lrs`), see `lr_scale`.

    Resumes from the stage's latest checkpoint; a stage already at `steps` returns at once, one past it is
    refused (its weights are not the run with `steps`, and the export would pass them off as such). Returns
    whether it trained any step.
    """
    groups = list(model.values()) if isinstance(model, torch.nn.ModuleDict) else [model]
    optimizer = torch.optim.AdamW(
        [{"params": list(m.parameters()), "lr": lr} for m, lr in zip(groups, lrs)], weight_decay=0.01
    )
    start = 0
    latest = _latest_checkpoint(output_dir, stage)
    if latest is not None:
        start = _load_checkpoint(latest, model, optimizer, ema)
        if start > steps:
            setting = _STEPS_SETTING[stage]
            raise ValueError(
                f"{latest} is at step {start}, past {setting}={steps}: its weights are not the run with "
                f"{setting}={steps}; pass {setting}={start} or more, another output folder, or resume=False (which "
                "deletes the checkpoints there and starts over)"
            )
        log(f"{stage}: resumed from {latest.name} (step {start})")
    if start == steps:
        if export is not None and not (output_dir / "model_index.json").is_file():
            export()
        return False
    model.train()
    losses, tick = [], time.time()
    log(f"{stage}: training steps {start + 1} to {steps}")
    for step in range(start + 1, steps + 1):
        scale = lr_scale(step, steps=steps, warmup_steps=warmup_steps, decay_from=decay_from)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr * scale
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            decay = min(ema_decay, (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        losses.append(loss.detach())  # read at the log line: no wait for the GPU at every step
        if step % log_every == 0 or step == steps:
            seconds = (time.time() - tick) / len(losses)
            log(f"{stage}: step {step}/{steps} loss {torch.stack(losses).mean().item():.4f} {seconds:.2f} s/step")
            losses, tick = [], time.time()
        if step % checkpoint_every == 0 or step == steps:
            path = _save_checkpoint(output_dir, stage, step, model, optimizer, ema)
            _prune_checkpoints(output_dir, stage, keep_checkpoints)
            if export is not None:
                export()
            log(f"{stage}: checkpoint {path.name}")
    model.eval()
    return True


# Checkpoints: one safetensors file per (stage, step), written to a temporary name and moved into place.


def _checkpoint_name(stage: str, step: int) -> str:
    return f"{stage}-{step:07d}.safetensors"


def _checkpoints(output_dir: Path, stage: str) -> list[Path]:
    pattern = re.compile(rf"{stage}-(\d{{7}})\.safetensors")
    found = [p for p in (output_dir / _CHECKPOINTS).iterdir() if pattern.fullmatch(p.name)]
    return sorted(found)


def _latest_checkpoint(output_dir: Path, stage: str) -> Path | None:
    found = _checkpoints(output_dir, stage)
    return found[-1] if found else None


def _drop_checkpoints(output_dir: Path, stages: tuple[str, ...], why: str, log) -> None:
    """Delete the checkpoints of `stages`, stale after an earlier stage trained further, so that they start over."""
    for stage in stages:
        stale = _checkpoints(output_dir, stage)
        if stale:
            log(f"{stage}: not resuming {', '.join(p.name for p in stale)}: {why}")
        for path in stale:
            path.unlink()


def _prune_checkpoints(output_dir: Path, stage: str, keep: int) -> None:
    if keep:
        for path in _checkpoints(output_dir, stage)[:-keep]:
            path.unlink()


def _save_checkpoint(output_dir, stage, step, model, optimizer, ema) -> Path:
    """Model, optimizer moments and EMA as flat tensors (no pickle): model.*, ema.*, adam.{i}.*."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update(flatten_optimizer_state(optimizer.state_dict()["state"], "adam.")[0])  # Adam keeps no plain numbers
    path = output_dir / _CHECKPOINTS / _checkpoint_name(stage, step)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_save_tensors(tensors, path, {"stage": stage, "step": str(step)})
    return path


def _load_checkpoint(path, model, optimizer, ema) -> int:
    """Restore what `_save_checkpoint` wrote; returns the step it was taken at."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as file:
        step = int(file.metadata()["step"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer.load_state_dict({**optimizer.state_dict(), "state": optimizer_moments(tensors, "adam.")})
    return step


def _export(output_dir, vae, text_encoder, tokenizer, unet, scheduler) -> None:
    """Write the pipeline folder (model_index.json and components), each file moved into place atomically.

    model_index.json, which makes the folder loadable, goes first and comes back last: an export that stops
    half-way leaves a folder that refuses to load (and that `pretrain` run again exports whole), not a mix of two."""
    import shutil

    from diffusers import TextToVideoSDPipeline

    tmp = output_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with without_deprecation_notice():
        pipe = TextToVideoSDPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
    pipe.save_pretrained(tmp, safe_serialization=True)
    write_tokenizer_files(tmp / "tokenizer")  # the slow tokenizer's files too, for older transformers
    (output_dir / "model_index.json").unlink(missing_ok=True)
    files = sorted((path for path in tmp.rglob("*") if path.is_file()), key=lambda p: (p.name == "model_index.json", p))
    for path in files:
        target = output_dir / path.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(tmp, ignore_errors=True)


# Data: frames for the VAE, the clip pool for the denoiser, caption token ids.


def _world_combos() -> list[tuple[str, str, str, str]]:
    """Every (shape, color, motion, background) the base is pretrained on: valid pairs only, no held-out names."""
    return [
        (shape, color, motion, background)
        for shape, motion in valid_pairs(SHAPES, PRETRAIN_MOTIONS)
        for color in COLORS
        for background in BACKGROUNDS
    ]


def _to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def encode_clips(vae, clips, device=None) -> torch.Tensor:
    """uint8 clips (frames, h, w, 3) -> the VAE's unscaled latent means (clips, 4, frames, h / 4, w / 4), on the CPU."""
    frames = _to_unit(np.concatenate(clips))  # (clips * frames, 3, h, w)
    with torch.no_grad():
        z = vae.encode(frames.to(device or vae.device)).latent_dist.mean.cpu()  # (clips * frames, 4, h / 4, w / 4)
    return z.reshape(len(clips), -1, *z.shape[1:]).permute(0, 2, 1, 3, 4)


def _frame_batch(seed: int, step: int, size: int) -> torch.Tensor:
    """`size` single frames of pretraining shapes and colours at random poses: (size, 3, 32, 32) in [-1, 1].

    Poses cover what the pretraining motions reach: centres within the middle half of the canvas (and a
    little more), sizes from half to twice the default, any angle.
    """
    rng = np.random.default_rng([seed, step, 7])
    frames = []
    for _ in range(size):
        pose = (*rng.uniform(0.22, 0.78, size=2), float(np.exp(rng.uniform(-0.8, 0.8))), rng.uniform(0, 360))
        clip = render(
            SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))], lambda u, pose=pose: pose,
            background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))], num_frames=2,
        )  # fmt: skip
        frames.append(clip[0])
    return _to_unit(np.stack(frames))


def _vae_loss(vae, frames: torch.Tensor) -> torch.Tensor:
    posterior = vae.encode(frames).latent_dist
    reconstruction = vae.decode(posterior.mean).sample  # a plain autoencoder: the pool is encoded by its means
    return F.mse_loss(reconstruction, frames) + 1e-6 * posterior.kl().mean()


def _latent_pool(vae, seed, pool_size, output_dir, log, device):
    """Render and encode `pool_size` clips, cycling through the combos (cached in latents.safetensors).

    The cache records a digest of the weights of the VAE that encoded it, and is encoded again by any other VAE
    (one trained further on resume). Returns ((n, 4, frames, 8, 8) unscaled latent means, the combo of each clip,
    whether the cache was another recorded VAE's).
    """
    from safetensors import safe_open

    combos = _world_combos()
    pool = [combos[i % len(combos)] for i in range(pool_size)]
    path = output_dir / _LATENTS
    digest = weights_digest(vae)
    other_vae = False
    if path.is_file():
        with safe_open(str(path), "pt") as file:
            encoded_by, latents = (file.metadata() or {}).get("vae"), file.get_tensor("latents")
        if encoded_by == digest and len(latents) == len(pool):
            return latents, pool, False
        other_vae = encoded_by is not None and encoded_by != digest
        if encoded_by != digest:
            log(f"pool: {_LATENTS} was encoded by another VAE ({encoded_by or 'unrecorded'}, this one is {digest}): "
                "encoding it again")
    tick = time.time()
    chunks = []
    for start in range(0, len(pool), 32):
        clips = [
            render(s, c, m, seed=seed * 100_000 + start + i, background=b)
            for i, (s, c, m, b) in enumerate(pool[start : start + 32])
        ]
        chunks.append(encode_clips(vae, clips, device))
    latents = torch.cat(chunks)
    atomic_save_tensors({"latents": latents.contiguous()}, path, {"vae": digest})
    log(f"pool: {len(pool)} clips encoded in {_clock(time.time() - tick)}")
    return latents, pool, other_vae


def _caption_ids(tokenizer, combos) -> torch.Tensor:
    """Token ids of each clip's caption, its caption without colour, and "": (n, 3, MAX_TOKENS)."""
    def encode(texts):
        return tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip

    full = encode([caption(s, c, m) for s, c, m, _ in combos])
    plain = encode([caption(s, None, m) for s, _, m, _ in combos])
    empty = encode([""] * len(combos))
    return torch.stack([full, plain, empty], dim=1)


__all__ = ["encode_clips", "pretrain", "velocity_loss"]
