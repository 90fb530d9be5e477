"""The tiny world: its names (shapes, colors, backgrounds, motions), its caption language and its renderer.

A clip is one plain-coloured shape on a plain background, following a motion for NUM_FRAMES frames of
SIZE x SIZE pixels. A motion is a function of the clip's progress u in [0, 1] returning the pose
(x, y, scale, angle): centre as fractions of the canvas (x right, y down), size relative to the shape's
default size, angle in degrees counterclockwise on screen. Named motions are such functions, each with a
small jitter drawn from the clip's seed (start position, amplitude, phase, initial angle), so that clips of
one motion differ but stay the same motion. Pure numpy: this is a low layer, fast to import and to test.

Rotation of a circle is invisible: the world never captions a rotating circle (see `valid_pairs`),
`render` still draws it, and the evaluator reads it as "still".
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NUM_FRAMES = 8
SIZE = 32

SHAPES = ("circle", "square", "triangle", "cross")
HELD_OUT_SHAPES = ("star",)

# Order of rotational symmetry: a rotation by 360 / order looks the same; 0 means any rotation does.
SHAPE_SYMMETRY = {"circle": 0, "square": 4, "triangle": 3, "cross": 4, "star": 5}

COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
BACKGROUNDS = ("black", "gray", "white")
RGB = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 60, 230),
    "yellow": (240, 220, 40),
    "magenta": (210, 50, 210),
    "cyan": (40, 210, 220),
    "black": (15, 15, 15),
    "gray": (125, 125, 125),
    "white": (240, 240, 240),
}

# The English phrase of each pretraining motion, as it appears in captions.
MOTION_PHRASES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "up_left": "moving up and left",
    "up_right": "moving up and right",
    "down_left": "moving down and left",
    "down_right": "moving down and right",
    "grow": "growing",
    "shrink": "shrinking",
    "rotate_cw": "rotating clockwise",
    "rotate_ccw": "rotating counterclockwise",
    "still": "standing still",
}
PRETRAIN_MOTIONS = tuple(MOTION_PHRASES)
HELD_OUT_MOTIONS = ("zigzag", "orbit", "bounce", "spiral", "square_path")

Pose = tuple[float, float, float, float]
MotionFunction = Callable[[float], Pose]

_TRAVEL = 0.36  # length of a straight move, per axis, as a fraction of the canvas
_GROWTH = np.log(2.0)  # log of the scale ratio between the ends of grow / shrink
_TURN = 140.0  # degrees turned by rotate_cw / rotate_ccw: under half a symmetry period per frame at 8 frames
_SUPERSAMPLE = 4  # samples per pixel side, for anti-aliased edges


@dataclass(frozen=True)
class _Jitter:
    """The seeded variation of one clip of a named motion."""

    x: float  # centre, fraction of the canvas
    y: float
    amp: float  # amplitude factor of the motion
    phase: float  # in [0, 1): start point on closed paths
    angle: float  # initial angle, degrees


def _jitter(rng: np.random.Generator) -> _Jitter:
    return _Jitter(
        x=0.5 + rng.uniform(-0.04, 0.04),
        y=0.5 + rng.uniform(-0.04, 0.04),
        amp=rng.uniform(0.85, 1.15),
        phase=rng.uniform(0.0, 1.0),
        angle=rng.uniform(0.0, 360.0),
    )


def _travel(dx: float, dy: float):
    """A straight move through the clip's centre along (dx, dy), screen axes (y down)."""

    def path(u, j):
        step = _TRAVEL * j.amp * (u - 0.5)
        return j.x + dx * step, j.y + dy * step, 1.0, j.angle

    return path


def _scaling(direction: float):
    """Growing (direction +1) or shrinking (-1) in place, by a factor of about 2."""
    return lambda u, j: (j.x, j.y, float(np.exp(direction * _GROWTH * j.amp * (u - 0.5))), j.angle)


def _rotation(direction: float):
    """Turning in place, counterclockwise on screen for direction +1."""
    return lambda u, j: (j.x, j.y, 1.0, j.angle + direction * _TURN * j.amp * u)


def _zigzag(u, j):
    """Rightwards while alternating up and down, starting up: seven straight strokes.

    Every clip starts the same way, as the other held-out motions all turn the same way: clips starting up or down
    at random were mirror images frame by frame, and an adapter taught from both learned their average, a straight
    move right (docs/ablation.md, "The zigzag").
    """
    t = 3.5 * u
    wave = 2.0 * abs(2.0 * (t - np.floor(t + 0.5))) - 1.0  # -1 (up on screen) at whole t, +1 at half t
    return j.x + _TRAVEL * j.amp * (u - 0.5), j.y + 0.1 * j.amp * wave, 1.0, j.angle


def _orbit(u, j):
    """One counterclockwise turn on a circle around the clip's centre."""
    theta = 2.0 * np.pi * (j.phase + u)
    radius = 0.18 * j.amp
    return j.x + radius * np.cos(theta), j.y - radius * np.sin(theta), 1.0, j.angle


def _bounce(u, j):
    """Two hops in place: up from the floor and back down, twice."""
    height = 0.32 * j.amp * abs(np.sin(2.0 * np.pi * u))
    return j.x, j.y + 0.16 - height, 1.0, j.angle


def _spiral(u, j):
    """One and a quarter clockwise turns, from the centre outwards."""
    theta = 2.0 * np.pi * (j.phase - 1.25 * u)
    radius = (0.04 + 0.18 * u) * j.amp
    return j.x + radius * np.cos(theta), j.y - radius * np.sin(theta), 1.0, j.angle


_CORNERS = np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0)])  # clockwise on screen


def _square_path(u, j):
    """Once around a square, clockwise on screen, starting at a seeded corner."""
    t = 4.0 * u + np.floor(4.0 * j.phase)
    side = int(np.floor(t)) % 4
    frac = t - np.floor(t)
    corner = _CORNERS[side] + frac * (_CORNERS[side + 1] - _CORNERS[side])
    half = 0.18 * j.amp
    return j.x + half * corner[0], j.y + half * corner[1], 1.0, j.angle


# Every named motion, as a function of (u, jitter) -> pose.
_MOTIONS = {
    "left": _travel(-1, 0),
    "right": _travel(1, 0),
    "up": _travel(0, -1),
    "down": _travel(0, 1),
    "up_left": _travel(-1, -1),
    "up_right": _travel(1, -1),
    "down_left": _travel(-1, 1),
    "down_right": _travel(1, 1),
    "grow": _scaling(1),
    "shrink": _scaling(-1),
    "rotate_cw": _rotation(-1),
    "rotate_ccw": _rotation(1),
    "still": lambda u, j: (j.x, j.y, 1.0, j.angle),
    "zigzag": _zigzag,
    "orbit": _orbit,
    "bounce": _bounce,
    "spiral": _spiral,
    "square_path": _square_path,
}


def _check_name(kind: str, name: str, known: Sequence[str]) -> None:
    if name not in known:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s are: {', '.join(known)}")


def caption(shape: str, color: str | None, motion: str | None = None, *, token: str | None = None) -> str:
    """The caption of a clip: "a red circle moving left", or "a red circle doing the pll" for a token.

    Give exactly one of `motion` (a PRETRAINING motion: held-out motions have no words, they are only ever
    named through a token) or `token` (any lowercase ascii word). `color=None` leaves the colour out.
    """
    _check_name("shape", shape, SHAPES + HELD_OUT_SHAPES)
    if color is not None:
        _check_name("color", color, COLORS)
    if (motion is None) == (token is None):
        raise ValueError("give exactly one of motion (a pretraining motion name) or token")
    if motion is not None:
        if motion in HELD_OUT_MOTIONS:
            raise ValueError(f"held-out motion {motion!r} has no words: name it through a token instead")
        _check_name("motion", motion, PRETRAIN_MOTIONS)
        action = MOTION_PHRASES[motion]
    else:
        if not (token.isascii() and token.isalpha() and token.islower()):
            raise ValueError(f"a token is one lowercase ascii word, got {token!r}")
        action = f"doing the {token}"
    subject = shape if color is None else f"{color} {shape}"
    return f"a {subject} {action}"


def parse_caption(
    prompt: str, tokens: dict[str, str] | None = None
) -> tuple[str | None, str | None, str | None]:
    """Read a prompt of the caption language back into (shape, color, motion); None where it says nothing.

    The language is "a [color] <shape> [<motion phrase> | doing the <token>]". `tokens` maps each token
    to what it stands for, a motion or a shape name: {"pll": "zigzag", "sks": "star"} reads
    "a sks doing the pll" as ("star", None, "zigzag").
    """
    tokens = dict(tokens or {})
    for token, meaning in tokens.items():
        if meaning not in _MOTIONS and meaning not in SHAPE_SYMMETRY:
            raise ValueError(f"token {token!r} stands for {meaning!r}, which is neither a shape nor a motion")
    words = prompt.split()
    if len(words) < 2 or words[0] not in ("a", "an"):
        raise ValueError(f"prompt {prompt!r} does not read 'a [color] <shape> [<motion>]'")
    color = words[1] if words[1] in COLORS else None
    rest = words[2:] if color else words[1:]
    if not rest:
        raise ValueError(f"prompt {prompt!r} names no shape")
    shape = tokens.get(rest[0], rest[0])
    if shape not in SHAPE_SYMMETRY:
        raise ValueError(
            f"prompt {prompt!r}: {rest[0]!r} is not a shape; shapes are {', '.join(SHAPE_SYMMETRY)}, or a token "
            f"standing for one (tokens={{{rest[0]!r}: '<shape>'}})"
        )
    return shape, color, _parse_action(prompt, rest[1:], tokens)


def _parse_action(prompt: str, words: list[str], tokens: dict[str, str]) -> str | None:
    """The motion named by the words after the shape, None if there are none."""
    if not words:
        return None
    if len(words) == 3 and words[:2] == ["doing", "the"] and tokens.get(words[2]) in _MOTIONS:
        return tokens[words[2]]
    if len(words) == 3 and words[:2] == ["doing", "the"] and words[2] not in tokens:
        raise ValueError(
            f"prompt {prompt!r}: token {words[2]!r} stands for nothing here; pass tokens={{{words[2]!r}: "
            "'<motion>'}, the held-out motion it was trained on"
        )
    by_phrase = {phrase: name for name, phrase in MOTION_PHRASES.items()}
    action = " ".join(words)
    if action not in by_phrase:
        raise ValueError(
            f"prompt {prompt!r}: {action!r} is not a motion; say 'doing the <token>' with a token standing "
            f"for a motion, or one of: {', '.join(MOTION_PHRASES.values())}"
        )
    return by_phrase[action]


def valid_pairs(
    shapes: Sequence[str] = SHAPES, motions: Sequence[str] = PRETRAIN_MOTIONS
) -> list[tuple[str, str]]:
    """The (shape, motion) pairs whose motion can be seen: all but rotations of the circle.

    These are the pairs to caption and to evaluate; a rotating circle looks still.
    """
    for shape in shapes:
        _check_name("shape", shape, SHAPES + HELD_OUT_SHAPES)
    for motion in motions:
        _check_name("motion", motion, PRETRAIN_MOTIONS + HELD_OUT_MOTIONS)
    rotations = {"rotate_cw", "rotate_ccw"}
    return [(s, m) for s in shapes for m in motions if SHAPE_SYMMETRY[s] or m not in rotations]


def trajectory(
    motion: str | MotionFunction, *, seed: int = 0, num_frames: int = NUM_FRAMES
) -> np.ndarray:
    """The poses (x, y, scale, angle) of a clip, one row per frame, as `render` draws them: (frames, 4).

    `motion` is a name (its jitter drawn from `seed`) or a function of u in [0, 1] returning a pose.
    Centres outside the canvas are clipped to its edge, so the shape's centre always stays on the canvas.
    """
    if num_frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {num_frames}")
    if callable(motion):
        path = motion
    else:
        _check_name("motion", motion, PRETRAIN_MOTIONS + HELD_OUT_MOTIONS)
        jitter = _jitter(np.random.default_rng(seed))
        path = lambda u: _MOTIONS[motion](u, jitter)  # noqa: E731
    poses = np.array([path(u) for u in np.linspace(0.0, 1.0, num_frames)], dtype=np.float64)
    if poses.shape != (num_frames, 4) or not np.all(np.isfinite(poses)):
        raise ValueError("a motion must return four finite numbers (x, y, scale, angle) for each u in [0, 1]")
    if np.any(poses[:, 2] <= 0):
        raise ValueError("a motion's scale must stay positive")
    poses[:, :2] = np.clip(poses[:, :2], 0.0, 1.0)
    return poses


def _regular(sides: int, radius: float, start: float) -> np.ndarray:
    """A regular polygon's vertices (y up), the first at angle `start` degrees."""
    angles = np.deg2rad(start) + 2.0 * np.pi * np.arange(sides) / sides
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    """A star polygon: outer and inner vertices alternating, the first point straight up."""
    radii = np.tile([outer, inner], points)
    angles = np.pi / 2 + np.pi * np.arange(2 * points) / points
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross(half_length: float, half_width: float) -> np.ndarray:
    """A plus sign: two bars of the given half sizes, crossing at the centre."""
    a, w = half_length, half_width
    return np.array([(a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w),
                     (-a, -w), (-w, -w), (-w, -a), (w, -a), (w, -w), (a, -w)])  # fmt: skip


# Each shape at scale 1 and angle 0, centred on its centroid, in canvas fractions (y up): about a third of
# the canvas across and of similar areas, so that shapes survive a 4x down-sampling latent VAE.
_POLYGONS = {
    "circle": _regular(40, 0.16, 0.0),
    "square": _regular(4, 0.205, 45.0),
    "triangle": _regular(3, 0.23, 90.0),
    "cross": _cross(0.2, 0.075),
    "star": _star(5, 0.24, 0.12),
}


def _coverage(polygon: np.ndarray, size: int) -> np.ndarray:
    """The fraction of each pixel inside a polygon given in pixel units (x right, y down): (size, size)."""
    coverage = np.zeros((size, size))
    lo = np.clip(np.floor(polygon.min(axis=0)).astype(int), 0, size)
    hi = np.clip(np.ceil(polygon.max(axis=0)).astype(int), 0, size)
    if np.any(hi <= lo):
        return coverage
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    xs = (np.arange(lo[0], hi[0])[:, None] + offsets).ravel()
    ys = (np.arange(lo[1], hi[1])[:, None] + offsets).ravel()
    px, py = np.meshgrid(xs, ys)  # (rows, cols) of sample points
    inside = np.zeros(px.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if y0 == y1:
            continue
        crosses = (y0 > py) != (y1 > py)
        inside ^= crosses & (px < x0 + (py - y0) * (x1 - x0) / (y1 - y0))  # even-odd rule
    rows, cols = hi[1] - lo[1], hi[0] - lo[0]
    block = inside.reshape(rows, _SUPERSAMPLE, cols, _SUPERSAMPLE).mean(axis=(1, 3))
    coverage[lo[1] : hi[1], lo[0] : hi[0]] = block
    return coverage


def _place(shape: str, pose: np.ndarray, size: int) -> np.ndarray:
    """The shape's polygon at a pose, in pixel units (x right, y down)."""
    x, y, scale, angle = pose
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    turned = _POLYGONS[shape] @ rotation.T * scale
    return size * np.stack([x + turned[:, 0], y - turned[:, 1]], axis=1)


def render(
    shape: str,
    color: str,
    motion: str | MotionFunction,
    *,
    seed: int = 0,
    background: str | None = None,
    num_frames: int = NUM_FRAMES,
    size: int = SIZE,
) -> np.ndarray:
    """Draw a clip: uint8 array (num_frames, size, size, 3), anti-aliased.

    `motion` is a motion name or a function of u in [0, 1] returning (x, y, scale, angle) (see the module
    docstring). `seed` draws the named motion's jitter and, when `background` is None, the background;
    the same arguments always give the same array. A centre outside the canvas is clipped to its edge, so
    the shape's centre stays on the canvas (part of the shape may leave it).
    """
    _check_name("shape", shape, SHAPES + HELD_OUT_SHAPES)
    _check_name("color", color, COLORS)
    if background is not None:
        _check_name("background", background, BACKGROUNDS)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size is the clip's side in pixels, a whole number >= 1 (the world's: {SIZE}); got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    poses = trajectory(motion, seed=seed, num_frames=num_frames)
    if background is None:
        background = BACKGROUNDS[np.random.default_rng([seed, 1]).integers(len(BACKGROUNDS))]
    back, front = np.array(RGB[background], float), np.array(RGB[color], float)
    cover = np.stack([_coverage(_place(shape, pose, size), size) for pose in poses])[..., None]
    return np.rint(back + cover * (front - back)).astype(np.uint8)
