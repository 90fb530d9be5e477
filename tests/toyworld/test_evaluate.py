"""The analytic evaluator: accuracy on rendered clips, clean and degraded, and the report's numbers."""

import json

import numpy as np
import pytest

from motion_adapter import toyworld
from motion_adapter.toyworld.evaluate import nearest_motions

ALL_SHAPES = toyworld.SHAPES + toyworld.HELD_OUT_SHAPES
ALL_MOTIONS = toyworld.PRETRAIN_MOTIONS + toyworld.HELD_OUT_MOTIONS


def _gallery(seeds):
    """Every visible (shape, motion) pair for each seed, colours and backgrounds cycling: (clips, truths)."""
    clips, truths = [], []
    for i, ((shape, motion), seed) in enumerate(
        (pair, seed) for seed in seeds for pair in toyworld.valid_pairs(ALL_SHAPES, ALL_MOTIONS)
    ):
        color = toyworld.COLORS[i % len(toyworld.COLORS)]
        background = toyworld.BACKGROUNDS[(i // len(toyworld.COLORS)) % len(toyworld.BACKGROUNDS)]
        clips.append(toyworld.render(shape, color, motion, seed=seed, background=background))
        truths.append((shape, color, motion))
    return clips, truths


def _blur(clip: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each frame (f, h, w, 3), edges replicated."""
    taps = np.arange(-2, 3)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    out = clip.astype(np.float64)
    for axis in (1, 2):
        padded = np.pad(out, [(2, 2) if a == axis else (0, 0) for a in range(4)], mode="edge")
        n = out.shape[axis]
        out = sum(k * np.take(padded, np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel))
    return out


def _degrade(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mild blur and Gaussian noise of sigma 10/255, as a small generator's output might have."""
    noisy = _blur(clip, 0.7) + rng.normal(0.0, 10.0, clip.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _accuracies(clips, truths):
    found = [toyworld.classify(clip) for clip in clips]
    return {
        part: np.mean([f[part] == t[i] for f, t in zip(found, truths)])
        for i, part in enumerate(("shape", "color", "motion"))
    }


def test_clean_clips_are_read_right():
    accuracy = _accuracies(*_gallery(seeds=(0, 1, 2)))
    assert accuracy["color"] == 1.0
    assert accuracy["shape"] >= 0.98 and accuracy["motion"] >= 0.98, accuracy


def test_noisy_blurred_clips_are_read_right():
    clips, truths = _gallery(seeds=(5, 6))
    rng = np.random.default_rng(0)
    accuracy = _accuracies([_degrade(clip, rng) for clip in clips], truths)
    assert accuracy["color"] == 1.0
    assert accuracy["shape"] >= 0.95 and accuracy["motion"] >= 0.95, accuracy


def test_a_rotating_circle_reads_as_still():
    assert toyworld.classify(toyworld.render("circle", "red", "rotate_cw"))["motion"] == "still"


def test_a_blank_clip_shows_nothing():
    blank = np.full((8, 32, 32, 3), 125, dtype=np.uint8)
    assert toyworld.classify(blank) == {"motion": None, "color": None, "shape": None}


def test_a_shape_without_a_core_reads_no_colour():
    # the largest region (a dim line) has no pixel near the frame's typical contrast, which small white squares set
    clip = np.zeros((8, 32, 32, 3), np.uint8)
    clip[:, 16, 4:24] = 153
    for x in (4, 10, 16, 22):
        clip[:, 24:27, x : x + 3] = 255
    assert toyworld.classify(clip)["color"] is None
    report = toyworld.evaluate([clip], ["a red circle moving left"])
    assert report.clips[0].found_color is None and report.clips[0].color_ok is False


def test_evaluate_scores_the_asked_parts():
    clips = [toyworld.render("square", "red", "left", seed=s) for s in range(3)]
    prompts = ["a red square moving left", "a blue square moving right", "a red square"]
    report = toyworld.evaluate(clips, prompts)
    first, second, third = report.clips
    assert (first.found_shape, first.found_color, first.found_motion) == ("square", "red", "left")
    assert first.motion_ok and first.color_ok and first.shape_ok
    assert (second.motion_ok, second.color_ok, second.shape_ok) == (False, False, True)
    assert third.asked_motion is None and third.motion_ok is None
    assert report.motion_accuracy == 0.5  # the third asks no motion
    assert report.appearance_accuracy == pytest.approx(2 / 3)
    assert report.copy_score is None


def test_clips_of_the_wrong_motion_score_zero():
    clips = np.stack([toyworld.render("triangle", "green", "orbit", seed=s) for s in range(4)])
    report = toyworld.evaluate(clips, ["a green triangle doing the pll"] * 4, tokens={"pll": "zigzag"})
    assert report.motion_accuracy == 0.0 and report.appearance_accuracy == 1.0
    assert all(c.found_motion == "orbit" and c.asked_motion == "zigzag" for c in report.clips)


def test_copies_of_the_training_appearance_are_counted():
    tokens = {"pll": "zigzag", "sks": "star"}
    clips = [toyworld.render("circle", "red", "zigzag", seed=0), toyworld.render("circle", "red", "zigzag", seed=1),
             toyworld.render("star", "blue", "zigzag", seed=2), toyworld.render("circle", "red", "zigzag", seed=3)]
    prompts = ["a sks doing the pll", "a blue sks doing the pll", "a blue sks doing the pll",
               "a red circle doing the pll"]  # the last asks for the training appearance: not scored for copies
    report = toyworld.evaluate(clips, prompts, tokens=tokens, training_appearances=[("circle", "red")])
    assert report.copy_score == pytest.approx(2 / 3)
    assert report.motion_accuracy == 1.0
    assert report.appearance_accuracy == 0.5
    assert report.clips[0].color_ok is None and report.clips[0].shape_ok is False


def test_report_is_json_friendly():
    clip = toyworld.render("cross", "yellow", "grow")
    data = json.loads(json.dumps(toyworld.evaluate([clip], ["a yellow cross growing"]).to_dict()))
    assert data["motion_accuracy"] == 1.0 and data["num_clips"] == 1
    assert data["clips"][0]["found_motion"] == "grow" and data["clips"][0]["shape_ok"] is True


def test_prior_preservation_is_the_motion_accuracy_difference_in_points():
    prompts = ["a red square moving left", "a red square moving up"]
    base = toyworld.evaluate([toyworld.render("square", "red", "left")] * 2, prompts)
    adapted = toyworld.evaluate([toyworld.render("square", "red", m) for m in ("left", "up")], prompts)
    assert toyworld.prior_preservation(adapted, base) == pytest.approx(50.0)
    assert toyworld.prior_preservation(base, adapted) == pytest.approx(-50.0)
    other = toyworld.evaluate([toyworld.render("square", "red", "left")] * 2, prompts[::-1])
    with pytest.raises(ValueError, match="same prompts"):
        toyworld.prior_preservation(adapted, other)


def test_a_motion_its_shape_cannot_show_is_not_scored():
    clips = [toyworld.render("circle", "red", "rotate_cw", seed=seed) for seed in range(2)]
    clips.append(toyworld.render("square", "red", "rotate_cw", seed=0))
    report = toyworld.evaluate(clips, ["a red circle rotating clockwise"] * 2 + ["a red square rotating clockwise"])
    assert [clip.motion_ok for clip in report.clips] == [None, None, True] and report.motion_accuracy == 1.0
    assert [clip.found_motion for clip in report.clips[:2]] == ["still", "still"]  # a rotating circle looks still


@pytest.mark.parametrize(
    "clips, prompts, match",
    [
        ([np.zeros((8, 32, 32, 3))], ["a red circle"], "uint8"),
        ([np.zeros((8, 32, 32), np.uint8)], ["a red circle"], "frames >= 6"),
        ([np.zeros((5, 32, 32, 3), np.uint8)], ["a red circle"], r"frames >= 6, h >= 16, w >= 16.*rotation's way"),
        ([np.zeros((8, 14, 32, 3), np.uint8)], ["a red circle"], r"got shape \(8, 14, 32, 3\).*\(8, 32, 32, 3\)"),
        ([np.zeros((8, 32, 32, 3), np.uint8), np.zeros((8, 16, 16, 3), np.uint8)], ["a red circle"] * 2, "share"),
        (np.zeros((8, 32, 32, 3), np.uint8), ["a red circle"], "one clip"),
        ([np.zeros((8, 32, 32, 3), np.uint8)], ["a red circle", "a red square"], "one prompt per clip"),
        ([np.zeros((8, 32, 32, 3), np.uint8)], ["a red blob"], "not a shape"),
        ([np.zeros((8, 32, 32, 3), np.uint8)], "a red circle", "not one string"),
        ([], [], "no clips"),
    ],
)
def test_evaluate_refuses_bad_input(clips, prompts, match):
    with pytest.raises(ValueError, match=match):
        toyworld.evaluate(clips, prompts)


@pytest.mark.parametrize("pair", [("blue", "square"), ("hexagon", "red"), ("square",)])
def test_training_appearances_are_shape_color_pairs(pair):
    clip = toyworld.render("square", "blue", "left", seed=0)
    with pytest.raises(ValueError, match=r"give \(shape, color\) pairs"):
        toyworld.evaluate([clip], ["a blue square moving left"], training_appearances=[pair])


def test_nearest_motions_share_the_motions_movement():
    assert nearest_motions("zigzag", 3) == ["right", "down_right", "up_right"]  # it drifts right
    assert set(nearest_motions("bounce", 4)) == {"up", "down", "left", "right"}  # straight moves
    assert "still" not in nearest_motions("right", 20) and "right" not in (
        nearest_motions("right", 20))  # fmt: skip
    with pytest.raises(ValueError, match="unknown motion 'hop'"):
        nearest_motions("hop", 2)
