"""Each example runs as written against the tiny pipeline saved to a local folder (no downloads here)."""

import importlib.util
from pathlib import Path

import motion_adapter as ma
from motion_adapter import testing
from motion_adapter.video import read_video

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name, *argv):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(list(argv))


def test_every_example_is_tested():
    tested = {"generate_with_adapters", "your_own_training_loop", "show_targets", "offline_tour"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_generate_with_two_weighted_adapters(base_dir, tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 2)):
        pipe = testing.tiny_pipeline()
        ma.add_motion_adapter(pipe, name, rank=4, token=name)
        testing.randomize_adapter(pipe, name, seed=seed)
        ma.save_motion_adapter(pipe, name, tmp_path / name)
    run_example("generate_with_adapters", "--base", str(base_dir), "--adapter", str(tmp_path / "a"),
                str(tmp_path / "b"), "--weights", "1.0", "-0.5", "--fuse", "--frames", "4", "--height", "16",
                "--width", "16", "--steps", "2", "--out", str(tmp_path / "clip.mp4"))
    assert "loaded a at weight 1.0, b at weight -0.5" in capsys.readouterr().out
    assert read_video(tmp_path / "clip.mp4")[0].shape == (4, 16, 16, 3)


def test_show_targets(base_dir, capsys):
    run_example("show_targets", "--base", str(base_dir), "--rank", "4")
    out = capsys.readouterr().out
    assert "preset 'motion'" in out and "preset 'appearance'" in out and "rank-4 LoRA" in out


def test_the_offline_tour_runs_every_example(tmp_path, capsys):
    run_example("offline_tour", "--out", str(tmp_path), "--steps", "2")
    out = capsys.readouterr().out
    assert "preset 'motion'" in out and "step 0 loss" in out and "loaded pll at weight 1.0" in out
    assert ma.inspect(tmp_path / "pll").tokens == ["pll"]
    frames, _ = read_video(tmp_path / "clip.gif")
    assert frames.shape == (4, 16, 16, 3)
