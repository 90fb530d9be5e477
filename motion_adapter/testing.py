"""Tiny, random, real diffusers pipelines built in code: for tests, benchmarks and trying examples offline.

`tiny_pipeline()` assembles a `TextToVideoSDPipeline` from a two-block UNet3DConditionModel, a two-layer CLIP
text model whose tokenizer vocabulary is written here (one token per lowercase letter, so any lowercase ASCII
text encodes), a two-block AutoencoderKL and a DDIM scheduler. Same seed, same weights; nothing is downloaded.
"""

import json
import string
import tempfile
from pathlib import Path

import torch

TINY_NUM_FRAMES = 4
TINY_SIZE = 16  # pixels a side; the two-block VAE halves it (latents 8 x 8)


def tiny_tokenizer():
    """A CLIPTokenizer over single characters: "pll" is p, l, l</w>; no text is ever an unknown token."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in string.ascii_lowercase + string.digits + "-'":
            vocab[char + suffix] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def tiny_unet3d(*, seed: int = 0, block_out_channels=(32, 64), cross_attention_dim: int = 32):
    """A two-block UNet3DConditionModel with every layer role of the full-size one (temporal and spatial)."""
    from diffusers import UNet3DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet3DConditionModel(
            block_out_channels=block_out_channels,
            layers_per_block=1,
            sample_size=TINY_SIZE // 2,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=4,
            norm_num_groups=32,
        ).eval()


def tiny_pipeline(*, seed: int = 0):
    """A real TextToVideoSDPipeline of about 1.5 M parameters, its models in eval mode as from_pretrained leaves
    them."""
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        ).eval()
        vae = AutoencoderKL(
            block_out_channels=(32, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            sample_size=TINY_SIZE,
            norm_num_groups=32,
        ).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    pipe = TextToVideoSDPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=tiny_unet3d(seed=seed), scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unet_motion(*, seed: int = 0):
    """A two-block UNetMotionModel (AnimateDiff): spatial layers plus motion modules."""
    from diffusers import UNetMotionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNetMotionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=TINY_SIZE // 2,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
            cross_attention_dim=32,
            num_attention_heads=2,
            motion_num_attention_heads=2,
            norm_num_groups=32,
            use_motion_mid_block=True,
        ).eval()


def tiny_animatediff_pipeline(*, seed: int = 0):
    """A real AnimateDiffPipeline sharing the tiny text encoder, tokenizer and VAE, with a tiny UNetMotionModel."""
    from diffusers import AnimateDiffPipeline

    parts = tiny_pipeline(seed=seed)
    pipe = AnimateDiffPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=tiny_unet_motion(seed=seed),
        motion_adapter=None, scheduler=parts.scheduler,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str = "a red square moving left", *, seed: int = 0, steps: int = 2):
    """A short, seeded generation with the tiny sizes; returns float frames (frames, h, w, 3)."""
    return pipe(
        prompt,
        num_frames=TINY_NUM_FRAMES,
        height=TINY_SIZE,
        width=TINY_SIZE,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).frames[0]


def randomize_adapter(pipe, adapter_name: str, *, seed: int = 0, scale: float = 0.5) -> None:
    """Give a fresh adapter's B matrices random values, so that it changes the output (as training would)."""
    from .adapter import lora_layers
    from .targets import denoiser_of

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(denoiser_of(pipe)).values():
            if adapter_name in layer.lora_B:
                weight = layer.lora_B[adapter_name].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
