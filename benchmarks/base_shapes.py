"""Where a tiny-world base loses its shapes: rendered clips noised part of the way, then denoised.

The base shipped before the refinement (commit 2f0e653's weights) drew blobs from pure noise (shape right in 23% of
clips by `toyworld.measure_quality`, about chance for four shapes); refined, the base shipped since commit d4abc2d
draws the shape asked for in 84% by the same measure.
This finds the noise level where a clip's shape is decided and whether the prompt's shape word steers it:
32 rendered clips of the pretraining world are noised to a share `strength` of the schedule and denoised
(the base's DDIM scheduler, 25 steps for the whole schedule, guidance 3) with three prompts:
- "prompt": the clip's own caption: shape right = the base keeps (or redraws) the shape asked for;
- "other shape": the caption with the next shape word: the share that follows the word rather than the clip;
- "empty": "": whether the shape survives with no words at all.

    python benchmarks/base_shapes.py [--weights DIR] [--strengths 0.4 0.6 0.8 1.0]

Measured on 2f0e653's weights, the base before the refinement (the table came with this script at commit e5a30e8;
2-core machine, one thread, 439 s):

| strength | prompt: shape right | other shape: follows the word | empty: keeps the clip's shape |
|---:|---:|---:|---:|
| 0.4 | 91% | 3% | 91% |
| 0.6 | 59% | 12% | 78% |
| 0.8 | 34% | 16% | 41% |
| 1.0 | 31% | 25% | 25% |

The shape is decided between t = 600 and 800 (strength 0.6 to 0.8), where the prompt's shape word barely steers
it and guidance on the words even loses shapes that the empty prompt keeps. Hence `toyworld.pretrain`'s
refinement, which trains on t in 350-850 only (cubic timesteps put a third of their steps there, 58% above 800).
"""

import argparse
import time

import numpy as np
import torch

from motion_adapter import toyworld
from motion_adapter.toyworld.pretrain import encode_clips
from motion_adapter.toyworld.sampling import quality_prompts
from motion_adapter.toyworld.world import SHAPES, caption, parse_caption

CLIPS = 32


def other_shape(prompt: str) -> str:
    shape, color, motion = parse_caption(prompt)
    return caption(SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)], color, motion)


@torch.no_grad()
def denoise_from(pipe, latents, texts, strength: float, guidance: float) -> list[np.ndarray]:
    """Noise `latents` to the share `strength` of the base's 25 sampling steps, denoise them with classifier-free
    guidance towards `texts`, decode: uint8 clips. (diffusers' VideoToVideoSDPipeline does this for one clip at a
    time only.)"""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(25)
    timesteps = scheduler.timesteps[25 - round(25 * strength) :]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    z = scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(latents)))
    ids = pipe.tokenizer(list(texts) + [""] * len(texts), padding="max_length", return_tensors="pt").input_ids
    text_states = pipe.text_encoder(ids)[0]
    for t in timesteps:
        conditional, unconditional = pipe.unet(torch.cat([z, z]), t, text_states).sample.chunk(2)
        z = scheduler.step(unconditional + guidance * (conditional - unconditional), t, z).prev_sample
    frames = z.permute(0, 2, 1, 3, 4).flatten(0, 1) / pipe.vae.config.scaling_factor
    pixels = ((pipe.vae.decode(frames).sample.clamp(-1, 1) + 1) * 127.5).round().byte()
    return list(pixels.reshape(*z.shape[:1], -1, *pixels.shape[1:]).permute(0, 1, 3, 4, 2).numpy())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a pipeline folder (toyworld.pretrain's output); default: the shipped base")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    pipe = toyworld.load_pipeline(args.weights)
    prompts = quality_prompts(CLIPS)
    clips = [toyworld.render(*parse_caption(p), seed=500 + i) for i, p in enumerate(prompts)]
    latents = encode_clips(pipe.vae, clips) * pipe.vae.config.scaling_factor
    asked = {"prompt": prompts, "other shape": [other_shape(p) for p in prompts], "empty": [""] * CLIPS}
    print("| strength | prompt: shape right | other shape: follows the word | empty: keeps the clip's shape |")
    print("|---:|---:|---:|---:|")
    for strength in args.strengths:
        row = []
        for name, texts in asked.items():
            generated = denoise_from(pipe, latents, texts, strength, args.guidance)
            scored = prompts if name == "empty" else texts  # the empty prompt is scored against the clip's shape
            report = toyworld.evaluate(generated, scored)
            row.append(np.mean([c.shape_ok for c in report.clips]))
        print(f"| {strength} | " + " | ".join(f"{share:.0%}" for share in row) + " |", flush=True)
    print(f"\n{CLIPS} clips a cell, {time.time() - started:.0f} s.")


if __name__ == "__main__":
    main()
