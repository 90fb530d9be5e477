"""Generate a clip with one or more motion/subject adapters loaded into a text-to-video pipeline.

    python examples/generate_with_adapters.py --adapter user/pll out/sks-dog --weights 1.0 0.8 \
        --prompt "a <sks> dog doing the pll" --out dog.gif
"""

import argparse

import torch
from diffusers import DiffusionPipeline

import motion_adapter  # noqa: F401  (adds pipe.load_motion_adapter and friends)
from motion_adapter.video import write_video


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="cerspense/zeroscope_v2_576w", help="base model id or folder")
    parser.add_argument("--adapter", nargs="*", default=[], help="adapter folders, files or Hub ids")
    parser.add_argument("--weights", type=float, nargs="*", default=None, help="one weight per adapter (default 1)")
    parser.add_argument("--prompt", default="a bear doing the pll")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--guidance", type=float, default=9.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuse", action="store_true", help="fold the adapters into the weights (faster)")
    parser.add_argument("--out", default="clip.gif")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.base, torch_dtype=dtype).to(device)
    names = [pipe.load_motion_adapter(source) for source in args.adapter]
    if names:
        weights = args.weights or [1.0] * len(names)
        pipe.set_motion_adapters(names, weights=weights)
        print("loaded", ", ".join(f"{name} at weight {w}" for name, w in zip(names, weights)))
    if args.fuse and args.adapter:
        pipe.fuse_motion_adapters()
    frames = pipe(
        args.prompt,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator(device).manual_seed(args.seed),
        output_type="np",
    ).frames[0]
    print("wrote", write_video(args.out, frames, fps=8))


if __name__ == "__main__":
    main()
