"""The demo on the shipped base: a quick variant (a few training steps) runs end to end and writes every output."""

import json

import pytest
from PIL import Image

from motion_adapter import toyworld
from motion_adapter.cli import main
from motion_adapter.toyworld import demo
from motion_adapter.toyworld.world import parse_caption
from motion_adapter.video import read_video


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    metrics = demo.run_demo(out, motion="orbit", seed=1, config=toyworld.train_config(max_train_steps=3),
                            prompts_per_appearance=1)  # fmt: skip
    return out, metrics


def test_the_demo_writes_every_output(quick_demo):
    out, metrics = quick_demo
    assert (out / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "adapter" / "README.md").is_file()
    assert len(list((out / "examples").glob("*.gif"))) == 6
    assert len(list((out / "regularization").glob("*.gif"))) == 12
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert len(samples) == 2 * len(demo.NEW_APPEARANCES) and "00-base.gif" in samples and "00-customized.gif" in samples
    assert read_video(out / "samples" / "00-customized.gif")[0].shape == (
        toyworld.NUM_FRAMES, toyworld.SIZE, toyworld.SIZE, 3
    )
    picture = Image.open(out / "comparison.png")
    assert picture.width >= toyworld.SIZE * demo.PICTURE_SCALE and picture.height > picture.width / 8
    assert read_video(out / "comparison.gif")[0].shape[0] == toyworld.NUM_FRAMES
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("motion_accuracy", "motion_accuracy_base", "appearance_accuracy", "copy_score"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["train_steps"] == 3 and len(saved["clips"]) == len(demo.NEW_APPEARANCES)
    table = demo.format_table(metrics)
    assert "motion accuracy" in table and metrics["clips"][0]["prompt"] in table


def test_examples_show_the_motion_and_prompts_ask_new_appearances(quick_demo):
    out, _ = quick_demo
    captions = [json.loads(line)["text"] for line in (out / "examples" / "metadata.jsonl").read_text().splitlines()]
    assert all(caption.endswith("doing the pll") for caption in captions)
    clips = [read_video(p)[0] for p in sorted((out / "examples").glob("*.gif"))]
    report = toyworld.evaluate(clips, captions, tokens={"pll": "orbit"})
    assert report.motion_accuracy == 1.0
    assert not set(demo.NEW_APPEARANCES) & set(demo.EXAMPLE_APPEARANCES)


def test_regularization_written_again_with_another_seed_keeps_only_its_own_clips(tmp_path):
    demo.write_regularization(tmp_path, seed=0)
    demo.write_regularization(tmp_path, seed=1)
    captioned = [json.loads(line)["file_name"] for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in tmp_path.glob("*.gif")) == sorted(captioned)


def test_regularization_near_a_motion_shows_only_its_nearest_motions(tmp_path):
    demo.write_regularization(tmp_path, seed=0, near="zigzag")
    entries = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    shown = {parse_caption(entry["text"])[2] for entry in entries}
    assert len(entries) == 12 and shown <= {"right", "down_right", "up_right", "down"}  # the zigzag drifts right
    with pytest.raises(ValueError, match="17 regularization clips asked for, from 16 shape-motion pairs"):
        demo.write_regularization(tmp_path, seed=0, near="zigzag", count=17)


def test_train_config_is_the_worlds_size():
    config = toyworld.train_config(rank=4)
    assert (config.height, config.width, config.num_frames) == (toyworld.SIZE, toyworld.SIZE, toyworld.NUM_FRAMES)
    assert config.rank == 4 and config.timestep_sampling == "cubic" and config.reg_weight == 0.5


def test_the_demo_teaches_only_held_out_motions(tmp_path):
    with pytest.raises(ValueError, match="zigzag"):
        demo.run_demo(tmp_path, motion="left")


def test_the_demo_command(quick_demo, tmp_path, monkeypatch, capsys):
    """The command passes its options to run_demo and prints the table (the run itself is tested above)."""
    calls = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **options: calls.update(options, out=out) or quick_demo[1])
    assert main(["demo", "--out", str(tmp_path), "--steps", "7", "--motion", "bounce", "--seed", "3"]) == 0
    assert calls["motion"] == "bounce" and calls["seed"] == 3 and calls["config"].max_train_steps == 7
    out = capsys.readouterr().out
    assert "motion accuracy" in out and "comparison.png" in out


def test_the_cards_usage_snippet_runs_as_written(quick_demo):
    """The card saved with the demo's adapter loads it from its folder."""
    out, _ = quick_demo
    card = (out / "adapter" / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "toyworld.load_pipeline()" in snippet
    scope = {}
    exec(compile(snippet, "card-snippet", "exec"), scope)  # noqa: S102
    assert scope["frames"].shape == (toyworld.NUM_FRAMES, toyworld.SIZE, toyworld.SIZE, 3)
