"""The tiny world's base model: its architecture, its tokenizer, and `load_pipeline` for the shipped weights.

A real diffusers `TextToVideoSDPipeline` made of stock classes, sized for 32 x 32 clips of 8 frames:
- AutoencoderKL: three blocks, 32 x 32 RGB -> 8 x 8 latents of 4 channels (4x smaller each side);
- UNet3DConditionModel: two levels (8 x 8 and 4 x 4 latents), spatial cross-attention on both, temporal
  convolutions and attention everywhere, as the full-size ModelScope / ZeroScope architecture has them;
- CLIPTextModel: two small layers, trained jointly with the UNet during pretraining, frozen afterwards;
- CLIPTokenizer: a byte-pair vocabulary holding every printable lowercase ASCII character (alone and
  word-final, "x</w>") plus every word of the world's captions as one whole token, reached through merges
  learned from those words. Printable ASCII text encodes with no unknown token (the tokenizer lowercases it); a new
  word such as "pll" becomes pieces (p, l, l</w>) that no caption word uses; each byte of any other character reads
  as the unknown token, which is CLIP's end-of-text token ("café" becomes c, a, f and two ends of text);
- DDIMScheduler: v-prediction on the cosine schedule ("squaredcos_cap_v2"), trailing timestep spacing, so
  that sampling starts from pure noise: the schedule the base was trained with.

The shipped weights live in `weights/` beside this file, as a diffusers pipeline folder (model_index.json and
one subfolder per component, safetensors only); `load_pipeline()` reads them with no network access.
"""

import hashlib
import json
import string
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from motion_adapter.constants import TOYWORLD_BASE_ID
from motion_adapter.toyworld.world import (
    COLORS,
    HELD_OUT_SHAPES,
    MOTION_PHRASES,
    NUM_FRAMES,
    SHAPES,
    SIZE,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"

LATENT_SIZE = SIZE // 4  # the VAE's three blocks halve twice: 32 -> 8
LATENT_CHANNELS = 4
MAX_TOKENS = 24  # the tokenizer pads and truncates prompts to this many tokens (captions use at most 10)
TEXT_DIM = 64  # the text encoder's width, which is also the UNet's cross-attention width

# Words a prompt of the world may hold: the captions' words, the token phrase "doing the", and the shapes
# kept out of pretraining (so that "a star" reads as one word, like every other shape).
WORLD_WORDS = tuple(
    dict.fromkeys(
        ["a", "an", "doing", "the", *COLORS, *SHAPES, *HELD_OUT_SHAPES]
        + [word for phrase in MOTION_PHRASES.values() for word in phrase.split()]
    )
)

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation


def learn_merges(words) -> list[tuple[str, str]]:
    """Byte-pair merges that turn each word into one token, most frequent pair first.

    Each word starts as its characters, the last one marked word-final ("x</w>"). At every round the most
    frequent adjacent pair over the words still in pieces is merged (ties broken by the pair's text, so the
    result is deterministic), until every word is whole. Encoding a word with these merges in rank order
    replays the same rounds, so each of `words` encodes to exactly one token.
    """
    pieces = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges = []
    while True:
        counts = Counter(
            (a, b) for parts in pieces.values() if len(parts) > 1 for a, b in zip(parts, parts[1:])
        )
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, parts in pieces.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            pieces[word] = merged


def write_tokenizer_files(folder) -> tuple[Path, Path]:
    """Write the world's vocab.json and merges.txt into `folder`: single characters, then every merge result.

    Characters come first, alone and word-final ("x</w>"), so that any lowercase ASCII text encodes with no
    unknown token; then each merge's result, so that every word of WORLD_WORDS is reachable as one token.
    """
    merges = learn_merges(WORLD_WORDS)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for suffix in ("", "</w>"):
        for char in _CHARACTERS:
            vocab.setdefault(char + suffix, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
    vocab_file.write_text(json.dumps(vocab, indent=0) + "\n")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_file, merges_file


def build_tokenizer():
    """The world's CLIPTokenizer (see `write_tokenizer_files`), padding and truncating to MAX_TOKENS."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = write_tokenizer_files(folder)
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=MAX_TOKENS)


def build_text_encoder(vocab_size: int):
    """A two-layer CLIPTextModel, TEXT_DIM wide, with positions for MAX_TOKENS tokens (random weights)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_vae():
    """An AutoencoderKL of three blocks: (b, 3, 32, 32) in [-1, 1] <-> (b, 4, 8, 8) latents (random weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=SIZE,
    )


def build_unet(
    block_out_channels=(32, 64), layers_per_block: int = 1, attention_head_dim: int = 4, norm_num_groups: int = 16
):
    """A UNet3DConditionModel over (b, 4, frames, 8, 8) latents, cross-attending to TEXT_DIM-wide text."""
    from diffusers import UNet3DConditionModel

    levels = len(block_out_channels)
    return UNet3DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock3D",) * levels,
        up_block_types=("CrossAttnUpBlock3D",) * levels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=attention_head_dim,  # UNet3DConditionModel reads it as the number of heads
    )


def build_scheduler():
    """The DDIM scheduler the base is trained and sampled with: v-prediction, cosine schedule, trailing steps."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )


@contextmanager
def without_deprecation_notice():
    """Leave out diffusers' "TextToVideoSDPipeline has been deprecated" warning while the world's base is made: the
    world chose that class knowingly (README), and a grid makes one per run, which buried its progress in notices."""
    from diffusers.utils import logging

    logger = logging.get_logger("diffusers.pipelines.pipeline_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_pipeline(weights_dir: str | Path | None = None):
    """The tiny world's base as a `TextToVideoSDPipeline`, its models in eval mode; nothing is downloaded.

    weights_dir: a pipeline folder (model_index.json and one subfolder per component), such as the output
        folder of `toyworld.pretrain`; None reads the weights shipped with the package.
    Generate at the world's size: `pipe(prompt, num_frames=8, height=32, width=32, ...)` (height and width
    default to 32 already; the pipeline's own num_frames default is 16).
    """
    from diffusers import TextToVideoSDPipeline

    folder = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    if not (folder / "model_index.json").is_file():
        if weights_dir is None:
            raise FileNotFoundError(
                f"the shipped tiny-world weights are missing from {folder}: reinstall motion_adapter, or make "
                f"your own with `motion-adapter toyworld pretrain --out DIR` and load_pipeline(DIR)"
            )
        raise FileNotFoundError(
            f"{folder} holds no pipeline (no model_index.json): give the output folder of toyworld.pretrain "
            f"once it has finished its first checkpoint"
        )
    with without_deprecation_notice():
        pipe = TextToVideoSDPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    for model in (pipe.vae, pipe.text_encoder, pipe.unet):
        model.eval()
    if weights_dir is None:  # adapters record this base by name, not by the install path of the package
        pipe.register_to_config(_name_or_path=TOYWORLD_BASE_ID)
    return pipe


def weights_digest(*models) -> str:
    """A short hash of the models' weights, in order: which base a grid's runs were made on, which VAE encoded a
    cached latent pool."""
    digest = hashlib.sha256()
    for model in models:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


__all__ = [
    "LATENT_SIZE",
    "MAX_TOKENS",
    "NUM_FRAMES",
    "WEIGHTS_DIR",
    "WORLD_WORDS",
    "build_scheduler",
    "build_text_encoder",
    "build_tokenizer",
    "build_unet",
    "build_vae",
    "learn_merges",
    "load_pipeline",
    "weights_digest",
    "without_deprecation_notice",
    "write_tokenizer_files",
]
