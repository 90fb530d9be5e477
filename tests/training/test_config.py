import math

import pytest

from motion_adapter.training.config import TrainConfig


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rank": "8"}, r"rank must be int, not '8' \(str\)"),
        ({"max_train_steps": 2.5}, r"max_train_steps must be int, not 2.5 \(float\)"),
        ({"max_train_steps": True}, r"max_train_steps must be int, not True \(bool\)"),  # bool is no count here
        ({"bucket": "no"}, r"bucket must be bool, not 'no' \(str\)"),
        ({"dropout": "0.1"}, r"dropout must be float, not '0.1' \(str\)"),
        ({"alpha": [8]}, r"alpha must be float or None, not \[8\] \(list\)"),
        ({"validation_prompts": "a pll"},  # once iterated letter by letter into five prompts
         "validation_prompts must be list.str. or None, not the str 'a pll': give a list of prompts"),
        ({"reg_source": "generated", "reg_prompts": "a dog"}, "reg_prompts .* give a list of prompts"),
        ({"validation_prompts": ["a pll", 3]}, "validation_prompts must be list.str. or None"),
    ],
)
def test_a_value_of_another_type_than_the_field_s_is_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=f"^TrainConfig: {message}"):
        TrainConfig(**changes)


def test_ints_pass_for_floats_and_tuples_for_prompt_lists():
    config = TrainConfig(learning_rate=1, alpha=8, fps=12, validation_prompts=("a dog doing the pll",))
    assert config.lr == 1 and config.lora_alpha == 8.0 and list(config.validation_prompts) == ["a dog doing the pll"]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"weight_decay": -0.01}, "weight_decay"),
        ({"weight_decay": math.nan}, "weight_decay"),
        ({"alpha": 0}, "alpha"),  # an adapter scaled by 0 changes nothing
        ({"alpha": -4.0}, "alpha"),
    ],
)
def test_values_that_cannot_train_are_refused(changes, field):
    with pytest.raises(ValueError, match=f"TrainConfig: {field} must be finite"):
        TrainConfig(**changes)


def test_a_toml_file_s_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("rank = \n")
    with pytest.raises(ValueError, match=r"broken\.toml is not valid TOML: Invalid value \(at line 1"):
        TrainConfig.from_toml(broken)
    typed = tmp_path / "typed.toml"
    typed.write_text('[train]\nrank = "8"\n')
    with pytest.raises(ValueError, match=r"typed\.toml: rank must be int, not '8' \(str\)"):
        TrainConfig.from_toml(typed)


def test_a_joint_run_trains_the_motion_first_as_the_paper_does():
    assert TrainConfig(max_train_steps=10).motion_first == 5  # by default the first half
    assert TrainConfig(max_train_steps=10, motion_first_steps=0).motion_first == 0  # alternating from the start
    with pytest.raises(ValueError, match="motion_first_steps must be >= 0"):
        TrainConfig(motion_first_steps=-1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"max_train_steps": 10, "motion_first_steps": 10}, "motion_first_steps=10 must be < max_train_steps=10, or "
         "a joint run never trains the subject"),
        ({"max_train_steps": 10, "warmup_steps": 12}, "warmup_steps=12 must be < max_train_steps=10, or the learning "
         "rate never reaches learning_rate"),
        ({"fps": 12, "frame_stride": 2}, r"fps=12 resamples clips in place of frame_stride=2: give one of the two"),
        ({"reg_weight": math.inf}, "reg_weight must be finite and >= 0"),
        ({"reg_weight": math.nan}, "reg_weight must be finite and >= 0"),
    ],
)
def test_settings_that_would_do_nothing_or_fail_later_are_refused_at_once(changes, message):
    with pytest.raises(ValueError, match=f"^TrainConfig: {message}"):
        TrainConfig(**changes)


def test_the_limits_themselves_are_accepted():
    config = TrainConfig(max_train_steps=10, motion_first_steps=9, warmup_steps=9, fps=12, reg_weight=0)
    assert config.motion_first == 9 and config.lr_factor(9) == 1.0  # the subject's one step, at the full rate
