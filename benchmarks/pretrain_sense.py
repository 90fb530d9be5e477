"""Can the tiny base learn a motion's sense from words? The pretraining recipe's levers on a two-motion world.

The base shipped when this script came (commit 6187f4e; bc64919's weights, pretrained on uniform timesteps) read a
motion's axis from its words ("moving up" is vertical) but not its sense: up or down followed the starting noise.
The bases shipped since commit 2f0e653, pretrained on cubic timesteps, read both. This measures, on the world cut
down to one red square on black moving left or right (128 jittered clips), how many denoiser steps a recipe needs
before the sense follows the words. A fresh UNet3DConditionModel and text encoder of the base's architecture are
trained as `toyworld.pretrain` trains them (v-prediction, AdamW at 1e-3, batch 16, unit-scale word embeddings) over
the shipped VAE; every 100 steps 8 clips "moving left" and 8 "moving right" are generated (15 steps, guidance 3) and
read by the evaluator. Recipes: timestep sampling "uniform" or "cubic" (most steps at high noise, where a clip's
layout is decided), each alone or "+order": the frame-order loss and random temporal-convolution init of
`toyworld.pretrain`.

    python benchmarks/pretrain_sense.py [--steps 300] [--recipes uniform cubic uniform+order cubic+order]
"""

import argparse
import sys
import time

import torch

from motion_adapter import toyworld
from motion_adapter.training.timesteps import sample_timesteps

pretrain = sys.modules["motion_adapter.toyworld.pretrain"]  # `toyworld.pretrain` is the function

CLIPS, BATCH, EVAL_EVERY = 128, 16, 100
PROMPTS = ["a red square moving left"] * 8 + ["a red square moving right"] * 8


def two_motion_pool(vae):
    """The encoded clips (n, 4, frames, 8, 8), scaled to unit spread as pretraining scales its pool, and captions."""
    motions = ["left", "right"] * (CLIPS // 2)
    clips = [toyworld.render("square", "red", m, seed=i, background="black") for i, m in enumerate(motions)]
    z = pretrain.encode_clips(vae, clips)
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return z * vae.config.scaling_factor, [f"a red square moving {m}" for m in motions]


def train_and_watch(recipe: str, steps: int) -> list[tuple[int, float, str]]:
    """Train one recipe; return (step, share of clips moving the way their prompt says, what was read) rows."""
    sampling, order = recipe.split("+")[0], recipe.endswith("+order")
    base = toyworld.load_pipeline()
    latents, captions = two_motion_pool(base.vae)
    ids = base.tokenizer(captions, padding="max_length", max_length=base.tokenizer.model_max_length,
                         return_tensors="pt").input_ids  # fmt: skip
    text_encoder = pretrain._seeded(pretrain._text_encoder_for_training, 0, len(base.tokenizer), 1.0)
    unet = pretrain._seeded(pretrain._unet_for_training, 0, "random" if order else "identity")
    frame_order = pretrain._FrameOrder(unet) if order else None
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    scheduler, generator, rows = base.scheduler, torch.Generator().manual_seed(0), []
    for step in range(1, steps + 1):
        pick = torch.randint(CLIPS, (BATCH,), generator=generator)
        clean = latents[pick]
        noise = torch.randn(clean.shape, generator=generator)
        t = sample_timesteps(BATCH, scheduler.config.num_train_timesteps, sampling, generator=generator)
        loss = pretrain.velocity_loss(unet, scheduler, clean, noise, t, text_encoder(ids[pick])[0])
        if frame_order:
            loss = loss + frame_order.loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % EVAL_EVERY == 0 or step == steps:
            base.unet, base.text_encoder = unet.eval(), text_encoder.eval()
            clips = toyworld.sample_clips(base, PROMPTS, seed=1000, num_inference_steps=15)
            report = toyworld.evaluate(clips, PROMPTS)
            read = " ".join(c.found_motion or "-" for c in report.clips)
            rows.append((step, report.motion_accuracy, read))
            print(f"  {recipe} step {step}: {report.motion_accuracy:.0%}  ({read})", flush=True)
            unet.train()
            text_encoder.train()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--recipes", nargs="+", default=["uniform", "cubic", "uniform+order", "cubic+order"],
                        choices=["uniform", "cubic", "uniform+order", "cubic+order"])  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, results = time.time(), {}
    for recipe in args.recipes:
        results[recipe] = train_and_watch(recipe, args.steps)
    steps = [step for step, _, _ in results[args.recipes[0]]]
    print("\n| recipe | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for recipe, rows in results.items():
        print(f"| {recipe} | " + " | ".join(f"{accuracy:.0%}" for _, accuracy, _ in rows) + " |")
    print(f"\n{len(args.recipes)} recipes in {time.time() - started:.0f} s. A clip counts when the evaluator reads the "
          f"motion asked for; a model that moves the square along the right axis in a random sense scores about 50%.")


if __name__ == "__main__":
    main()
