"""The training loop on the tiny pipeline, with clips the tests write themselves."""

import json
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file

import motion_adapter as ma
from motion_adapter import testing
from motion_adapter.adapter import lora_layers
from motion_adapter.format import read_adapter
from motion_adapter.training import cache, loop
from motion_adapter.training.config import TrainConfig
from motion_adapter.training.data import DataError
from motion_adapter.video import write_video

from .clips import moving_square, write_clips, write_images


def tiny_config(**changes) -> TrainConfig:
    base = dict(max_train_steps=3, num_frames=4, height=16, width=16, rank=4, validation_steps=2)
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def clips(tmp_path):
    return write_clips(tmp_path / "clips")


@pytest.fixture
def reg(tmp_path):
    return write_clips(tmp_path / "reg", 2, caption="a square moving right")


def test_a_few_steps_train_only_the_lora_and_leave_eval_mode(pipe, clips, reg, tmp_path):
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", reg_data=reg,
                             config=tiny_config(max_train_steps=4))
    assert result.steps == 4 and np.isfinite(result.final_loss)
    assert not any(m.training for m in pipe.unet.modules()) and not pipe.text_encoder.training
    after = pipe.unet.state_dict()
    lora = {k for k in after if ".lora_" in k}
    assert lora and all(".lora_A.pll." in k or ".lora_B.pll." in k for k in lora)
    assert any(after[k].abs().max() > 0 for k in lora if ".lora_B." in k)  # B started at zero: it learned
    assert all(torch.equal(after[k], base[k.replace(".base_layer", "")]) for k in after if k not in lora)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    info = ma.inspect(result.adapter_dir)
    assert info.tokens == ["pll"] and info.training["steps"] == 4 and info.training["num_reg_clips"] == 2
    assert info.training["timestep_sampling"] == "coarse" and info.training["reg_weight"] == 0.5
    fresh = testing.tiny_pipeline()
    fresh.load_motion_adapter(result.adapter_dir)  # the written adapter loads
    pipe.unload_motion_adapters()
    assert all(torch.equal(base[k], v) for k, v in pipe.unet.state_dict().items())  # base untouched


def test_the_main_process_leaves_the_progress_bar_to_tqdm_disable(pipe, clips, tmp_path, monkeypatch):
    """An explicit disable=False would override TQDM_DISABLE=1 (tqdm reads it when no value is passed)."""
    made = []
    real = loop.tqdm
    monkeypatch.setattr(loop, "tqdm", lambda *args, **kwargs: made.append(kwargs) or real(*args, **kwargs))
    ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=tiny_config(max_train_steps=1))
    assert made and "disable" not in made[0]


def test_regularization_draws_from_both_sets(pipe, clips, reg, tmp_path, monkeypatch):
    drawn = []
    original = cache.LatentStore.window
    monkeypatch.setattr(cache.LatentStore, "window", lambda self, i, w: drawn.append(len(self)) or original(self, i, w))
    ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", reg_data=reg, config=tiny_config())
    assert drawn == [3, 2] * 3  # one target clip (3 in the set) and one reg clip (2) per step


def _batch_sizes(unet) -> list[int]:
    sizes = []
    unet.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(args[0].shape[0]), with_kwargs=True)
    return sizes


def test_example_and_regularization_clips_share_one_forward_pass(pipe, clips, reg, tmp_path):
    sizes = _batch_sizes(pipe.unet)
    ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", reg_data=reg, config=tiny_config())
    assert sizes == [2] * 3


def test_subject_images_and_regularization_clips_take_a_pass_each(pipe, reg, tmp_path):
    sizes = _batch_sizes(pipe.unet)
    ma.train_subject(pipe, data=write_images(tmp_path / "photos"), token="<sks>", class_word="dog", reg_data=reg,
                     output_dir=tmp_path / "out", config=tiny_config())  # fmt: skip
    assert sizes == [1, 1] * 3  # a one-frame image and a clip cannot share a batch


def test_one_pass_gives_the_weighted_sum_of_each_clips_loss(pipe):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    example = loop._Draw(torch.randn(1, 4, 4, 8, 8), torch.randn(1, 4, 4, 8, 8), torch.tensor([900]), "", 1.0, False)
    regular = loop._Draw(torch.randn(1, 4, 4, 8, 8), torch.randn(1, 4, 4, 8, 8), torch.tensor([100]), "", 0.5, False)
    texts = torch.randn(2, 5, 32)
    pipe.unet.eval()  # no dropout: the same function of each clip in both passes
    with torch.no_grad():
        together = loop._group_loss(pipe.unet, scheduler, [example, regular], texts, torch.float32)
        apart = [loop._group_loss(pipe.unet, scheduler, [d], texts[i : i + 1], torch.float32)
                 for i, d in enumerate([example, regular])]  # fmt: skip
    assert torch.allclose(together, apart[0] + apart[1], rtol=1e-5)
    assert not torch.allclose(together, apart[0] + 2 * apart[1], rtol=1e-3)  # the 0.5 weight counted, not dropped


def test_loss_follows_the_prediction_type():
    from diffusers import DDPMScheduler

    latents, noise, t = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 4, 4), torch.tensor([500])
    v_scheduler = DDPMScheduler(prediction_type="v_prediction")
    assert torch.equal(loop._target(v_scheduler, latents, noise, t), v_scheduler.get_velocity(latents, noise, t))
    assert torch.equal(loop._target(DDPMScheduler(prediction_type="epsilon"), latents, noise, t), noise)
    assert torch.equal(loop._target(DDPMScheduler(prediction_type="sample"), latents, noise, t), latents)


def test_adamw_takes_the_fused_step_where_torch_has_one():
    on_cpu = loop._optimizer(TrainConfig(), [{"params": [torch.nn.Parameter(torch.zeros(3))]}])
    assert isinstance(on_cpu, torch.optim.AdamW) and on_cpu.defaults["fused"]
    on_meta = loop._optimizer(TrainConfig(), [{"params": [torch.nn.Parameter(torch.zeros(3, device="meta"))]}])
    assert not on_meta.defaults["fused"]  # no fused kernel there: torch's default
    under_fp16 = loop._optimizer(TrainConfig(mixed_precision="fp16"), [{"params": [torch.nn.Parameter(torch.ones(3))]}])
    assert not under_fp16.defaults["fused"]  # the loss scaler must see a step skipped on an overflow


def test_v_prediction_pipeline_trains(clips, tmp_path):
    pipe = testing.tiny_pipeline()
    pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=tiny_config())
    assert np.isfinite(result.final_loss)


def _adapter_tensors(folder):
    return load_file(folder / "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_training_stopped_half_way_leaves_the_pipeline_as_it_was(pipe, clips, tmp_path, monkeypatch, tuning):
    before = testing.generate(pipe, "a dog doing the pll")
    losses = []

    def stopped_at_the_second_step(*args):
        if losses:
            raise KeyboardInterrupt
        losses.append(loop_loss(*args))  # the first step trains: the pipeline has changed when the second stops
        return losses[0]

    loop_loss = loop._group_loss
    monkeypatch.setattr(loop, "_group_loss", stopped_at_the_second_step)
    config = tiny_config(tuning=tuning, learning_rate=1e-2, gradient_checkpointing=True, dtype="float32")
    with pytest.raises(KeyboardInterrupt):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    assert not lora_layers(pipe.unet) and not pipe.unet.training and not pipe.unet.is_gradient_checkpointing
    np.testing.assert_array_equal(testing.generate(pipe, "a dog doing the pll"), before)


def test_resume_reaches_the_same_adapter(clips, reg, tmp_path, monkeypatch):
    config = tiny_config(max_train_steps=6, checkpoint_every=3, dtype="float32")
    ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "straight",
                    reg_data=reg, config=config)

    calls = {"n": 0}
    original = loop.sample_timesteps

    def crash_in_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 8:  # two draws a step (target + reg): the fifth step crashes
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "sample_timesteps", crash_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "resumed",
                        reg_data=reg, config=config)
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["step-000003"]
    monkeypatch.setattr(loop, "sample_timesteps", original)
    ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "resumed",
                    reg_data=reg, config=config.replace(resume="latest"))
    straight, resumed = _adapter_tensors(tmp_path / "straight"), _adapter_tensors(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert max((straight[k] - resumed[k]).abs().max().item() for k in straight) < 1e-5
    assert any(straight[k].abs().max() > 0 for k in straight if ".lora_B." in k)  # it did learn something


def test_resume_with_another_config_is_refused(clips, tmp_path):
    config = tiny_config(max_train_steps=4, checkpoint_every=2)
    ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    with pytest.raises(ValueError, match="rank: checkpoint 4, now 8"):
        ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out",
                        config=config.replace(rank=8, resume="latest"))


def test_resume_of_a_checkpoint_trained_on_other_data_is_refused(clips, reg, tmp_path):
    config = tiny_config(max_train_steps=4, checkpoint_every=2)
    ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    recaptioned = write_clips(tmp_path / "other", 3, caption="a square doing the pll")  # the same files, captioned
    with pytest.raises(ValueError, match=r"step-000002 was written by a run with another config or data \(data: "
                       r"checkpoint \['3 clips, sha256 \w{12}'\], now \['3 clips, sha256 \w{12}'\]\)"):
        ma.train_motion(testing.tiny_pipeline(), data=recaptioned, token="pll", output_dir=tmp_path / "out",
                        config=config.replace(resume="latest"))
    with pytest.raises(ValueError, match=r"\(reg_data: checkpoint None, now '2 clips, sha256 \w{12}'\); resume with "
                       "the same settings and data, or start afresh in another output_dir"):
        ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out", reg_data=reg,
                        config=config.replace(resume="latest"))


def test_resume_after_a_frame_folders_images_changed_is_refused(tmp_path):
    frames = tmp_path / "clips" / "clip0"
    frames.mkdir(parents=True)
    for i, frame in enumerate(moving_square(6)):
        Image.fromarray(frame).save(frames / f"{i:03d}.png")
    config = tiny_config(max_train_steps=4, checkpoint_every=2)
    ma.train_motion(testing.tiny_pipeline(), data=tmp_path / "clips", token="pll", output_dir=tmp_path / "out",
                    config=config)  # fmt: skip
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noise).save(frames / "000.png")  # the same frame count, another image
    with pytest.raises(ValueError, match=r"step-000002 was written by a run with another config or data \(data:"):
        ma.train_motion(testing.tiny_pipeline(), data=tmp_path / "clips", token="pll", output_dir=tmp_path / "out",
                        config=config.replace(resume="latest"))


def test_a_checkpoint_of_an_earlier_version_resumes_with_a_warning_naming_what_it_lacks(clips, tmp_path):
    config = tiny_config(max_train_steps=4, checkpoint_every=2)
    ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    state = tmp_path / "out" / "checkpoints" / "step-000002" / "state.json"
    meta = json.loads(state.read_text())  # its key as written before the data was recorded
    del meta["key"]["data"], meta["key"]["reg_data"]
    state.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"step-000002 was written by an earlier motion_adapter, which did not record "
                      r"its data, reg_data: resuming without checking them"):
        result = ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out",
                                 config=config.replace(resume="latest"))
    assert result.steps == 4


def test_resume_with_another_token_or_architecture_or_past_the_end_is_refused(clips, tmp_path):
    config = tiny_config(max_train_steps=4, checkpoint_every=2)
    ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    both = write_clips(tmp_path / "both", 2, caption="a square doing the pll zz")
    with pytest.raises(ValueError, match=r"tokens: checkpoint \['pll'\], now \['zz'\]"):
        ma.train_motion(testing.tiny_pipeline(), data=both, token="zz", output_dir=tmp_path / "out",
                        config=config.replace(resume="latest"))
    wider = testing.tiny_pipeline()
    wider.unet = testing.tiny_unet3d(block_out_channels=(32, 96))
    with pytest.raises(ValueError, match="fingerprint: checkpoint"):
        ma.train_motion(wider, data=clips, token="pll", output_dir=tmp_path / "out",
                        config=config.replace(resume="latest"))
    with pytest.raises(ValueError, match="step-000002 is at step 2, past max_train_steps=1"):
        ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "out",
                        config=config.replace(max_train_steps=1, resume="latest"))


def test_validation_samples_and_card(pipe, clips, tmp_path):
    config = tiny_config(max_train_steps=4, validation_every=2, validation_prompts=["a dog doing the pll"])
    result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    names = sorted(p.name for p in (tmp_path / "out" / "samples").iterdir())
    assert names == ["step-000002-0.gif", "step-000004-0.gif"] and len(result.samples) == 2
    assert "![sample](sample.gif)" in (tmp_path / "out" / "README.md").read_text()


def test_a_failed_validation_sample_warns_and_the_run_and_its_adapter_go_on(pipe, clips, tmp_path):
    """A guidance scale this large makes the sampled frames NaN, as a half-precision overflow does."""
    config = tiny_config(max_train_steps=4, validation_every=2, validation_prompts=["a dog doing the pll"],
                         guidance_scale=1e30)  # fmt: skip
    with pytest.warns(UserWarning, match="validation sample of 'a dog doing the pll' at step [24] failed") as caught:
        result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    failed = [str(w.message) for w in caught if "validation sample" in str(w.message)]
    assert [message.split(" at step ")[1].split()[0] for message in failed] == ["2", "4"]  # mid-run and final
    assert all("NaN" in message for message in failed)
    assert result.steps == 4 and result.samples == []
    assert ma.inspect(tmp_path / "out").training["steps"] == 4  # the adapter is written all the same
    assert not any(m.training for m in pipe.unet.modules())


def test_a_failed_validation_prompt_leaves_the_others_sampled(pipe, clips, tmp_path, monkeypatch):
    sample = loop._sample

    def first_fails(pipe, prompt, config, *, seed):
        if prompt.startswith("a dog"):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return sample(pipe, prompt, config, seed=seed)

    monkeypatch.setattr(loop, "_sample", first_fails)
    config = tiny_config(max_train_steps=2, validation_prompts=["a dog doing the pll", "a cat doing the pll"])
    with pytest.warns(UserWarning, match="'a dog doing the pll' at step 2 failed.*OutOfMemoryError"):
        result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    assert [path.name for path in result.samples] == ["step-000002-1.gif"]


def test_an_interrupt_during_the_final_sample_leaves_the_trained_adapter_written(pipe, clips, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_sample", interrupted)
    config = tiny_config(max_train_steps=2, validation_prompts=["a dog doing the pll"])
    with pytest.raises(KeyboardInterrupt):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    assert ma.inspect(tmp_path / "out").training["steps"] == 2


def test_full_tuning_and_compression(pipe, clips, tmp_path):
    config = tiny_config(tuning="full", compress_to_rank=2, learning_rate=1e-3, dtype="float32")
    result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "full", config=config)
    trained = testing.generate(pipe, "a dog doing the pll")
    assert 0.0 < result.energy_kept <= 1.0
    assert ma.inspect(result.compressed_dir).rank == 2
    fresh = testing.tiny_pipeline()
    fresh.load_motion_adapter(result.adapter_dir)
    assert np.abs(testing.generate(fresh, "a dog doing the pll") - trained).max() < 1e-4  # the delta is exact
    pipe.unload_motion_adapters()
    np.testing.assert_array_equal(testing.generate(pipe, "a dog doing the pll"),
                                  testing.generate(testing.tiny_pipeline(), "a dog doing the pll"))


def test_subject_trains_spatial_lora_and_the_new_row_only(pipe, tmp_path):
    photos = write_images(tmp_path / "photos")
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    result = ma.train_subject(pipe, data=photos, token="<sks>", class_word="dog", output_dir=tmp_path / "out",
                              config=tiny_config(max_train_steps=3, learning_rate=1e-2))
    assert set(lora_layers(pipe.unet)) == set(ma.resolve_targets(pipe, "subject").module_names)
    new = pipe.text_encoder.get_input_embeddings().weight
    token_id = pipe.tokenizer.convert_tokens_to_ids("<sks>")
    assert torch.equal(new[: table.shape[0]], table)  # every old row as it was
    initial = table[pipe.tokenizer("dog", add_special_tokens=False).input_ids].mean(0)
    assert not torch.allclose(new[token_id], initial)  # the new row learned
    info = ma.inspect(result.adapter_dir)
    assert info.kind == "subject" and info.learned_tokens == ["<sks>"] and info.preset == "subject"


def test_a_learned_token_learns_with_punctuation_beside_it(pipe, tmp_path):
    photos = write_images(tmp_path / "photos")
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    ma.train_subject(pipe, data=photos, token="<sks>", class_word="dog", output_dir=tmp_path / "out",
                     caption_template="a photo of {token}, a {class_word}",
                     config=tiny_config(max_train_steps=3, learning_rate=1e-2))  # fmt: skip
    token_id = pipe.tokenizer.convert_tokens_to_ids("<sks>")
    initial = table[pipe.tokenizer("dog", add_special_tokens=False).input_ids].mean(0)
    assert not torch.allclose(pipe.text_encoder.get_input_embeddings().weight[token_id], initial)


def test_full_tuning_of_a_subject_changes_the_weights(pipe, tmp_path):
    photos = write_images(tmp_path / "photos")
    config = tiny_config(tuning="full", max_train_steps=3, learning_rate=1e-3, dtype="float32")
    result = ma.train_subject(pipe, data=photos, token="<sks>", class_word="dog", output_dir=tmp_path / "out",
                              config=config)  # fmt: skip
    saved = read_adapter(result.adapter_dir)
    assert list(saved.embeddings) == ["<sks>"]
    deltas = [pair.up.flatten(1) @ pair.down.flatten(1) for pair in saved.modules.values()]
    assert max(delta.abs().max().item() for delta in deltas) > 0  # a delta, not the placeholder's zeros


def test_images_bypass_the_temporal_layers(pipe):
    blocks = loop._temporal_blocks(pipe.unet)
    assert {type(b).__name__ for b in blocks} == {"TransformerTemporalModel", "TemporalConvLayer"}
    x, text = torch.randn(1, 4, 1, 8, 8), torch.randn(1, 5, 32)
    seen = []
    with torch.no_grad():
        plain = pipe.unet(x, 10, encoder_hidden_states=text).sample
        with loop._bypassed(blocks):  # hooks run in order: these see what the bypass made of each output
            handles = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in blocks]
            bypassed = pipe.unet(x, 10, encoder_hidden_states=text).sample
            for handle in handles:
                handle.remove()
    assert not torch.allclose(plain, bypassed)
    assert len(seen) == len(blocks)
    for inputs, output in seen:  # each block handed its input on unchanged
        assert torch.equal(inputs, output if isinstance(output, torch.Tensor) else output[0])


@pytest.mark.parametrize("bypass", [True, False])
def test_subject_images_bypass_the_temporal_layers_unless_told_not_to(pipe, tmp_path, monkeypatch, bypass):
    entered = []

    @contextmanager
    def counting(blocks):
        entered.append(len(blocks))
        yield

    monkeypatch.setattr(loop, "_bypassed", counting)
    config = tiny_config(max_train_steps=3, bypass_temporal_on_images=bypass)
    ma.train_subject(pipe, data=write_images(tmp_path / "photos"), token="<sks>", class_word="dog",
                     output_dir=tmp_path / "out", config=config)
    assert entered == ([len(loop._temporal_blocks(pipe.unet))] * 3 if bypass else [])
    # images that run through the temporal layers train them too
    assert ma.inspect(tmp_path / "out").preset == ("subject" if bypass else "subject+temporal")


def test_subject_images_keep_their_aspect_bucket(pipe, tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((16, 48, 3), 200, np.uint8)).save(tmp_path / "photos" / "wide.png")
    sizes = []
    original = cache.LatentStore.window

    def window(self, i, frames):
        latents = original(self, i, frames)  # (f, c, h, w)
        sizes.append(tuple(latents.shape[-2:]))
        return latents

    monkeypatch.setattr(cache.LatentStore, "window", window)
    ma.train_subject(pipe, data=tmp_path / "photos", token="<sks>", class_word="dog", output_dir=tmp_path / "out",
                     config=tiny_config(max_train_steps=1, bucket=True))  # fmt: skip
    [(height, width)] = sizes  # one step, one image
    assert width == 2 * height  # the 3:1 photo in the widest bucket (2:1), not center-cropped to a square


def test_joint_subject_and_motion_make_one_adapter_with_both_tokens(pipe, clips, tmp_path):
    photos = write_images(tmp_path / "photos")
    result = ma.train_subject(pipe, data=photos, token="<sks>", class_word="dog", output_dir=tmp_path / "out",
                              motion_data=clips, motion_token="pll", config=tiny_config(max_train_steps=4,
                              motion_first_steps=2))  # fmt: skip
    info = ma.inspect(result.adapter_dir)
    assert info.tokens == ["pll", "<sks>"] and info.learned_tokens == ["<sks>"]
    assert info.preset == "motion+appearance"
    fresh = testing.tiny_pipeline()
    fresh.load_motion_adapter(result.adapter_dir)
    assert fresh.tokenizer.convert_tokens_to_ids("<sks>") == len(fresh.tokenizer) - 1


# ---------------------------------------------------------------- bad input


def test_missing_and_empty_folders(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ma.train_motion(pipe, data=tmp_path / "nowhere", token="pll", output_dir=tmp_path / "o", config=tiny_config())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        ma.train_motion(pipe, data=tmp_path / "empty", token="pll", output_dir=tmp_path / "o", config=tiny_config())


def test_corrupt_clip_fails_or_is_skipped(pipe, clips, tmp_path):
    (clips / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4"):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "o", config=tiny_config())
    with pytest.warns(UserWarning, match="1 of 4"):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "o",
                        config=tiny_config(skip_bad_clips=True))


def test_clip_shorter_than_the_frames_asked(pipe, tmp_path):
    folder = tmp_path / "short"
    write_video(folder / "short.gif", moving_square(frames=3))
    with pytest.raises(DataError, match="short.gif"):
        ma.train_motion(pipe, data=folder, token="pll", output_dir=tmp_path / "o", config=tiny_config())


def test_captions_without_the_token(pipe, tmp_path):
    folder = write_clips(tmp_path / "clips", 2, caption="a square moving right")
    with pytest.raises(DataError, match="pll"):
        ma.train_motion(pipe, data=folder, token="pll", output_dir=tmp_path / "o", config=tiny_config())


def test_the_prompt_template_is_a_caption_the_data_was_trained_with(clips, tmp_path):
    own = write_clips(tmp_path / "own", caption="a square doing the pll")
    (own / "metadata.jsonl").write_text("".join(  # two of three clips share a caption: the most common is recorded
        json.dumps({"file_name": f"clip{i}.gif", "text": text}) + "\n"
        for i, text in enumerate(["a box doing the pll", "a square doing the pll", "a square doing the pll"])
    ))  # fmt: skip
    photos = write_images(tmp_path / "photos")
    (photos / "metadata.jsonl").write_text("".join(  # photo2 takes the template: the other caption is more common
        json.dumps({"file_name": f"photo{i}.png", "text": "<sks> on a sofa"}) + "\n" for i in range(2)
    ))  # fmt: skip
    config = tiny_config(max_train_steps=1)
    runs = [
        (ma.train_motion, dict(data=own, token="pll"), "a square doing the pll"),
        (ma.train_motion, dict(data=clips, token="pll"), "a person doing the pll"),  # uncaptioned: the template
        (ma.train_subject, dict(data=photos, token="<sks>", class_word="dog"), "<sks> on a sofa"),
    ]  # fmt: skip
    for index, (train, options, expected) in enumerate(runs):
        result = train(testing.tiny_pipeline(), output_dir=tmp_path / f"out{index}", config=config, **options)
        assert ma.inspect(result.adapter_dir).prompt_template == expected


def test_an_empty_word_or_a_file_for_output_dir_is_refused_before_any_work(pipe, clips, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_load_clips", lambda *a, **k: pytest.fail("the data was read before the check"))
    monkeypatch.setattr(loop, "_load_images", lambda *a, **k: pytest.fail("the data was read before the check"))
    with pytest.raises(ValueError, match="token='' is empty"):
        ma.train_motion(pipe, data=clips, token="", output_dir=tmp_path / "o", config=tiny_config())
    with pytest.raises(ValueError, match="class_word=' ' is empty"):
        ma.train_subject(pipe, data=clips, token="<sks>", class_word=" ", output_dir=tmp_path / "o")
    (tmp_path / "taken").write_text("")
    with pytest.raises(FileExistsError, match="taken is a file; give a folder"):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "taken", config=tiny_config())


def test_size_the_vae_cannot_divide(pipe, clips, tmp_path):
    with pytest.raises(ValueError, match="18"):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "o",
                        config=tiny_config(height=18, width=18))


def test_token_split_into_many_pieces_warns(pipe, clips, tmp_path):
    with pytest.warns(UserWarning, match="splits token 'wiggle' into 6 pieces"):
        ma.train_motion(pipe, data=clips, token="wiggle", output_dir=tmp_path / "o",
                        config=tiny_config(caption_template="a person doing the {token}"))


def test_learning_rate_schedules():
    constant = TrainConfig(max_train_steps=10, warmup_steps=4)
    assert [constant.lr_factor(k) for k in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    cosine = constant.replace(lr_schedule="cosine")
    assert [cosine.lr_factor(k) for k in (0, 3, 4, 7)] == pytest.approx([0.25, 1.0, 1.0, 0.5])
    assert 0 < cosine.lr_factor(9) < 0.1 and cosine.lr_factor(10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        TrainConfig(lr_schedule="linear")


def test_config_checks_and_toml(tmp_path):
    with pytest.raises(ValueError, match="timestep_sampling"):
        TrainConfig(timestep_sampling="coarser")
    with pytest.raises(ValueError, match="compress_to_rank needs tuning='full'"):
        TrainConfig(compress_to_rank=4)
    with pytest.raises(ValueError, match="dtype must be one of float16, bfloat16, float32"):
        TrainConfig(dtype="fp16")  # refused before training, not when the adapter is saved
    with pytest.raises(ValueError, match="num_reg_generated"):
        TrainConfig(num_reg_generated=0)
    assert "max_train_steps" not in TrainConfig().resume_key()  # a constant-rate run may be extended
    assert TrainConfig(lr_schedule="cosine").resume_key()["max_train_steps"] == 400
    assert TrainConfig(timestep_alpha=0.3).resume_key() != TrainConfig().resume_key()
    assert TrainConfig().lr == 1e-4 and TrainConfig(tuning="full").lr == 5e-6
    assert TrainConfig(rank=64).lr == pytest.approx(5e-5) and TrainConfig(rank=4).lr == pytest.approx(2e-4)
    assert TrainConfig(rank=64, tuning="full").lr == 5e-6 and TrainConfig(rank=64, learning_rate=1e-3).lr == 1e-3
    (tmp_path / "cfg.toml").write_text('[train]\nrank = 8\ntimestep_sampling = "cubic"\n')
    config = TrainConfig.from_toml(tmp_path / "cfg.toml", max_train_steps=9)
    assert (config.rank, config.timestep_sampling, config.max_train_steps) == (8, "cubic", 9)
    (tmp_path / "bad.toml").write_text("rnak = 8\n")
    with pytest.raises(ValueError, match="rnak"):
        TrainConfig.from_toml(tmp_path / "bad.toml")


def test_two_processes_under_accelerate_launch(tmp_path):
    """The loop runs unchanged under `accelerate launch` with two CPU processes; the main one writes the adapter.
    A subject whose token is in some captions only trains in step too (it hung when a process drew none)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    clips = write_clips(tmp_path / "clips", 4)
    photos = write_images(tmp_path / "photos", 4)
    captions = ["a photo of a <sks> dog", "a photo of a dog"] * 2
    lines = [json.dumps({"file_name": f"photo{i}.png", "text": text}) for i, text in enumerate(captions)]
    (photos / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    accelerate = Path(sys.executable).parent / "accelerate"
    script = Path(__file__).parent / "two_process_train.py"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(script),
               str(clips), str(tmp_path / "out"), str(photos)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    marks = sorted(p.name for p in tmp_path.glob("process-*.json"))
    assert marks == ["process-0-of-2.json", "process-1-of-2.json"]
    first, second = (json.loads((tmp_path / name).read_text()) for name in marks)
    assert first["checksum"] == pytest.approx(second["checksum"], abs=1e-6)  # the two processes stayed in step
    # warm-up over 2 steps, then cosine over the other 2, one schedule step per optimizer step in each process (rank 4's
    # default rate: 2e-4)
    assert first["rates"] == second["rates"] == pytest.approx([1e-4, 2e-4, 2e-4, 1e-4])
    assert ma.inspect(tmp_path / "out").training["steps"] == 4
    testing.tiny_pipeline().load_motion_adapter(tmp_path / "out")
    assert first["row"] == pytest.approx(second["row"], abs=1e-6)  # the learned row's gradient averaged too
    assert ma.inspect(tmp_path / "subject").learned_tokens == ["<sks>"]


def test_gradient_checkpointing_gives_the_same_gradients(pipe):
    ma.add_motion_adapter(pipe, "pll", rank=4)
    testing.randomize_adapter(pipe, "pll")
    pipe.unet.train()
    x, text = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 5, 32)

    def gradients():
        torch.manual_seed(0)  # the temporal convs' dropout draws the same masks each time
        pipe.unet.zero_grad()
        pipe.unet(x, 10, encoder_hidden_states=text).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in pipe.unet.named_parameters() if p.grad is not None}

    plain = gradients()
    loop._enable_checkpointing(pipe.unet)
    assert all("forward" in vars(block) for block in loop._checkpointed_blocks(pipe.unet))
    checkpointed = gradients()
    loop._disable_checkpointing(pipe.unet)
    assert not any("forward" in vars(block) for block in loop._checkpointed_blocks(pipe.unet))
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


def test_training_with_gradient_checkpointing(pipe, clips, tmp_path):
    result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out",
                             config=tiny_config(gradient_checkpointing=True))
    assert np.isfinite(result.final_loss)
    assert not any("forward" in vars(block) for block in loop._checkpointed_blocks(pipe.unet))


def test_disk_latent_cache_and_generated_regularization(pipe, clips, tmp_path, monkeypatch):
    drawn = []
    original = cache.LatentStore.window
    monkeypatch.setattr(
        cache.LatentStore, "window", lambda self, i, w: drawn.append((self.mode, self.examples)) or original(self, i, w)
    )
    config = tiny_config(latent_cache="disk", reg_source="generated", reg_prompts=["a square moving left"],
                         num_reg_generated=2)  # fmt: skip
    result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    assert sorted(p.name for p in (tmp_path / "out" / "latent_cache" / "clips").iterdir()) == [
        "0.safetensors", "1.safetensors", "2.safetensors"]  # fmt: skip
    assert len(list((tmp_path / "out" / "latent_cache" / "reg").iterdir())) == 2  # two generated clips
    assert drawn == [("disk", None)] * 6 and ma.inspect(result.adapter_dir).training["num_reg_clips"] == 2


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process; start and leave this test with none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_accumulation_warmup_and_bf16(pipe, clips, tmp_path, fresh_accelerator_state):
    config = tiny_config(gradient_accumulation_steps=2, warmup_steps=2, mixed_precision="bf16", validation_every=2,
                         validation_prompts=["a square doing the pll"])  # fmt: skip
    result = ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    assert result.steps == 3 and np.isfinite(result.final_loss)
    assert all(p.dtype == torch.float32 for n, p in pipe.unet.named_parameters() if ".lora_" in n)
    assert [p.name for p in result.samples] == ["step-000002-0.gif", "step-000003-0.gif"]  # sampled under autocast
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    assert testing.generate(pipe, "a square doing the pll").shape[0] == testing.TINY_NUM_FRAMES  # no fp32 wrapper left


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_a_subject_trains_in_bf16_and_leaves_each_model_in_one_dtype(pipe, tmp_path, fresh_accelerator_state, tuning):
    config = tiny_config(tuning=tuning, mixed_precision="bf16")
    ma.train_subject(pipe, data=write_images(tmp_path / "photos"), token="<sks>", class_word="dog",
                     output_dir=tmp_path / "out", config=config)  # fmt: skip
    # the text encoder, fp32 while its token learned, then cast as the other models are: one precision to generate in
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for name, p in pipe.unet.named_parameters() if ".lora_" not in name} == {torch.bfloat16}
    assert testing.generate(pipe, "a <sks> dog").shape[0] == testing.TINY_NUM_FRAMES
    saved = load_file(tmp_path / "out" / "learned_embeds.safetensors")["<sks>"].float()
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<sks>")].float()
    torch.testing.assert_close(saved, row, atol=0.02, rtol=0.01)  # saved from the fp32 row, before the cast


def test_a_second_run_in_another_mixed_precision_is_refused_naming_the_setting(clips, tmp_path,
                                                                                fresh_accelerator_state):
    config = tiny_config(max_train_steps=1)
    ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "a", config=config)
    with pytest.raises(ValueError, match=r"^TrainConfig\(mixed_precision='bf16'\) cannot take effect: accelerate "
                       r"keeps one .* already runs with 'no' .*; train with TrainConfig\(mixed_precision='no'\), or "
                       "in a new Python process"):
        ma.train_motion(testing.tiny_pipeline(), data=clips, token="pll", output_dir=tmp_path / "b",
                        config=config.replace(mixed_precision="bf16"))


def test_a_launcher_s_other_mixed_precision_is_named_in_a_warning(pipe, clips, tmp_path, fresh_accelerator_state,
                                                                   monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as `accelerate launch --mixed_precision bf16` sets
    with pytest.warns(UserWarning, match=r"accelerate launch asks for mixed precision 'bf16' "
                      r"\(ACCELERATE_MIXED_PRECISION\), but this run trains with TrainConfig\(mixed_precision='no'\)"):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out",
                        config=tiny_config(max_train_steps=1))
    assert AcceleratorState().mixed_precision == "no"  # the config's setting is the one in effect


def test_a_launcher_left_at_no_mixed_precision_asks_for_nothing(pipe, clips, tmp_path, fresh_accelerator_state,
                                                                  monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate launch sets when not told
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out",
                        config=tiny_config(max_train_steps=1, mixed_precision="bf16"))
    assert not [w for w in caught if "accelerate launch asks" in str(w.message)]
    assert AcceleratorState().mixed_precision == "bf16"


def test_a_half_precision_pipeline_is_refused_without_mixed_precision(pipe, clips, tmp_path):
    pipe.to(torch.bfloat16)
    with pytest.raises(ValueError, match="mixed_precision='bf16'"):
        ma.train_motion(pipe, data=clips, token="pll", output_dir=tmp_path / "out", config=tiny_config())
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_subject_trains_on_a_pipeline_already_in_bf16(pipe, tmp_path, fresh_accelerator_state):
    pipe.to(torch.bfloat16)
    ma.train_subject(pipe, data=write_images(tmp_path / "photos"), token="<sks>", class_word="dog",
                     output_dir=tmp_path / "out", config=tiny_config(mixed_precision="bf16"))  # fmt: skip
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    rows = pipe.text_encoder.get_input_embeddings().weight
    start = rows[pipe.tokenizer("dog", add_special_tokens=False).input_ids].mean(dim=0)  # as learn_token starts it
    assert not torch.equal(rows[pipe.tokenizer.convert_tokens_to_ids("<sks>")], start)  # the token learned
