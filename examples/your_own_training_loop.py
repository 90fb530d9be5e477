"""Train a motion adapter with your own loop: add a fresh LoRA over the paper's layers, train it, save it.

The library's `motion-adapter train` does all of this (and more: regularization, checkpoints, accelerate);
this script shows the pieces, for people who want their own loop.

    python examples/your_own_training_loop.py --clips clips/ --token pll --out out/pll
"""

import argparse

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

import motion_adapter as ma
from motion_adapter.training.data import load_clip_folder, sample_window


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="cerspense/zeroscope_v2_576w", help="base model id or folder")
    parser.add_argument("--clips", required=True, help="folder of example clips of the motion")
    parser.add_argument("--token", default="pll")
    parser.add_argument("--out", default="out/pll")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = DiffusionPipeline.from_pretrained(args.base).to(device)
    spec = ma.add_motion_adapter(pipe, args.token, preset="motion", rank=16, alpha=16, token=args.token)
    print(spec.explain())
    clips = load_clip_folder(
        args.clips,
        token=args.token,
        caption_template="a person doing the {token}",
        num_frames=args.frames,
        height=args.size,
        width=args.size,
        multiple_of=pipe.vae_scale_factor,
    )
    with torch.no_grad():  # the VAE and text encoder are frozen: encode once
        latents = [
            pipe.vae.encode(c.frames.to(device)).latent_dist.mean * pipe.vae.config.scaling_factor for c in clips
        ]
        texts = [pipe.encode_prompt(c.caption, device, 1, False)[0] for c in clips]
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = pipe.scheduler
    generator = torch.Generator().manual_seed(0)
    pipe.unet.train()
    for step in range(args.steps):
        i = int(torch.randint(len(clips), (1,), generator=generator))
        window = sample_window(latents[i].shape[0], args.frames, generator)
        x0 = latents[i][window].permute(1, 0, 2, 3).unsqueeze(0)  # (f, c, h, w) -> (1, c, f, h, w)
        noise = torch.randn_like(x0)
        t = torch.randint(scheduler.config.num_train_timesteps, (1,), device=device)
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
        loss = F.mse_loss(pipe.unet(noisy, t, encoder_hidden_states=texts[i]).sample, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f}")
    pipe.unet.eval()
    print("wrote", ma.save_motion_adapter(pipe, args.token, args.out))


if __name__ == "__main__":
    main()
