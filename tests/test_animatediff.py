"""AnimateDiff (UNetMotionModel): a row of the target table, and the adapter format read and written both ways."""

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

import motion_adapter as ma
from motion_adapter import testing
from motion_adapter.adapter import lora_layers
from motion_adapter.targets import architecture_fingerprint

from .training.clips import write_clips


@pytest.fixture
def anim():
    return testing.tiny_animatediff_pipeline()


def test_motion_preset_selects_motion_modules_and_cross_kv(anim):
    spec = ma.resolve_targets(anim, "motion")
    assert all(".motion_modules." in n for n in spec.groups["temporal"])
    assert all(n.endswith(("attn2.to_k", "attn2.to_v")) and ".attentions." in n for n in spec.groups["spatial_kv"])


def test_keyword_called_projections_are_never_selected(anim):
    """diffusers calls the motion modules' proj_in/proj_out as proj_in(input=x), which a LoRA layer rejects."""
    spec = ma.resolve_targets(anim, r"motion_modules")
    assert spec.module_names and not any(n.endswith(("proj_in", "proj_out")) for n in spec.module_names)


def test_an_adapter_changes_generation(anim):
    base = testing.generate(anim)
    ma.add_motion_adapter(anim, "pll", rank=4, token="pll")
    testing.randomize_adapter(anim, "pll")
    assert np.abs(testing.generate(anim) - base).max() > 1e-3


def test_training_runs_on_animatediff(anim, tmp_path):
    clips = write_clips(tmp_path / "clips")
    config = ma.TrainConfig(max_train_steps=2, num_frames=4, height=16, width=16, rank=4)
    result = ma.train_motion(anim, data=clips, token="pll", output_dir=tmp_path / "out", config=config)
    assert np.isfinite(result.final_loss) and ma.inspect(result.adapter_dir).base_class == "UNetMotionModel"


def test_our_adapter_loads_with_diffusers_own_loader(tmp_path):
    source = testing.tiny_animatediff_pipeline()
    ma.add_motion_adapter(source, "pll", rank=4, token="pll")
    testing.randomize_adapter(source, "pll")
    folder = ma.save_motion_adapter(source, "pll", tmp_path / "pll", dtype="float32")
    ours = testing.tiny_animatediff_pipeline()
    ours.load_motion_adapter(folder)
    native = testing.tiny_animatediff_pipeline()
    native.load_lora_weights(folder, adapter_name="pll")
    np.testing.assert_allclose(testing.generate(native), testing.generate(ours), atol=1e-5)
    assert np.abs(testing.generate(native) - testing.generate(testing.tiny_animatediff_pipeline())).max() > 1e-3


def test_a_lora_saved_by_diffusers_loads_here(tmp_path):
    made_elsewhere = testing.tiny_animatediff_pipeline()
    targets = ["to_k", "to_v", "to_q"]
    made_elsewhere.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    state = get_peft_model_state_dict(made_elsewhere.unet)
    metadata = made_elsewhere.unet.peft_config["default"].to_dict()
    AnimateDiffPipeline.save_lora_weights(tmp_path / "foreign", unet_lora_layers=state,
                                          unet_lora_adapter_metadata=metadata)
    expected = testing.generate(made_elsewhere)

    pipe = testing.tiny_animatediff_pipeline()
    name = pipe.load_motion_adapter(tmp_path / "foreign")
    info = ma.inspect(tmp_path / "foreign")
    assert info.kind == "lora" and info.rank == 4 and info.alpha == 8.0  # rank and alpha from diffusers' header
    assert len(lora_layers(pipe.unet)) == len(state) // 2
    np.testing.assert_allclose(testing.generate(pipe), expected, atol=1e-5)
    ours = ma.save_motion_adapter(pipe, name, tmp_path / "ours", dtype="float32")  # saved in this library's form
    assert ma.inspect(ours).kind == "motion"
    again = testing.tiny_animatediff_pipeline()
    again.load_motion_adapter(ours)
    np.testing.assert_allclose(testing.generate(again), expected, atol=1e-5)
    pipe.delete_motion_adapter(name)
    assert not lora_layers(pipe.unet)
    assert torch.equal(pipe.unet.conv_in.weight, testing.tiny_animatediff_pipeline().unet.conv_in.weight)


def test_a_lora_without_alpha_warns_that_it_loads_at_scale_one(tmp_path):
    made_elsewhere = testing.tiny_animatediff_pipeline()
    made_elsewhere.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_k"], init_lora_weights=False))
    AnimateDiffPipeline.save_lora_weights(
        tmp_path / "bare", unet_lora_layers=get_peft_model_state_dict(made_elsewhere.unet)
    )
    with pytest.warns(UserWarning, match="records no LoRA alpha"):
        testing.tiny_animatediff_pipeline().load_motion_adapter(tmp_path / "bare")


def test_a_lora_on_a_layer_that_cannot_carry_one_is_refused_on_loading(tmp_path):
    made_elsewhere = testing.tiny_animatediff_pipeline()
    projections = r".*motion_modules\.\d+\.proj_in"
    made_elsewhere.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=projections, init_lora_weights=False))
    state, metadata = get_peft_model_state_dict(made_elsewhere.unet), made_elsewhere.unet.peft_config["default"]
    AnimateDiffPipeline.save_lora_weights(tmp_path / "proj", unet_lora_layers=state,
                                          unet_lora_adapter_metadata=metadata.to_dict())
    pipe = testing.tiny_animatediff_pipeline()
    with pytest.raises(ma.IncompatibleAdapterError, match=r"motion_modules\.0\.proj_in, which cannot carry a LoRA"):
        pipe.load_motion_adapter(tmp_path / "proj")
    assert not lora_layers(pipe.unet)


def test_a_lora_loaded_by_diffusers_stays_on_beside_ours_and_after_unload(anim, tmp_path):
    for name, seed in (("style", 5), ("pll", 0)):
        source = testing.tiny_animatediff_pipeline()
        ma.add_motion_adapter(source, name, rank=4, token=name)
        testing.randomize_adapter(source, name, seed=seed)
        ma.save_motion_adapter(source, name, tmp_path / name, dtype="float32")
    anim.load_lora_weights(tmp_path / "style", adapter_name="style")
    style_only = testing.generate(anim)
    both = testing.tiny_animatediff_pipeline()
    for name in ("style", "pll"):
        both.load_motion_adapter(tmp_path / name)
    anim.load_motion_adapter(tmp_path / "pll")
    np.testing.assert_allclose(testing.generate(anim), testing.generate(both), atol=1e-5)
    with pytest.raises(ma.AdapterStateError, match="already carries a LoRA named 'style'.*load_lora_weights"):
        anim.load_motion_adapter(tmp_path / "pll", adapter_name="style")
    anim.unload_motion_adapters()
    assert list(anim.unet.peft_config) == ["style"]
    np.testing.assert_array_equal(testing.generate(anim), style_only)


def test_an_ip_adapter_on_the_model_leaves_its_fingerprint_and_adapters_load(anim, tmp_path):
    source = testing.tiny_animatediff_pipeline()
    ma.add_motion_adapter(source, "pll", rank=4, token="pll")
    folder = ma.save_motion_adapter(source, "pll", tmp_path / "pll")
    before = architecture_fingerprint(anim.unet)
    for name, module in anim.unet.named_modules():  # what pipe.load_ip_adapter puts into the model
        if isinstance(module, Attention) and name.endswith("attn2") and "motion_modules" not in name:
            module.set_processor(IPAdapterAttnProcessor2_0(hidden_size=module.inner_dim, cross_attention_dim=32))
    anim.unet.encoder_hid_proj = MultiIPAdapterImageProjection([ImageProjection(32, 32, num_image_text_embeds=4)])
    assert any(".processor." in name for name, _ in anim.unet.named_parameters())
    assert architecture_fingerprint(anim.unet) == before
    anim.load_motion_adapter(folder)


def test_a_lora_diffusers_fused_must_be_unfused_before_ours_come_in(anim, tmp_path):
    source = testing.tiny_animatediff_pipeline()
    ma.add_motion_adapter(source, "style", rank=4, token="style")
    ma.save_motion_adapter(source, "style", tmp_path / "style")
    anim.load_lora_weights(tmp_path / "style", adapter_name="style")
    anim.fuse_lora()
    with pytest.raises(ma.AdapterStateError, match=r"fused into this pipeline's model.*pipe.unfuse_lora\(\) to load"):
        anim.load_motion_adapter(tmp_path / "style", adapter_name="pll")
    anim.unfuse_lora()
    anim.load_motion_adapter(tmp_path / "style", adapter_name="pll")
