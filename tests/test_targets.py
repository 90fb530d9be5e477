import pytest
import torch
from diffusers import UNet3DConditionModel
from torch import nn

import motion_adapter as ma
from motion_adapter.targets import ARCHITECTURES, architecture_fingerprint
from motion_adapter.testing import tiny_unet3d


@pytest.fixture(scope="module")
def full_size_unet():
    with torch.device("meta"):
        return UNet3DConditionModel()


def test_motion_preset_on_full_size_zeroscope_unet(full_size_unet):
    spec = ma.resolve_targets(full_size_unet, preset="motion")
    assert len(spec.module_names) == 324
    assert round(spec.num_params / 1e6, 1) == 570.6
    assert len(spec.groups["temporal"]) == 292
    assert round(spec.params_by_group["temporal"] / 1e6, 1) == 545.1
    assert len(spec.groups["spatial_kv"]) == 32
    assert round(spec.params_by_group["spatial_kv"] / 1e6, 1) == 25.6


def test_presets_select_the_paper_layers(full_size_unet):
    temporal = ma.resolve_targets(full_size_unet, "temporal")
    kv = ma.resolve_targets(full_size_unet, "spatial-kv")
    motion = ma.resolve_targets(full_size_unet, "motion")
    assert sorted(temporal.module_names + kv.module_names) == motion.module_names
    assert all(n.endswith(("attn2.to_k", "attn2.to_v")) and ".attentions." in n for n in kv.module_names)
    assert all("temp_" in n or n.startswith("transformer_in.") for n in temporal.module_names)
    # every temporal conv's Conv3d is selected, its GroupNorm never
    modules = dict(full_size_unet.named_modules())
    assert all(isinstance(modules[n], (nn.Linear, nn.Conv3d)) for n in motion.module_names)
    convs = [n for n in temporal.module_names if ".temp_convs." in n]
    assert convs and all(isinstance(modules[n], nn.Conv3d) for n in convs)


def test_appearance_preset_is_spatial_attention_projections(full_size_unet):
    spec = ma.resolve_targets(full_size_unet, "appearance")
    suffixes = ("to_q", "to_k", "to_v", "to_out.0")
    assert all(".attentions." in n and n.endswith(suffixes) for n in spec.module_names)
    assert not any("temp_" in n or n.startswith("transformer_in") for n in spec.module_names)
    assert set(spec.groups) == {"spatial_kv", "spatial_attn"}
    # attn1 and attn2 of each spatial transformer block: 4 + 4 projections, minus none
    assert len(spec.module_names) == 4 * len(ma.resolve_targets(full_size_unet, "spatial-kv").module_names)


def test_subject_preset_is_spatial_attention_but_the_texts_keys_and_values(full_size_unet):
    subject = ma.resolve_targets(full_size_unet, "subject")
    kv = ma.resolve_targets(full_size_unet, "spatial-kv")
    appearance = ma.resolve_targets(full_size_unet, "appearance")
    assert sorted(subject.module_names + kv.module_names) == appearance.module_names
    assert not any(n.endswith(("attn2.to_k", "attn2.to_v")) for n in subject.module_names)
    assert any(n.endswith("attn2.to_q") for n in subject.module_names)
    assert set(subject.groups) == {"spatial_attn"}


def test_regex_preset_keeps_table_roles(pipe):
    spec = ma.resolve_targets(pipe, r"attn2\.to_k$")
    assert spec.module_names and all(n.endswith("attn2.to_k") for n in spec.module_names)
    assert set(spec.groups) == {"temporal", "spatial_kv"}


def test_explain_lists_groups(pipe):
    text = ma.resolve_targets(pipe, "motion").explain()
    assert "temporal" in text and "spatial_kv" in text and "total" in text


def test_preset_matching_nothing_names_class_and_presets(pipe):
    with pytest.raises(ma.TargetError, match=r"UNet3DConditionModel.*motion, temporal, spatial-kv, appearance"):
        ma.resolve_targets(pipe, "no_such_layer")


def test_unknown_architecture_is_explained():
    class Denoiser(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ma.TargetError, match="not in the target table"):
        ma.resolve_targets(Denoiser(), "motion")
    assert ma.resolve_targets(Denoiser(), r"^proj$").module_names == ["proj"]
    named_like_a_preset = nn.Module()
    named_like_a_preset.motion = nn.Linear(4, 4)  # a preset's name is not read as a regex on a class the table lacks
    with pytest.raises(ma.TargetError, match="preset 'motion' names layers.*not in the target table"):
        ma.resolve_targets(named_like_a_preset, "motion")


def test_a_misspelled_part_of_joined_presets_is_named(pipe):
    with pytest.raises(ma.TargetError, match="no preset 'apperance' \\(in 'motion\\+apperance'\\); presets for"):
        ma.resolve_targets(pipe, "motion+apperance")


def test_pipeline_without_denoiser_is_refused():
    with pytest.raises(TypeError, match="no `unet` or `transformer`"):
        ma.resolve_targets(object(), "motion")


def test_table_rows_are_consistent():
    for arch in ARCHITECTURES:
        for preset, roles in arch.presets.items():
            assert set(roles) <= set(arch.roles), f"{arch.name}: preset {preset} names an unknown role"


def test_fingerprint_tracks_architecture_not_weights():
    assert architecture_fingerprint(tiny_unet3d(seed=0)) == architecture_fingerprint(tiny_unet3d(seed=1))
    assert architecture_fingerprint(tiny_unet3d()) != architecture_fingerprint(tiny_unet3d(block_out_channels=(32, 32)))


def test_injected_lora_changes_neither_fingerprint_nor_selection(pipe):
    fingerprint, names = architecture_fingerprint(pipe.unet), ma.resolve_targets(pipe, "motion").module_names
    ma.add_motion_adapter(pipe, "pll")
    assert architecture_fingerprint(pipe.unet) == fingerprint
    assert ma.resolve_targets(pipe, "motion").module_names == names
