import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

import motion_adapter as ma
from motion_adapter import adapter, testing
from motion_adapter import format as fmt
from motion_adapter.adapter import lora_layers

from .conftest import assert_same_snapshot, make_adapter, pipeline_snapshot


def test_methods_are_registered_on_diffusers_pipelines(pipe):
    for name in ("load_motion_adapter", "set_motion_adapters", "fuse_motion_adapters", "unfuse_motion_adapters",
                 "unload_motion_adapters"):
        assert callable(getattr(DiffusionPipeline, name)) and callable(getattr(pipe, name))


def test_only_selected_modules_get_lora_and_only_they_train(pipe):
    spec = ma.add_motion_adapter(pipe, "pll", preset="motion", rank=4)
    assert sorted(lora_layers(pipe.unet)) == spec.module_names
    trainable = {name for name, p in pipe.unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.pll." in n or ".lora_B.pll." in n for n in trainable)
    assert len(trainable) == 2 * len(spec.module_names)
    # gradients reach exactly those parameters
    latents = torch.randn(1, 4, testing.TINY_NUM_FRAMES, 8, 8)
    text = torch.randn(1, 5, 32)
    testing.randomize_adapter(pipe, "pll")
    pipe.unet(latents, 10, encoder_hidden_states=text).sample.square().mean().backward()
    with_grad = {n for n, p in pipe.unet.named_parameters() if p.grad is not None}
    assert with_grad == trainable


def test_loading_or_mixing_leaves_a_trainable_adapter_trainable(pipe, adapter_dir):
    ma.add_motion_adapter(pipe, "mine", rank=4, token="mine")
    trainable = {name for name, p in pipe.unet.named_parameters() if p.requires_grad}
    pipe.load_motion_adapter(adapter_dir)  # another adapter beside the one being trained
    pipe.set_motion_adapters(["mine", "pll"], [1.0, 0.5])
    assert trainable and {name for name, p in pipe.unet.named_parameters() if p.requires_grad} == trainable


def test_weights_are_real_numbers_of_any_kind_but_bools(pipe, adapter_dir):
    pipe.load_motion_adapter(adapter_dir, weight=np.float32(0.5))
    with pytest.raises(ma.AdapterStateError, match="weights must be finite numbers"):
        pipe.set_motion_adapters(["pll"], [True])


def test_fresh_adapter_is_identity_and_trained_one_changes_output(pipe, base_frames):
    ma.add_motion_adapter(pipe, "pll", rank=4)
    np.testing.assert_array_equal(testing.generate(pipe), base_frames)
    testing.randomize_adapter(pipe, "pll")
    assert np.abs(testing.generate(pipe) - base_frames).max() > 1e-2


def test_weight_zero_gives_the_base_output(pipe, adapter_dir, base_frames):
    pipe.load_motion_adapter(adapter_dir, weight=0.0)
    np.testing.assert_array_equal(testing.generate(pipe), base_frames)


@pytest.mark.parametrize("single_file", [False, True])
def test_save_then_load_reproduces_the_output(tmp_path, single_file):
    source = testing.tiny_pipeline()
    ma.add_motion_adapter(source, "pll", rank=4, token="pll")
    testing.randomize_adapter(source, "pll")
    expected = testing.generate(source)
    path = tmp_path / ("pll.safetensors" if single_file else "pll")
    ma.save_motion_adapter(source, "pll", path, dtype="float32")
    fresh = testing.tiny_pipeline()
    assert fresh.load_motion_adapter(path) == "pll"
    assert np.abs(testing.generate(fresh) - expected).max() < 1e-5


def test_second_adapter_keeps_the_first_active(pipe, tmp_path):
    first = make_adapter(tmp_path / "a", name="a", token="a", seed=1)
    second = make_adapter(tmp_path / "b", name="b", token="b", seed=2)
    pipe.load_motion_adapter(first)
    pipe.load_motion_adapter(second, weight=0.5)
    assert ma.motion_adapter_weights(pipe) == {"a": 1.0, "b": 0.5}
    layer = next(iter(lora_layers(pipe.unet).values()))
    assert layer.active_adapters == ["a", "b"]


def test_two_weighted_adapters_equal_the_deltas_merged_by_hand(tmp_path):
    a = make_adapter(tmp_path / "a", name="a", token="a", seed=1)
    b = make_adapter(tmp_path / "b", name="b", token="b", seed=2)
    composed = testing.tiny_pipeline()
    composed.load_motion_adapter(a)
    composed.load_motion_adapter(b)
    composed.set_motion_adapters(["a", "b"], weights=[0.7, -0.4])
    got = testing.generate(composed)

    by_hand = testing.tiny_pipeline()
    modules = dict(by_hand.unet.named_modules())
    with torch.no_grad():
        for path, weight in ((a, 0.7), (b, -0.4)):
            for name, pair in ma.format.read_adapter(path).modules.items():
                delta = pair.up.flatten(1) @ pair.down.flatten(1) * (pair.alpha / pair.rank) * weight
                modules[name].weight += delta.reshape(modules[name].weight.shape)
    assert np.abs(testing.generate(by_hand) - got).max() < 1e-4


def test_fused_equals_unfused_and_unfuse_restores(pipe, adapter_dir, tmp_path):
    pipe.load_motion_adapter(adapter_dir)
    pipe.load_motion_adapter(make_adapter(tmp_path / "b", name="b", token="b", seed=3), weight=0.5)
    unfused = testing.generate(pipe)
    base = {n: layer.get_base_layer().weight.detach().clone() for n, layer in lora_layers(pipe.unet).items()}
    pipe.fuse_motion_adapters()
    assert not lora_layers(pipe.unet)  # a fused model runs the base model's own layers: no overhead
    assert np.abs(testing.generate(pipe) - unfused).max() < 1e-4
    with pytest.raises(ma.AdapterStateError, match="already fused"):
        pipe.fuse_motion_adapters()
    with pytest.raises(ma.AdapterStateError, match="unfuse"):
        pipe.set_motion_adapters(["pll"], [0.3])
    pipe.unfuse_motion_adapters()
    for name, layer in lora_layers(pipe.unet).items():
        assert torch.equal(layer.get_base_layer().weight, base[name])
    assert np.array_equal(testing.generate(pipe), unfused)
    pipe.fuse_motion_adapters()  # fused again after an unfuse: the same mix, folded in once
    assert np.abs(testing.generate(pipe) - unfused).max() < 1e-4


def test_unload_restores_the_base_bit_for_bit(pipe, adapter_dir, base_frames):
    before = pipeline_snapshot(pipe)
    pipe.load_motion_adapter(adapter_dir)
    pipe.unload_motion_adapters()
    assert not lora_layers(pipe.unet) and not hasattr(pipe.unet, "peft_config")
    assert_same_snapshot(before, pipeline_snapshot(pipe))
    np.testing.assert_array_equal(testing.generate(pipe), base_frames)


def test_unload_after_fuse_restores_the_base_bit_for_bit(pipe, adapter_dir, base_frames):
    before = pipeline_snapshot(pipe)
    pipe.load_motion_adapter(adapter_dir)
    pipe.fuse_motion_adapters()
    pipe.unload_motion_adapters()
    assert not lora_layers(pipe.unet)
    assert_same_snapshot(before, pipeline_snapshot(pipe))
    np.testing.assert_array_equal(testing.generate(pipe), base_frames)


def test_a_model_cast_while_fused_takes_its_loras_along(pipe, adapter_dir):
    cast_unfused = testing.tiny_pipeline()
    cast_unfused.load_motion_adapter(adapter_dir)
    cast_unfused.to(torch.float64)
    pipe.load_motion_adapter(adapter_dir)
    pipe.fuse_motion_adapters()
    pipe.to(torch.float64)
    pipe.unfuse_motion_adapters()
    assert {p.dtype for name, p in pipe.unet.named_parameters() if ".lora_" in name} == {torch.float64}
    np.testing.assert_array_equal(testing.generate(pipe), testing.generate(cast_unfused))
    pipe.fuse_motion_adapters()
    pipe.unet.to("meta")  # stands in for another device, as pipe.to("cuda") would move the model
    pipe.unfuse_motion_adapters()
    assert {p.device.type for p in pipe.unet.parameters()} == {"meta"}


def test_pipelines_sharing_a_model_do_not_take_each_others_adapters(pipe, adapter_dir, tmp_path):
    pipe.load_motion_adapter(adapter_dir)
    with_pll = testing.generate(pipe)
    other = type(pipe)(**pipe.components)
    with pytest.raises(ma.AdapterStateError, match="already carries a LoRA named 'pll'.*another pipeline sharing"):
        other.load_motion_adapter(make_adapter(tmp_path / "b", name="b", token="b", seed=3), adapter_name="pll")
    other.load_motion_adapter(tmp_path / "b")
    other.unload_motion_adapters()
    np.testing.assert_array_equal(testing.generate(pipe), with_pll)


def test_enable_disable_delete(pipe, adapter_dir, tmp_path, base_frames):
    pipe.load_motion_adapter(adapter_dir)
    with_pll = testing.generate(pipe)
    pipe.disable_motion_adapters()
    np.testing.assert_array_equal(testing.generate(pipe), base_frames)
    pipe.enable_motion_adapters("pll")
    np.testing.assert_array_equal(testing.generate(pipe), with_pll)
    pipe.load_motion_adapter(make_adapter(tmp_path / "b", name="b", token="b", seed=5))
    pipe.delete_motion_adapter("b")
    np.testing.assert_array_equal(testing.generate(pipe), with_pll)
    assert list(ma.motion_adapter_weights(pipe)) == ["pll"]


def test_learned_tokens_are_added_on_load_and_removed_on_unload(tmp_path):
    source = testing.tiny_pipeline()
    ma.add_motion_adapter(source, "dog", preset="appearance", rank=4, kind="subject")
    ma.learn_token(source, "dog", "<sks>", init_from="dog")
    row = torch.arange(32, dtype=torch.float32) / 32
    with torch.no_grad():
        source.text_encoder.get_input_embeddings().weight[source.tokenizer.convert_tokens_to_ids("<sks>")] = row
    path = ma.save_motion_adapter(source, "dog", tmp_path / "dog")
    assert ma.inspect(path).learned_tokens == ["<sks>"]

    pipe = testing.tiny_pipeline()
    vocab = len(pipe.tokenizer)
    pipe.load_motion_adapter(path)
    token_id = pipe.tokenizer.convert_tokens_to_ids("<sks>")
    assert len(pipe.tokenizer) == vocab + 1 and token_id == vocab
    torch.testing.assert_close(pipe.text_encoder.get_input_embeddings().weight[token_id], row, atol=1e-3, rtol=0)
    assert pipe.tokenizer("a <sks> doing the pll").input_ids.count(token_id) == 1
    pipe.unload_motion_adapters()
    assert len(pipe.tokenizer) == vocab and "<sks>" not in pipe.tokenizer.get_vocab()
    assert pipe.text_encoder.get_input_embeddings().num_embeddings == vocab


def test_a_learned_token_can_be_loaded_under_another_name(tmp_path, pipe):
    source = testing.tiny_pipeline()
    ma.add_motion_adapter(source, "dog", preset="appearance", rank=4, kind="subject")
    ma.learn_token(source, "dog", "<sks>", init_from="dog")
    path = ma.save_motion_adapter(source, "dog", tmp_path / "dog")
    pipe.load_motion_adapter(path, adapter_name="dog1")
    with pytest.raises(ma.AdapterStateError, match="already claimed by adapter 'dog1'; load this one with token="):
        pipe.load_motion_adapter(path, adapter_name="dog2")
    pipe.load_motion_adapter(path, adapter_name="dog2", token="<v2>")
    assert {"<sks>", "<v2>"} <= set(pipe.tokenizer.get_vocab())


def test_a_word_the_tokenizer_has_is_refused_with_the_fix_for_learning_or_loading(tmp_path, pipe):
    source = testing.tiny_pipeline()
    ma.add_motion_adapter(source, "dog", preset="appearance", rank=4, kind="subject")
    source.tokenizer.add_tokens(["<v>"])
    with pytest.raises(ma.AdapterStateError, match="'<v>' is already a word .* learn a word the tokenizer lacks"):
        ma.learn_token(source, "dog", "<v>", init_from="dog")
    ma.learn_token(source, "dog", "<sks>", init_from="dog")
    path = ma.save_motion_adapter(source, "dog", tmp_path / "dog")
    pipe.tokenizer.add_tokens(["<sks>"])
    with pytest.raises(ma.AdapterStateError, match="'<sks>' is already a word .* with token='<<sks>>'"):
        pipe.load_motion_adapter(path)


def test_a_learned_embedding_for_another_text_encoder_is_refused_naming_the_file(tmp_path, pipe):
    folder = make_adapter(tmp_path / "pll")
    loaded = fmt.read_adapter(folder)
    fmt.write_adapter(tmp_path / "sks", loaded.info, loaded.modules, embeddings={"<sks>": torch.zeros(7)})
    message = r"sks: the learned embedding of token '<sks>' has size 7, this text encoder's is 32"
    _refused(pipe, lambda: pipe.load_motion_adapter(tmp_path / "sks"), ma.IncompatibleAdapterError, message)


def test_a_token_added_by_someone_else_outlives_the_adapters(tmp_path, pipe):
    source = testing.tiny_pipeline()
    ma.add_motion_adapter(source, "dog", preset="appearance", rank=4, kind="subject")
    ma.learn_token(source, "dog", "<sks>", init_from="dog")
    pipe.load_motion_adapter(ma.save_motion_adapter(source, "dog", tmp_path / "dog"))
    pipe.tokenizer.add_tokens(["<toy>"])  # a textual inversion loaded after the adapter
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    table = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[pipe.tokenizer.convert_tokens_to_ids("<toy>")] = 0.25
    pipe.delete_motion_adapter("dog")
    vocab = pipe.tokenizer.get_vocab()
    assert "<sks>" not in vocab and "<toy>" in vocab
    row = pipe.text_encoder.get_input_embeddings().weight[vocab["<toy>"]]
    assert torch.all(row == 0.25)


# ---------------------------------------------------------------- bad input leaves the pipeline as it was


def _refused(pipe, call, error, match):
    before = pipeline_snapshot(pipe)
    with pytest.raises(error, match=match):
        call()
    assert_same_snapshot(before, pipeline_snapshot(pipe))


def test_adapter_for_another_architecture(pipe, tmp_path, adapter_dir):
    pipe.load_motion_adapter(adapter_dir)  # something loaded already: it must survive the refusal
    other = testing.tiny_pipeline()
    other.unet = testing.tiny_unet3d(block_out_channels=(32, 32))
    ma.add_motion_adapter(other, "x", rank=4, token="x")
    path = ma.save_motion_adapter(other, "x", tmp_path / "x")
    _refused(pipe, lambda: pipe.load_motion_adapter(path), ma.IncompatibleAdapterError,
             r"at module \S+ the adapter has lora_A \(4, \d+.*\) / lora_B .* needs")


def test_adapter_for_another_fingerprint(pipe, tmp_path, monkeypatch):
    path = make_adapter(tmp_path / "pll")
    monkeypatch.setattr(ma.pipeline, "architecture_fingerprint", lambda denoiser: "0000000000000000")
    _refused(pipe, lambda: pipe.load_motion_adapter(path), ma.IncompatibleAdapterError, "another architecture")


def test_other_checkpoint_of_same_architecture_warns_or_refuses(pipe, adapter_dir, monkeypatch):
    monkeypatch.setattr(ma.pipeline, "base_model_id", lambda pipe: "someone/other-checkpoint")
    info_base = "trained on"
    ma.format.read_info(adapter_dir)
    # the fixture adapter has no base model id: give it one through a re-save
    source = testing.tiny_pipeline()
    source.load_motion_adapter(adapter_dir)
    source._motion_state.adapters["pll"].info.base_model = "cerspense/zeroscope_v2_576w"
    path = ma.save_motion_adapter(source, "pll", adapter_dir.parent / "with_base")
    _refused(pipe, lambda: pipe.load_motion_adapter(path, strict=True), ma.IncompatibleAdapterError, "strict")
    with pytest.warns(UserWarning, match=info_base):
        pipe.load_motion_adapter(path)


def test_corrupt_file(pipe, adapter_dir):
    weights = adapter_dir / "pytorch_lora_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _refused(pipe, lambda: pipe.load_motion_adapter(adapter_dir), ma.AdapterFormatError, "damaged")


def test_pickle_file(pipe, tmp_path):
    torch.save({}, tmp_path / "lora.bin")
    _refused(pipe, lambda: pipe.load_motion_adapter(tmp_path / "lora.bin"), ma.AdapterFormatError, "pickle")


def test_name_already_loaded(pipe, adapter_dir):
    pipe.load_motion_adapter(adapter_dir)
    _refused(pipe, lambda: pipe.load_motion_adapter(adapter_dir), ma.AdapterStateError, "already loaded")


def test_an_unknown_kind_is_refused_before_training(pipe):
    _refused(pipe, lambda: ma.add_motion_adapter(pipe, "pll", kind="subjects"), ValueError, "kind='subjects'")


def test_token_clash_names_both(pipe, adapter_dir, tmp_path):
    pipe.load_motion_adapter(adapter_dir)
    other = make_adapter(tmp_path / "other", name="other", token="pll", seed=4)
    clash = r"'other'.*claimed by adapter 'pll'.*only training with another token.*delete_motion_adapter\('pll'\)"
    _refused(pipe, lambda: pipe.load_motion_adapter(other), ma.AdapterStateError, clash)


def test_a_token_the_tokenizer_reads_as_a_claimed_one_is_refused(pipe, adapter_dir, tmp_path):
    pipe.load_motion_adapter(adapter_dir)
    other = make_adapter(tmp_path / "other", name="other", token="PLL", seed=4)
    clash = r"token 'PLL' of adapter 'other' is already claimed by adapter 'pll' \(which this tokenizer reads as its"
    _refused(pipe, lambda: pipe.load_motion_adapter(other), ma.AdapterStateError, clash)


def test_missing_local_path(pipe):
    _refused(pipe, lambda: pipe.load_motion_adapter("./no/such/adapter"), ma.AdapterNotFoundError, "does not exist")


@pytest.mark.parametrize(
    "names, weights, match",
    [(["nope"], [1.0], "no adapter named 'nope'"), (["pll"], [1.0, 2.0], "one weight per adapter"),
     (["pll"], [float("nan")], "finite"), (["pll"], [float("inf")], "finite"),
     (["pll"], [{"temporl": 1.0}], "no group temporl; its groups are spatial_kv, temporal")],
)
def test_bad_composition_requests(pipe, adapter_dir, names, weights, match):
    pipe.load_motion_adapter(adapter_dir)
    _refused(pipe, lambda: pipe.set_motion_adapters(names, weights), ma.AdapterStateError, match)


def test_a_load_with_a_group_the_adapter_lacks_is_refused(pipe, adapter_dir):
    _refused(pipe, lambda: pipe.load_motion_adapter(adapter_dir, weight={"temporl": 0.0}), ma.AdapterStateError,
             "no group temporl; its groups are spatial_kv, temporal")  # fmt: skip


def test_a_new_sample_replaces_the_old_one(pipe, adapter_dir, tmp_path):
    pipe.load_motion_adapter(adapter_dir)
    for suffix in (".gif", ".mp4"):
        (tmp_path / f"clip{suffix}").write_bytes(b"frames")
        ma.save_motion_adapter(pipe, "pll", tmp_path / "out", sample=tmp_path / f"clip{suffix}")
    assert sorted(p.name for p in (tmp_path / "out").glob("sample.*")) == ["sample.mp4"]
    assert "sample.mp4" in (tmp_path / "out" / "README.md").read_text()


def test_failed_injection_is_rolled_back(pipe, adapter_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(adapter, "set_state", broken)
    _refused(pipe, lambda: pipe.load_motion_adapter(adapter_dir), RuntimeError, "disk on fire")
    assert not lora_layers(pipe.unet)


def test_per_group_weights_touch_only_their_group(pipe, adapter_dir):
    pipe.load_motion_adapter(adapter_dir, weight={"temporal": 0.0, "spatial_kv": 0.6})
    for name, layer in lora_layers(pipe.unet).items():
        expected = 0.0 if ".attentions." not in name else 0.6  # spatial k/v live in the spatial attentions
        assert layer.scaling["pll"] == pytest.approx(expected * layer.lora_alpha["pll"] / layer.r["pll"])
    with_kv_only = testing.generate(pipe)
    by_hand = testing.tiny_pipeline()
    modules = dict(by_hand.unet.named_modules())
    with torch.no_grad():
        for name, pair in ma.format.read_adapter(adapter_dir).modules.items():
            if ".attentions." in name:
                delta = pair.up.flatten(1) @ pair.down.flatten(1) * (pair.alpha / pair.rank) * 0.6
                modules[name].weight += delta.reshape(modules[name].weight.shape)
    assert np.abs(testing.generate(by_hand) - with_kv_only).max() < 1e-4


def test_prompt_check_warns_about_tokens_no_adapter_provides(pipe, adapter_dir):
    pipe.load_motion_adapter(adapter_dir)
    assert ma.check_prompt(pipe, "a dog doing the pll") == []
    pipe.disable_motion_adapters("pll")
    with pytest.warns(UserWarning, match="'pll', which no enabled adapter provides"):
        assert ma.check_prompt(pipe, "a dog doing the pll") == ["pll"]
    with pytest.warns(UserWarning, match="'<sks>'"):
        ma.generate(pipe, "a <sks> dog", num_frames=2, height=16, width=16, num_inference_steps=1)
