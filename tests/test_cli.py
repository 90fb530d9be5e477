import dataclasses
import functools
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import motion_adapter as ma
from motion_adapter.cli import build_parser, main
from motion_adapter.training import loop
from motion_adapter.training.config import TrainConfig
from motion_adapter.video import read_video

from .conftest import make_adapter
from .training.clips import write_clips, write_images


def test_inspect_prints_the_header(adapter_dir, capsys):
    assert main(["inspect", str(adapter_dir)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "kind             motion", "tokens           pll", "preset           motion", "rank / alpha     4 / 4"
    ):
        assert expected in out


def test_inspect_json(adapter_dir, capsys):
    assert main(["inspect", str(adapter_dir), "--json"]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["tokens"] == ["pll"] and header["file_bytes"] > 0


def test_inspect_bad_file_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("motion-adapter inspect:") and "damaged" in err and "Traceback" not in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "motion-adapter"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "inspect" in result.stdout


def test_train_flags_come_from_train_config():
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in help_text
    assert "the paper's: more high-noise steps" in help_text


def test_train_then_generate_end_to_end(base_dir, tmp_path, capsys):
    clips = write_clips(tmp_path / "clips")
    (tmp_path / "train.toml").write_text("rank = 2\nnum_frames = 4\nheight = 16\nwidth = 16\n")
    assert main(["train", "--base", str(base_dir), "--data", str(clips), "--token", "pll", "--output-dir",
                 str(tmp_path / "pll"), "--config", str(tmp_path / "train.toml"), "--max-train-steps", "2",
                 "--timestep-sampling", "cubic", "--no-gradient-checkpointing"]) == 0  # fmt: skip
    info = ma.inspect(tmp_path / "pll")
    assert info.rank == 2 and info.training["steps"] == 2 and info.training["timestep_sampling"] == "cubic"
    assert main(["generate", "--base", str(base_dir), "--adapter", f"{tmp_path / 'pll'}:0.7", "--prompt",
                 "a dog doing the pll", "--frames", "4", "--height", "16", "--width", "16", "--steps", "2",
                 "--out", str(tmp_path / "clip.gif")]) == 0  # fmt: skip
    assert "loaded pll at weight 0.7" in capsys.readouterr().out
    assert read_video(tmp_path / "clip.gif")[0].shape == (4, 16, 16, 3)


def test_train_subject_command(base_dir, tmp_path):
    photos = write_images(tmp_path / "photos")
    assert main(["train-subject", "--base", str(base_dir), "--data", str(photos), "--token", "<sks>", "--class-word",
                 "dog", "--output-dir", str(tmp_path / "sks"), "--max-train-steps", "2", "--height", "16", "--width",
                 "16", "--rank", "2"]) == 0  # fmt: skip
    assert ma.inspect(tmp_path / "sks").learned_tokens == ["<sks>"]


def test_train_subject_takes_its_own_image_captions_and_layers(base_dir, tmp_path, monkeypatch):
    calls = {}

    def train_subject(pipe, **kwargs):
        calls.update(kwargs)
        return SimpleNamespace(adapter_dir=tmp_path / "sks", steps=0, final_loss=0.0, seconds=0.0)

    monkeypatch.setattr(loop, "train_subject", train_subject)
    command = ["train-subject", "--base", str(base_dir), "--data", str(write_images(tmp_path / "photos")), "--token",
               "<sks>", "--class-word", "dog", "--output-dir", str(tmp_path / "sks")]  # fmt: skip
    assert main([*command, "--image-caption-template", "a photo of {token}, a {class_word}"]) == 0
    assert calls["caption_template"] == "a photo of {token}, a {class_word}"
    with pytest.raises(SystemExit):  # the motion's --preset would be ignored: --subject-preset picks the layers
        build_parser().parse_args([*command, "--preset", "motion"])


def test_on_a_gpu_the_base_loads_on_the_process_s_own_device_in_fp32_to_train_in_fp16_to_generate(monkeypatch):
    import accelerate
    import torch
    from diffusers import DiffusionPipeline

    from motion_adapter import cli

    loaded = []
    pipe = SimpleNamespace(to=lambda device: loaded.append(device) or pipe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(device=torch.device("cuda", 3)))
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained",
                        lambda name, torch_dtype: loaded.append(torch_dtype) or pipe)  # fmt: skip
    cli._load_base("user/base", training=True)  # mixed precision casts what it trains under, from fp32
    cli._load_base("user/base")
    assert loaded == [torch.float32, torch.device("cuda", 3), torch.float16, torch.device("cuda", 3)]


def test_bad_training_input_is_one_clear_line(base_dir, tmp_path, capsys):
    assert main(["train", "--base", str(base_dir), "--data", str(tmp_path / "none"), "--token", "pll",
                 "--output-dir", str(tmp_path / "o")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("motion-adapter train:") and "none does not exist" in err and "Traceback" not in err


def test_push_command_wraps_push_to_hub(adapter_dir, monkeypatch, capsys):
    calls = {}
    monkeypatch.setattr(ma.hub, "push_to_hub", lambda folder, repo_id, **kw: calls.update(kw, repo=repo_id) or "url")
    assert main(["push", str(adapter_dir), "user/pll", "--private", "--revision", "v1", "--token", "hf_x"]) == 0
    assert calls["repo"] == "user/pll" and calls["private"] is True and calls["revision"] == "v1"
    assert "hf_x" not in capsys.readouterr().out


def test_pretrain_flags_follow_the_function(monkeypatch, tmp_path):
    calls = {}
    module = importlib.import_module("motion_adapter.toyworld.pretrain")  # the package exports a function by that name
    fake = functools.wraps(module.pretrain)(lambda out, **kw: calls.update(kw) or out)  # keeps the signature
    monkeypatch.setattr(module, "pretrain", fake)
    assert main(["toyworld", "pretrain", "--out", str(tmp_path), "--steps", "5", "--token-init-std", "1.0",
                 "--no-resume"]) == 0  # fmt: skip
    assert calls == {"steps": 5, "token_init_std": 1.0, "resume": False}


@pytest.mark.parametrize("command", ["train", "train-subject"])
def test_a_bad_setting_is_refused_before_the_base_model_loads(command, tmp_path, monkeypatch, capsys):
    from motion_adapter import cli

    monkeypatch.setattr(cli, "_load_base", lambda *a, **k: pytest.fail("the base loaded before the config's check"))
    (tmp_path / "bad.toml").write_text("rank = \n")
    args = [command, "--data", str(write_images(tmp_path / "photos")), "--token", "pll", "--output-dir",
            str(tmp_path / "o"), *(["--class-word", "dog"] if command == "train-subject" else [])]  # fmt: skip
    assert main([*args, "--rank", "0"]) == 2
    assert capsys.readouterr().err.startswith(f"motion-adapter {command}: TrainConfig: rank must be >= 1")
    assert main([*args, "--config", str(tmp_path / "bad.toml")]) == 2
    assert "bad.toml is not valid TOML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),  # once a ZeroDivisionError
        (["--frames", "0"], "argument --frames: must be >= 1, got 0"),  # once a reshape error
        (["--height", "0"], "argument --height: must be >= 1, got 0"),
        (["--fps", "0"], "argument --fps: must be >= 1, got 0"),  # once refused only after generating
        (["--steps", "two"], "argument --steps: 'two' is not a whole number"),
    ],
)
def test_generate_refuses_bad_options_before_loading_anything(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["generate", "--prompt", "a dog doing the pll", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_demo_steps_must_be_at_least_one(monkeypatch, capsys):
    demo = importlib.import_module("motion_adapter.toyworld.demo")
    configs = []
    monkeypatch.setattr(demo, "run_demo", lambda out, config, **kw: configs.append(config) or {})
    monkeypatch.setattr(demo, "format_table", lambda metrics: "")
    with pytest.raises(SystemExit):  # 0 once ran the whole recipe
        main(["demo", "--steps", "0"])
    assert "argument --steps: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--steps", "3"]) == 0 and configs[0].max_train_steps == 3


def test_demo_runs_on_a_base_folder_given(tmp_path, monkeypatch, capsys):
    demo, model = (importlib.import_module(f"motion_adapter.toyworld.{name}") for name in ("demo", "model"))
    runs = []
    monkeypatch.setattr(demo, "run_demo", lambda out, pipe, **kw: runs.append(pipe) or {})
    monkeypatch.setattr(demo, "format_table", lambda metrics: "")
    monkeypatch.setattr(model, "load_pipeline", lambda folder=None: f"pipeline of {folder}")
    assert main(["demo", "--base", str(tmp_path)]) == 0 and main(["demo"]) == 0
    assert runs == [f"pipeline of {tmp_path}", None]  # None: run_demo loads the shipped base


def test_a_base_folder_that_is_no_pipeline_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from diffusers import DiffusionPipeline

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda name, torch_dtype: pytest.fail("loaded " + name))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for base, problem in (("./nope", "does not exist"), (str(tmp_path / "nope"), "does not exist"),
                          ("empty", "is not a pipeline folder (no model_index.json)")):  # fmt: skip
        assert main(["generate", "--base", base, "--prompt", "a dog doing the pll"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"motion-adapter generate: base {base} {problem}") and "holds model_index.json" in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fps", "60", "--out", "clip.gif"], "fps=60 is outside"),
        (["--out", "clip.png"], "Cannot write clip.png: unsupported suffix '.png'. Supported: .gif, .mp4."),
    ],
)
def test_generate_refuses_a_file_it_cannot_write_before_loading_anything(flags, message, monkeypatch, capsys):
    from motion_adapter import cli

    monkeypatch.setattr(cli, "_load_base", lambda *a, **k: pytest.fail("the base was loaded before the check"))
    assert main(["generate", "--prompt", "a dog doing the pll", *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_error_names_the_toyworld_subcommand(monkeypatch, capsys):
    ablation = importlib.import_module("motion_adapter.toyworld.ablation")
    monkeypatch.setattr(ablation, "run_ablation", lambda out, **options: (_ for _ in ()).throw(ValueError("no grid")))
    assert main(["toyworld", "ablate", "--out", "x"]) == 2
    assert capsys.readouterr().err.strip() == "motion-adapter toyworld ablate: no grid"


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_the_tiny_world_s_id_loads_the_shipped_base_offline(offline, tmp_path, capsys):
    from motion_adapter.constants import TOYWORLD_BASE_ID

    assert main(["generate", "--base", TOYWORLD_BASE_ID, "--prompt", "a red circle moving left", "--frames", "2",
                 "--steps", "1", "--out", str(tmp_path / "clip.gif")]) == 0  # fmt: skip
    assert read_video(tmp_path / "clip.gif")[0].shape == (2, 32, 32, 3)


def test_a_base_id_that_cannot_be_loaded_is_one_clear_line(offline, capsys):
    assert main(["generate", "--base", "nobody/no-such-base", "--prompt", "a dog doing the pll"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("motion-adapter generate: base nobody/no-such-base could not be loaded")
    assert "Traceback" not in err
    for fix in ("Check the id", "local pipeline folder", "HF_HUB_OFFLINE=1", "--base motion-adapter/toyworld"):
        assert fix in err


def test_a_base_folder_missing_a_part_is_named_as_such(base_dir, tmp_path, capsys):
    broken = shutil.copytree(base_dir, tmp_path / "base")
    for weights in (broken / "unet").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    assert main(["generate", "--base", str(broken), "--prompt", "a dog doing the pll"]) == 2
    err = capsys.readouterr().err
    assert f"base {broken} could not be loaded: " in err and "unet" in err and "no local folder" not in err


def test_generate_numbers_adapters_whose_folders_share_a_name(base_dir, tmp_path, capsys):
    first = make_adapter(tmp_path / "run1" / "adapter", token="pll")  # the demo writes OUT/adapter on every run
    second = make_adapter(tmp_path / "run2" / "adapter", token="zig", seed=1)
    assert main(["generate", "--base", str(base_dir), "--adapter", str(first), "--adapter", f"{second}:0.5",
                 "--prompt", "a dog doing the pll and the zig", "--frames", "2", "--height", "16", "--width", "16",
                 "--steps", "1", "--out", str(tmp_path / "clip.gif")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "loaded adapter at weight 1" in out and "loaded adapter-2 at weight 0.5" in out


def test_a_hint_that_names_a_setting_names_its_flag_too(base_dir, tmp_path, monkeypatch, capsys):
    import torch

    clips = write_clips(tmp_path / "clips")
    (clips / "broken.mp4").write_bytes(b"\x00garbage" * 64)
    assert main(["train", "--base", str(base_dir), "--data", str(clips), "--token", "pll", "--output-dir",
                 str(tmp_path / "pll"), "--num-frames", "4", "--height", "16", "--width", "16"]) == 2  # fmt: skip
    assert "pass skip_bad_clips=True (--skip-bad-clips)" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["toyworld", "pretrain", "--out", str(tmp_path / "base"), "--device", "cuda"]) == 2
    assert "use device='cpu' (--device cpu)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, message",
    [
        (["train", "--data", "{empty}", "--token", "pll"], "No clips found in"),
        (["train", "--data", "{clips}", "--reg-data", "{empty}", "--token", "pll"], "No clips found in"),
        (["train-subject", "--data", "{empty}", "--token", "sks", "--class-word", "dog"], "No images found in"),
        (["train-subject", "--data", "{clips}", "--token", "sks", "--class-word", "dog"], "No images found in"),
        (["generate", "--adapter", "{missing}", "--prompt", "a dog"], "no adapter at"),
    ],
)
def test_no_data_or_adapter_is_refused_before_the_base_loads(command, message, tmp_path, monkeypatch, capsys):
    from motion_adapter import cli

    monkeypatch.setattr(cli, "_load_base", lambda *a, **k: pytest.fail("the base loaded before the check"))
    (tmp_path / "empty").mkdir()
    paths = {"empty": tmp_path / "empty", "clips": write_clips(tmp_path / "clips"), "missing": tmp_path / "missing"}
    output = [] if command[0] == "generate" else ["--output-dir", str(tmp_path / "out")]
    assert main([part.format(**paths) for part in command] + output) == 2
    assert message in capsys.readouterr().err


def test_a_relative_base_folder_is_recorded_as_its_absolute_path(base_dir, monkeypatch):
    from motion_adapter import cli
    from motion_adapter.pipeline import base_model_id

    monkeypatch.chdir(base_dir.parent)  # "./base" in a header would name another folder from anywhere else
    assert base_model_id(cli._load_base(f"./{base_dir.name}")) == str(base_dir.resolve())
