"""The tiny world's base model: its tokenizer, the shipped weights, and the pretraining function."""

import os
import random
import shutil
import string
import sys

import pytest
import torch
from safetensors.torch import load_file

from motion_adapter import toyworld
from motion_adapter.toyworld import model

pretrain_module = sys.modules["motion_adapter.toyworld.pretrain"]  # `toyworld.pretrain` is the function


@pytest.fixture(scope="module")
def base():
    return toyworld.load_pipeline()


@pytest.fixture(scope="module")
def tokenizer():
    return model.build_tokenizer()


def _pieces(tokenizer, text):
    return tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)[1:-1]  # without <|startoftext|>, <|endoftext|>


def test_every_world_word_is_one_token(tokenizer):
    for word in model.WORLD_WORDS:
        assert _pieces(tokenizer, word) == [word + "</w>"], word
    prompt = toyworld.caption("triangle", "magenta", "rotate_ccw")
    assert _pieces(tokenizer, prompt) == [word + "</w>" for word in prompt.split()]


def test_a_new_token_is_distinct_from_every_world_word(tokenizer):
    assert _pieces(tokenizer, "pll") == ["p", "l", "l</w>"]
    world = {piece for word in model.WORLD_WORDS for piece in _pieces(tokenizer, word)}
    assert not set(_pieces(tokenizer, "pll")) & world
    ids = tokenizer(toyworld.caption("circle", "red", token="pll")).input_ids
    assert len(ids) <= tokenizer.model_max_length


def test_any_lowercase_ascii_text_encodes_without_unknown_tokens(tokenizer):
    rng = random.Random(0)
    alphabet = string.ascii_lowercase + string.digits + string.punctuation + "  "
    for _ in range(200):
        text = " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))).split())
        ids = tokenizer(text).input_ids
        assert tokenizer.eos_token_id not in ids[1:-1] and tokenizer.unk_token_id not in ids[1:-1], text
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_capitals_read_as_lowercase_and_other_characters_as_an_end_of_text(tokenizer):
    assert _pieces(tokenizer, "A RED Circle") == _pieces(tokenizer, "a red circle")
    assert _pieces(tokenizer, "café") == ["c", "a", "f"] + [tokenizer.eos_token] * len("é".encode())


def test_loading_the_world_leaves_out_diffusers_deprecation_notice_and_only_that():
    import logging

    from diffusers import TextToVideoSDPipeline

    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    notices, level = [], logger.level
    handler = logging.Handler()
    handler.emit = lambda record: notices.append(record.getMessage())
    logger.addHandler(handler)
    try:
        pipe = toyworld.load_pipeline()
        assert not notices and logger.level == level
        TextToVideoSDPipeline(**pipe.components)  # made outside the world's loader, the notice stays
    finally:
        logger.removeHandler(handler)
    assert any("TextToVideoSDPipeline has been deprecated" in notice for notice in notices)


def test_the_shipped_base_is_a_stock_pipeline_in_eval_mode(base):
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert type(base) is TextToVideoSDPipeline
    assert type(base.unet) is UNet3DConditionModel and type(base.vae) is AutoencoderKL
    assert type(base.text_encoder) is CLIPTextModel and isinstance(base.tokenizer, CLIPTokenizer)
    assert type(base.scheduler) is DDIMScheduler
    assert base.scheduler.config.prediction_type == "v_prediction"
    assert not any(m.training for m in (base.unet, base.vae, base.text_encoder))
    assert not getattr(base, "_progress_bar_config", {})  # left to the caller
    assert base.vae.config.block_out_channels and 2 ** (len(base.vae.config.block_out_channels) - 1) == 4
    # the shipped tokenizer is the one the package builds
    assert base.tokenizer.get_vocab() == model.build_tokenizer().get_vocab()


def test_the_shipped_weights_are_small_safetensors_only():
    files = [p for p in model.WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".txt", ".md"}
    assert any(p.suffix == ".safetensors" for p in files)


def test_pretraining_sees_only_the_pretraining_world():
    combos = pretrain_module._world_combos()
    assert {m for _, _, m, _ in combos} == set(toyworld.PRETRAIN_MOTIONS)
    assert {s for s, _, _, _ in combos} == set(toyworld.SHAPES)
    assert not {(s, m) for s, _, m, _ in combos} - set(toyworld.valid_pairs())
    assert len(set(combos)) == len(toyworld.valid_pairs()) * len(toyworld.COLORS) * len(toyworld.BACKGROUNDS)


_TINY_RUN = dict(vae_steps=2, refine_steps=2, batch_size=2, vae_batch_size=2, pool_size=4, log_every=1,
                 checkpoint_every=2)


def test_pretrain_checkpoints_resumes_and_matches_an_uninterrupted_run(tmp_path):
    torch.manual_seed(123)  # pretraining must not depend on the global random state
    straight = toyworld.pretrain(tmp_path / "straight", steps=3, **_TINY_RUN)
    interrupted = tmp_path / "interrupted"
    toyworld.pretrain(interrupted, steps=2, **_TINY_RUN)
    checkpoints = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert checkpoints == ["refine-0000002.safetensors", "unet-0000002.safetensors", "vae-0000002.safetensors"]
    assert not list(interrupted.rglob("*.tmp*"))
    toyworld.pretrain(interrupted, steps=3, **_TINY_RUN)  # the denoiser trains on: its old refinement is stale
    log = (interrupted / "log.txt").read_text()
    assert "vae: resumed from vae-0000002" in log and "unet: resumed from unet-0000002" in log
    assert "refine: resumed" not in log and log.count("refine: training steps 1 to 2") == 2
    toyworld.pretrain(interrupted, steps=3, **{**_TINY_RUN, "refine_steps": 3})  # a longer refinement resumes
    assert "refine: resumed from refine-0000002" in (interrupted / "log.txt").read_text()
    toyworld.pretrain(straight, steps=3, **{**_TINY_RUN, "refine_steps": 3})

    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(straight / weights), load_file(interrupted / weights)
    assert a.keys() == b.keys()
    for key in a:  # the same steps, up to floating-point rounding (kernels may sum in another order)
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    pipe = toyworld.load_pipeline(interrupted)
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the latents' spread
    assert pipe.tokenizer.get_vocab() == model.build_tokenizer().get_vocab()


def test_a_vae_trained_further_on_resume_encodes_the_pool_again_and_restarts_the_denoiser(tmp_path):
    out = toyworld.pretrain(tmp_path / "run", steps=2, **_TINY_RUN)
    earlier = load_file(out / "latents.safetensors")["latents"]
    toyworld.pretrain(out, steps=2, **{**_TINY_RUN, "vae_steps": 4})  # the VAE trains 2 steps more
    log = (out / "log.txt").read_text()
    assert "unet: not resuming unet-0000002" in log and "refine: not resuming refine-0000002" in log
    assert "unet: resumed" not in log and "refine: resumed" not in log
    assert not torch.equal(load_file(out / "latents.safetensors")["latents"], earlier)

    fresh = tmp_path / "fresh"  # a run whose VAE was at step 4 from the start: the same pool and denoiser
    (fresh / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "checkpoints" / "vae-0000004.safetensors", fresh / "checkpoints")
    toyworld.pretrain(fresh, steps=2, **{**_TINY_RUN, "vae_steps": 4})
    for name in ("latents.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        a, b = load_file(out / name), load_file(fresh / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_a_call_stopped_after_the_vae_trained_on_still_restarts_the_denoiser_on_resume(tmp_path, monkeypatch):
    out = toyworld.pretrain(tmp_path / "run", steps=2, **_TINY_RUN)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # the VAE trains to step 4, then the call stops before the pool
        patch.setattr(pretrain_module, "_latent_pool", stopped)
        with pytest.raises(KeyboardInterrupt):
            toyworld.pretrain(out, steps=2, **{**_TINY_RUN, "vae_steps": 4})
    toyworld.pretrain(out, steps=2, **{**_TINY_RUN, "vae_steps": 4})  # the VAE has nothing left to train
    log = (out / "log.txt").read_text().split("vae: resumed from vae-0000004")[-1]
    assert "unet: not resuming unet-0000002" in log and "unet: resumed" not in log


def test_pretrain_refuses_a_checkpoint_past_the_steps_asked_for(tmp_path):
    out = toyworld.pretrain(tmp_path / "run", steps=2, **_TINY_RUN)
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    exported = load_file(weights)
    with pytest.raises(ValueError, match=r"unet-0000002.safetensors is at step 2, past steps=1: .*resume=False"):
        toyworld.pretrain(out, steps=1, **_TINY_RUN)  # its step-2 weights are not the recipe with steps=1
    with pytest.raises(ValueError, match=r"refine-0000002.safetensors is at step 2, past refine_steps=1"):
        toyworld.pretrain(out, steps=2, **{**_TINY_RUN, "refine_steps": 1})
    assert all(torch.equal(tensor, exported[key]) for key, tensor in load_file(weights).items())  # left as it was


def test_an_export_stopped_half_way_leaves_no_loadable_mix(tmp_path, monkeypatch):
    out = toyworld.pretrain(tmp_path / "run", steps=2, **_TINY_RUN)
    replace = os.replace

    def stopped_at_the_denoiser(source, target):
        if "unet" in str(source):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", stopped_at_the_denoiser)
    with pytest.raises(KeyboardInterrupt):
        toyworld.pretrain(out, steps=2, **_TINY_RUN)  # nothing left to train: only the export runs again
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        toyworld.load_pipeline(out)
    monkeypatch.setattr(os, "replace", replace)
    toyworld.pretrain(out, steps=2, **_TINY_RUN)
    assert type(toyworld.load_pipeline(out).unet).__name__ == "UNet3DConditionModel"


def test_load_pipeline_explains_a_folder_without_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        toyworld.load_pipeline(tmp_path)


def test_frame_order_loss_asks_for_a_ramp_from_the_first_frame_to_the_last():
    unet = model.build_unet()
    frame_order = pretrain_module._FrameOrder(unet)
    frames = toyworld.NUM_FRAMES
    ramp = torch.linspace(-1.0, 1.0, frames)
    feature = torch.randn(2, frames, 32, 8, 8)  # (clips, frames, channels, h, w), as the hooked stack sees them
    feature[:, :, 0] = ramp.view(1, frames, 1, 1)
    frame_order._keep(None, None, feature.reshape(2 * frames, 32, 8, 8))
    assert frame_order.loss().item() == 0.0
    feature[:, :, 0] = ramp.flip(0).view(1, frames, 1, 1)  # the same frames in reverse order
    frame_order._keep(None, None, feature.reshape(2 * frames, 32, 8, 8))
    assert frame_order.loss().item() > 0.5

    unet(torch.randn(1, 4, frames, 8, 8), 10, torch.randn(1, 3, model.TEXT_DIM))
    assert frame_order.output is not None and frame_order.output.shape[0] == frames  # the hook sees the forward
    frame_order.remove()
    frame_order.output = None
    unet(torch.randn(1, 4, frames, 8, 8), 10, torch.randn(1, 3, model.TEXT_DIM))
    assert frame_order.output is None


def test_temporal_conv_init_identity_is_diffusers_and_random_is_not():
    def last_convs(unet):
        return [m.conv4[-1].weight for n, m in unet.named_modules() if n.endswith("temp_convs.0")]

    assert all(w.abs().max() == 0 for w in last_convs(pretrain_module._unet_for_training("identity")))
    assert all(w.abs().max() > 0 for w in last_convs(pretrain_module._unet_for_training("random")))


@pytest.mark.parametrize(
    ("option", "match"),
    [({"timestep_sampling": "late"}, "timestep_sampling 'late' is unknown"),
     ({"temporal_conv_init": "zeros"}, "temporal_conv_init must be"),
     ({"refine_min_t": 900, "refine_max_t": 100}, "refine_min_t <= refine_max_t"),
     pytest.param({"device": "cuda"}, "torch sees no GPU", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                                   reason="this machine has a GPU"))],
)  # fmt: skip
def test_pretrain_refuses_unknown_options_before_any_work(tmp_path, option, match):
    with pytest.raises(ValueError, match=match):
        toyworld.pretrain(tmp_path / "run", steps=1, **_TINY_RUN, **option)
    assert not (tmp_path / "run").exists()
