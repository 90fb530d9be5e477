"""The tiny world: its names, caption language and renderer."""

import itertools

import numpy as np
import pytest

from motion_adapter import toyworld


def _distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(toyworld.RGB[a], toyworld.RGB[b])))


def test_names_cover_the_contract():
    assert {"circle", "square", "triangle"} < set(toyworld.SHAPES)
    assert toyworld.HELD_OUT_SHAPES and not set(toyworld.HELD_OUT_SHAPES) & set(toyworld.SHAPES)
    directions = {"left", "right", "up", "down", "up_left", "up_right", "down_left", "down_right"}
    assert directions | {"grow", "shrink", "rotate_cw", "rotate_ccw"} <= set(toyworld.PRETRAIN_MOTIONS)
    assert {"zigzag", "orbit", "bounce", "spiral", "square_path"} <= set(toyworld.HELD_OUT_MOTIONS)
    assert not set(toyworld.HELD_OUT_MOTIONS) & set(toyworld.PRETRAIN_MOTIONS)
    assert all(" " not in name for name in toyworld.PRETRAIN_MOTIONS + toyworld.HELD_OUT_MOTIONS)
    assert (toyworld.NUM_FRAMES, toyworld.SIZE) == (8, 32)


def test_colors_are_far_apart_and_far_from_backgrounds():
    assert len(toyworld.COLORS) >= 6
    assert min(_distance(a, b) for a, b in itertools.combinations(toyworld.COLORS, 2)) > 100
    assert min(_distance(c, b) for c in toyworld.COLORS for b in toyworld.BACKGROUNDS) > 100


def test_caption_wording():
    assert toyworld.caption("circle", "red", "left") == "a red circle moving left"
    assert toyworld.caption("circle", "red", token="pll") == "a red circle doing the pll"
    assert toyworld.caption("square", None, "grow") == "a square growing"
    for phrase in toyworld.MOTION_PHRASES.values():
        assert phrase.replace(" ", "").isascii() and phrase.replace(" ", "").islower()
        assert phrase.replace(" ", "").isalpha()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("circle", "red", "zigzag"), {}, "no words"),
        (("circle", "red"), {}, "exactly one"),
        (("circle", "red", "left"), {"token": "pll"}, "exactly one"),
        (("circle", "red"), {"token": "Pll 2"}, "lowercase"),
        (("hexagon", "red", "left"), {}, "circle, square"),
        (("circle", "pink", "left"), {}, "red, green"),
        (("circle", "red", "jump"), {}, "left, right"),
    ],
)
def test_caption_refuses_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        toyworld.caption(*args, **kwargs)


def test_parse_caption_reads_every_caption_back():
    for shape, color, motion in itertools.product(toyworld.SHAPES, toyworld.COLORS, toyworld.PRETRAIN_MOTIONS):
        assert toyworld.parse_caption(toyworld.caption(shape, color, motion)) == (shape, color, motion)
    tokens = {"pll": "zigzag", "sks": "star"}
    assert toyworld.parse_caption("a sks doing the pll", tokens) == ("star", None, "zigzag")
    assert toyworld.parse_caption("a red sks moving left", tokens) == ("star", "red", "left")
    assert toyworld.parse_caption("a blue circle", tokens) == ("circle", "blue", None)


@pytest.mark.parametrize(
    "prompt, tokens, match",
    [
        ("red circle moving left", None, "does not read"),
        ("a red blob moving left", None, "not a shape"),
        ("a red circle dancing", None, "moving left"),
        ("a red circle doing the pll", None, r"token 'pll' stands for nothing here; pass tokens=\{'pll': '<motion>'\}"),
        ("a sks doing the pll", {"pll": "zigzag"}, r"'sks' is not a shape.*tokens=\{'sks': '<shape>'\}"),
        ("a red circle doing the pll", {"pll": "star"}, "not a motion"),
        ("a red circle doing the pll", {"pll": "jump"}, "neither a shape nor a motion"),
    ],
)
def test_parse_caption_refuses_what_the_language_cannot_say(prompt, tokens, match):
    with pytest.raises(ValueError, match=match):
        toyworld.parse_caption(prompt, tokens)


def test_valid_pairs_leave_out_invisible_rotations():
    pairs = toyworld.valid_pairs()
    assert ("circle", "rotate_cw") not in pairs and ("circle", "rotate_ccw") not in pairs
    assert ("square", "rotate_cw") in pairs and ("circle", "left") in pairs
    assert len(pairs) == len(toyworld.SHAPES) * len(toyworld.PRETRAIN_MOTIONS) - 2


def test_render_shape_dtype_and_options():
    clip = toyworld.render("circle", "red", "left")
    assert clip.dtype == np.uint8 and clip.shape == (8, 32, 32, 3)
    assert toyworld.render("star", "cyan", "spiral", num_frames=5, size=40).shape == (5, 40, 40, 3)
    white = toyworld.render("square", "blue", "still", background="white")
    assert (white[:, 0, 0] == toyworld.RGB["white"]).all()
    assert (white == toyworld.RGB["blue"]).all(axis=-1).sum(axis=(1, 2)).min() > 50  # a solid body of colour


def test_render_is_deterministic_by_seed():
    for motion in toyworld.PRETRAIN_MOTIONS + toyworld.HELD_OUT_MOTIONS:
        a = toyworld.render("triangle", "green", motion, seed=3, background="gray")
        assert np.array_equal(a, toyworld.render("triangle", "green", motion, seed=3, background="gray"))
        assert not np.array_equal(a, toyworld.render("triangle", "green", motion, seed=4, background="gray"))


def test_seed_picks_the_background_when_none_is_given():
    corners = {tuple(toyworld.render("circle", "red", "left", seed=s)[0, 0, 0]) for s in range(12)}
    assert corners == {toyworld.RGB[b] for b in toyworld.BACKGROUNDS}


def _centroid(frame: np.ndarray, background: str) -> np.ndarray:
    """Centre (x, y) of the pixels that differ from the background, in pixels."""
    mask = (frame != toyworld.RGB[background]).any(axis=-1)
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


def test_render_accepts_a_motion_function():
    clip = toyworld.render("square", "blue", lambda u: (0.25 + 0.5 * u, 0.5, 1.0, 0.0), background="black")
    np.testing.assert_allclose(_centroid(clip[0], "black"), [8.0, 16.0], atol=0.3)
    np.testing.assert_allclose(_centroid(clip[-1], "black"), [24.0, 16.0], atol=0.3)
    big = toyworld.render("square", "blue", lambda u: (0.5, 0.5, 1.0 + u, 0.0), background="black")
    areas = (big != toyworld.RGB["black"]).any(axis=-1).sum(axis=(1, 2))
    assert areas[-1] > 3.5 * areas[0]


def test_centres_outside_the_canvas_are_clipped_to_its_edge():
    poses = toyworld.trajectory(lambda u: (1.5, -0.2, 1.0, 0.0), num_frames=3)
    np.testing.assert_array_equal(poses[:, :2], [[1.0, 0.0]] * 3)
    clip = toyworld.render("circle", "red", lambda u: (1.5, -0.2, 1.0, 0.0), background="black")
    drawn = (clip[0] != toyworld.RGB["black"]).any(axis=-1)
    assert drawn[:3, -3:].all() and not drawn[8:].any() and not drawn[:, :-8].any()  # a quarter disk in the corner


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("hexagon", "red", "left"), {}, "circle, square, triangle, cross, star"),
        (("circle", "pink", "left"), {}, "red, green, blue, yellow, magenta, cyan"),
        (("circle", "red", "jump"), {}, "left, right, up, down.*zigzag, orbit"),
        (("circle", "red", "left"), {"background": "plaid"}, "black, gray, white"),
        (("circle", "red", lambda u: (np.nan, 0.5, 1.0, 0.0)), {}, "finite"),
        (("circle", "red", lambda u: (0.5, 0.5, 1.0, np.inf)), {}, "finite"),
        (("circle", "red", lambda u: (0.5, 0.5)), {}, "four"),
        (("circle", "red", lambda u: (0.5, 0.5, 0.0, 0.0)), {}, "scale"),
        (("circle", "red", "left"), {"num_frames": 1}, "2 frames"),
        (("circle", "red", "left"), {"size": 0}, "size is the clip's side"),
        (("circle", "red", "left"), {"seed": None}, "seed must be a whole number"),
        (("circle", "red", "left"), {"seed": -1}, "seed must be a whole number"),
    ],
)
def test_render_refuses_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        toyworld.render(*args, **kwargs)


def test_named_motions_are_large_and_stay_on_the_canvas():
    for motion in toyworld.PRETRAIN_MOTIONS + toyworld.HELD_OUT_MOTIONS:
        for seed in range(20):
            poses = toyworld.trajectory(motion, seed=seed)
            assert ((poses[:, :2] > 0.2) & (poses[:, :2] < 0.8)).all(), motion
            travel = np.ptp(poses[:, :2], axis=0).max()
            change = max(travel, np.ptp(np.log(poses[:, 2])), np.ptp(poses[:, 3]) / 360)
            assert change > 0.25 or motion == "still", motion
            assert np.abs(np.diff(poses[:, 3])).max() < 36  # under half the star's symmetry period


def test_every_zigzag_starts_the_same_way():
    # clips starting up or down at random were mirror images: an adapter taught from both learned a straight move
    for seed in range(20):
        rise = np.diff(toyworld.trajectory("zigzag", seed=seed)[:, 1])
        assert rise[0] > 0 and (np.sign(rise[1:]) == -np.sign(rise[:-1])).all()  # from up: down the screen first
