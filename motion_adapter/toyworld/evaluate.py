"""The tiny world's analytic evaluator: read a clip's motion, colour and shape; score clips against prompts.

No learned weights. Per frame the shape is segmented from the plain background (background colour = median
of the border pixels; foreground = pixels farther from it than half the shape's contrast; the largest
connected component, with soft edge weights), and measured: centre, area, complex moments and colour.
- colour: the named colour nearest to the median colour of the shape's core pixels;
- shape: nearest prototype of a position-, scale- and rotation-invariant descriptor (the magnitudes of the
  normalised 3-, 4- and 5-fold complex moments, and the solidity: area over the convex hull of the sub-pixel
  contour, which tells the concave cross from the square), prototypes measured on rendered shapes of
  several sizes and angles, frames pooled by area;
- motion: nearest named trajectory (pretraining and held-out) over a bank of jittered versions of each,
  comparing position, log-scale and orientation curves with their means removed (which removes the start
  position); orientation is the phase of the dominant k-fold moment, unwrapped across frames modulo 360/k.
  A shape without a readable symmetry (the circle) has no orientation: a rotating circle reads as "still".
Pure numpy, like the world it scores.
"""

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from motion_adapter.toyworld.world import (
    COLORS,
    HELD_OUT_MOTIONS,
    HELD_OUT_SHAPES,
    NUM_FRAMES,
    PRETRAIN_MOTIONS,
    RGB,
    SHAPES,
    SIZE,
    parse_caption,
    render,
    trajectory,
    valid_pairs,
)

_MIN_CONTRAST = 40.0  # RGB distance to the background below which a frame shows no shape
_ORDERS = np.array([3, 4, 5])  # the symmetries the descriptor measures
_MIN_SYMMETRY = 0.08  # a pooled moment magnitude below this gives no readable orientation
_SIZE_WEIGHT = 0.15  # weight of log area in the shape descriptor: prefer prototypes of the same size
_BANK_SIZE = 48  # jittered versions of each named motion to compare against
_BANK_SEED = 1_000_000  # first seed of the bank, away from the seeds clips are usually rendered with
# The smallest clips read reliably: clean renders of every shape and motion read right from 6 frames and 16 px
# (at 5 frames the fastest rotations turn past half a symmetry period between frames; at 14 px shapes blur).
MIN_FRAMES, MIN_SIZE = 6, 16


@dataclass
class ClipResult:
    """One clip's reading against its prompt; an `*_ok` is None when the prompt does not ask for that part, or asks
    for a motion its shape cannot show (a rotating circle looks still)."""

    prompt: str
    asked_motion: str | None
    asked_color: str | None
    asked_shape: str | None
    found_motion: str | None
    found_color: str | None
    found_shape: str | None
    motion_ok: bool | None
    color_ok: bool | None
    shape_ok: bool | None


@dataclass
class EvaluationReport:
    """Per-clip readings and the aggregate scores, fractions in [0, 1] (None when nothing was scored).

    motion_accuracy: share of clips asking a motion whose found motion is the asked one.
    appearance_accuracy: share of clips asking a colour or shape that show what was asked (parts not asked
        are not scored).
    copy_score: share of clips asking for an appearance other than every training one that show a training
        appearance (shape, colour) all the same: the customization copied its examples' looks.
    """

    clips: list[ClipResult]
    motion_accuracy: float | None
    appearance_accuracy: float | None
    copy_score: float | None

    def to_dict(self) -> dict:
        """A JSON-friendly dict of the scores and the per-clip readings."""
        return {
            "num_clips": len(self.clips),
            "motion_accuracy": self.motion_accuracy,
            "appearance_accuracy": self.appearance_accuracy,
            "copy_score": self.copy_score,
            "clips": [asdict(clip) for clip in self.clips],
        }


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean over the last two axes, edges padded by replication."""
    pad = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = x.shape[-2:]
    return sum(pad[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _neighbours_max(x: np.ndarray) -> np.ndarray:
    """Each pixel's maximum over itself and its 4 neighbours, over the last two axes."""
    out = x.copy()
    out[..., 1:, :] = np.maximum(out[..., 1:, :], x[..., :-1, :])
    out[..., :-1, :] = np.maximum(out[..., :-1, :], x[..., 1:, :])
    out[..., :, 1:] = np.maximum(out[..., :, 1:], x[..., :, :-1])
    out[..., :, :-1] = np.maximum(out[..., :, :-1], x[..., :, 1:])
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Per frame, the largest 4-connected component of a (frames, h, w) boolean mask."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:  # spread each component's largest label over it
        spread = np.where(mask, _neighbours_max(labels), 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    keep = np.zeros_like(mask)
    for f in range(mask.shape[0]):
        found, counts = np.unique(labels[f][mask[f]], return_counts=True)
        if found.size:
            keep[f] = labels[f] == found[np.argmax(counts)]
    return keep


def _turn(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Positive when a -> b -> c turns counterclockwise (x right, y up)."""
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of 2-d points (n, 2), by the monotone chain."""
    points = np.unique(points, axis=0)  # sorted by x, then y

    def half(ordered):
        chain = []
        for p in ordered:
            while len(chain) >= 2 and _turn(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = np.array(half(points) + half(points[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _edge_points(weights: np.ndarray) -> np.ndarray:
    """Sub-pixel points (n, 2) x, y where soft weights (h, w) cross one half between neighbouring pixels."""
    points = []
    for axis in (0, 1):
        a, b = np.moveaxis(weights, axis, 0)[:-1], np.moveaxis(weights, axis, 0)[1:]
        i, j = np.nonzero((a - 0.5) * (b - 0.5) < 0)
        step = i + 0.5 + (0.5 - a[i, j]) / (b[i, j] - a[i, j])  # along the axis, between centres i and i + 1
        other = j + 0.5
        points.append(np.stack([other, step] if axis == 0 else [step, other], axis=1))
    return np.concatenate(points)


def _solidity(weights: np.ndarray) -> float:
    """Soft area over the area of the convex hull of the half-weight contour: 1 for convex shapes."""
    points = _edge_points(weights)
    if len(points) < 3:
        return 1.0
    return float(min(1.0, weights.sum() / max(_hull_area(points), 1e-6)))


@dataclass
class _Frames:
    """What segmentation measures in each frame of a clip."""

    present: np.ndarray  # (f,) bool: a shape was found
    weights: np.ndarray  # (f, h, w) soft foreground weights in [0, 1]
    solidity: np.ndarray  # (f,) area / its convex hull's: low for the concave cross and star
    color: np.ndarray | None  # (3,) median colour of the shape's core pixels over the clip; None without a core


def _segment(clip: np.ndarray) -> _Frames:
    """Separate the shape from the plain background in every frame of a (f, h, w, 3) uint8 clip."""
    pixels = clip.astype(np.float64)
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)
    background = np.median(border, axis=1)  # (f, 3)
    distance = np.linalg.norm(pixels - background[:, None, None], axis=-1)  # (f, h, w)
    rough = _box3(distance).max(axis=(1, 2))  # the shape's contrast, robust to single noisy pixels
    present = rough > _MIN_CONTRAST
    level = np.array([np.median(d[d > r / 2]) if p else r for d, r, p in zip(distance, rough, present)])
    shape = _largest_component(distance > level[:, None, None] / 2) & present[:, None, None]
    region = _neighbours_max(shape)  # with the anti-aliased edge around it
    floor = np.array([np.median(d[~r]) if (~r).any() else 0.0 for d, r in zip(distance, region)])
    span = np.maximum(level - floor, 1e-6)[:, None, None]
    weights = np.clip((distance - floor[:, None, None]) / span, 0.0, 1.0) * region
    core = shape & (distance >= 0.8 * level[:, None, None])
    color = np.median(pixels[core], axis=0) if core.any() else None
    solidity = np.array([_solidity(w) for w in weights])
    return _Frames(present=present, weights=weights, solidity=solidity, color=color)


@dataclass
class _Track:
    """Per-frame geometry of the segmented shape."""

    centre: np.ndarray  # (f, 2) x, y as fractions of the canvas
    area: np.ndarray  # (f,) pixels
    moments: np.ndarray  # (f, 3) complex moments of orders 3, 4, 5 about the centre (y up)
    descriptor: np.ndarray  # (f, 5) magnitudes of the normalised moments, solidity, weighted log area


def _track(weights: np.ndarray, solidity: np.ndarray) -> _Track:
    """Centre, area, moments and shape descriptor of each frame's soft foreground (f, h, w)."""
    f, h, w = weights.shape
    rows, cols = np.mgrid[0:h, 0:w] + 0.5
    area = weights.sum(axis=(1, 2))
    cx = (weights * cols).sum(axis=(1, 2)) / area
    cy = (weights * rows).sum(axis=(1, 2)) / area
    z = (cols - cx[:, None, None]) - 1j * (rows - cy[:, None, None])  # (f, h, w), y up
    powers = z[..., None] ** _ORDERS  # (f, h, w, 3)
    moments = (weights[..., None] * powers).sum(axis=(1, 2))
    norms = (weights[..., None] * np.abs(powers)).sum(axis=(1, 2))
    log_area = _SIZE_WEIGHT * np.log(area / (h * w))
    descriptor = np.stack([*(np.abs(moments) / norms).T, solidity, log_area], axis=1)
    return _Track(np.stack([cx / w, cy / h], axis=1), area, moments, descriptor)


@lru_cache(maxsize=8)
def _shape_prototypes(size: int) -> dict[str, np.ndarray]:
    """Descriptors of every shape rendered at several scales and angles: {shape: (n, 5)}.

    Angles up to 60 degrees cover every shape's orientations: each is symmetric under reflection too.
    """
    poses = [(s, a) for s in (0.6, 0.75, 0.9, 1.1, 1.3, 1.5) for a in np.linspace(0.0, 60.0, 7)]
    motion = lambda u: (0.5, 0.5, *poses[round(u * (len(poses) - 1))])  # noqa: E731
    prototypes = {}
    for shape in SHAPES + HELD_OUT_SHAPES:
        clip = render(shape, "red", motion, background="black", num_frames=len(poses), size=size)
        frames = _segment(clip)
        prototypes[shape] = _track(frames.weights, frames.solidity).descriptor
    return prototypes


def _classify_shape(track: _Track, size: int) -> str:
    """The shape whose prototypes are nearest the frames' descriptors, frames weighted by area."""
    weight = track.area / track.area.sum()
    cost = {}
    for shape, prototypes in _shape_prototypes(size).items():
        gaps = ((track.descriptor[:, None] - prototypes[None]) ** 2).sum(axis=-1).min(axis=1)
        cost[shape] = float((weight * gaps).sum())
    return min(cost, key=cost.get)


def _classify_color(color: np.ndarray) -> str:
    """The named colour nearest in RGB."""
    return min(COLORS, key=lambda name: float(np.linalg.norm(color - np.array(RGB[name]))))


def _orientation(track: _Track) -> np.ndarray:
    """Turn since the first frame (f,), degrees counterclockwise; zeros without a readable symmetry.

    Uses the dominant k-fold moment; frame-to-frame changes are taken within half a symmetry period.
    """
    weight = track.area / track.area.sum()
    strength = weight @ track.descriptor[:, : len(_ORDERS)]
    best = int(np.argmax(strength))
    if strength[best] < _MIN_SYMMETRY:
        return np.zeros(len(track.area))
    order = int(_ORDERS[best])
    period = 360.0 / order
    angle = np.degrees(np.angle(track.moments[:, best])) / order
    steps = (np.diff(angle) + period / 2) % period - period / 2
    return np.concatenate([[0.0], np.cumsum(steps)])


def _motion_features(centre: np.ndarray, scale: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """A clip's motion as one vector: curves over frames with their means removed, angle in half turns.

    centre: (f, 2) fractions of the canvas; scale: (f,) any unit; angle: (f,) degrees.
    """
    curves = np.stack([centre[:, 0], centre[:, 1], np.log(scale), angle / 180.0])
    return (curves - curves.mean(axis=1, keepdims=True)).ravel()


@lru_cache(maxsize=8)
def _motion_bank(num_frames: int) -> tuple[list[str], np.ndarray]:
    """Motion features of jittered versions of every named motion: (names, (n, features))."""
    names, features = [], []
    for motion in PRETRAIN_MOTIONS + HELD_OUT_MOTIONS:
        for i in range(_BANK_SIZE):
            poses = trajectory(motion, seed=_BANK_SEED + i, num_frames=num_frames)
            names.append(motion)
            features.append(_motion_features(poses[:, :2], poses[:, 2], poses[:, 3]))
    return names, np.stack(features)


def nearest_motions(motion: str, count: int) -> list[str]:
    """The `count` pretraining motions that move nearest `motion`, nearest first: by the mean squared distance
    between their jittered trajectories in the features motions are read by. The paper regularizes with real videos
    of "similar but not identical" motion; on this world, these are its similar motions.
    """
    names, bank = _motion_bank(NUM_FRAMES)
    if motion not in names:
        raise ValueError(f"unknown motion {motion!r}; the world has {', '.join(dict.fromkeys(names))}")
    names = np.array(names)
    target = bank[names == motion]
    distance = {
        other: float(np.mean(((target[:, None] - bank[names == other][None]) ** 2).sum(axis=-1)))
        for other in PRETRAIN_MOTIONS
        if other not in ("still", motion)
    }
    return sorted(distance, key=distance.get)[:count]


def _classify_motion(track: _Track) -> str:
    """The named motion whose jittered trajectories come nearest the measured one."""
    features = _motion_features(track.centre, np.sqrt(track.area), _orientation(track))
    names, bank = _motion_bank(len(track.area))
    return names[int(np.argmin(((bank - features) ** 2).sum(axis=1)))]


def classify(clip: np.ndarray) -> dict[str, str | None]:
    """What a clip (frames, h, w, 3) uint8 shows: {"motion", "color", "shape"}, None where unreadable.

    The motion needs a shape in every frame; colour and shape are read from the frames that have one.
    """
    clip = _check_clips([clip])[0]
    frames = _segment(clip)
    if not frames.present.any():
        return {"motion": None, "color": None, "shape": None}
    track = _track(frames.weights[frames.present], frames.solidity[frames.present])
    return {
        "motion": _classify_motion(track) if frames.present.all() else None,
        "color": _classify_color(frames.color) if frames.color is not None else None,
        "shape": _classify_shape(track, clip.shape[1]),
    }


def _check_clips(clips) -> list[np.ndarray]:
    """Clips as a list of (frames, h, w, 3) uint8 arrays of one common shape, or a ValueError saying why."""
    if isinstance(clips, np.ndarray) and clips.ndim != 5:
        raise ValueError(f"one array of clips is (n, frames, h, w, 3), not {clips.shape}; one clip: [clip]")
    clips = list(clips)
    if not clips:
        raise ValueError("no clips to evaluate")
    for i, clip in enumerate(clips):
        if not isinstance(clip, np.ndarray) or clip.dtype != np.uint8:
            raise ValueError(f"clip {i} must be a uint8 numpy array: (x * 255).round().astype(np.uint8)")
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.shape[0] < MIN_FRAMES or min(clip.shape[1:3]) < MIN_SIZE:
            raise ValueError(
                f"clip {i} must be (frames >= {MIN_FRAMES}, h >= {MIN_SIZE}, w >= {MIN_SIZE}, 3), got shape "
                f"{clip.shape}: shorter clips turn too far between frames to tell a rotation's way, smaller ones "
                f"blur a shape; the world's own are ({NUM_FRAMES}, {SIZE}, {SIZE}, 3)"
            )
        if clip.shape != clips[0].shape:
            raise ValueError(f"clips must share one shape: clip 0 is {clips[0].shape}, clip {i} {clip.shape}")
    return clips


def _visible(shape: str | None, motion: str | None) -> bool:
    """Whether a clip can show the motion asked of its shape (a rotating circle looks still: not scored)."""
    return shape is None or motion is None or bool(valid_pairs([shape], [motion]))


def _check(asked: str | None, found: str | None) -> bool | None:
    return None if asked is None else asked == found


def _fraction(flags: Iterable[bool]) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def _copy_score(results: list[ClipResult], training: set[tuple[str, str]]) -> float | None:
    """Share of clips asking for no training appearance that show one anyway."""
    def asks_for(r: ClipResult, shape: str, color: str) -> bool:
        return r.asked_shape in (None, shape) and r.asked_color in (None, color)

    other = [r for r in results if not any(asks_for(r, shape, color) for shape, color in training)]
    return _fraction((r.found_shape, r.found_color) in training for r in other)


def evaluate(
    clips: Sequence[np.ndarray] | np.ndarray,
    prompts: Sequence[str],
    *,
    tokens: dict[str, str] | None = None,
    training_appearances: Iterable[tuple[str, str]] | None = None,
) -> EvaluationReport:
    """Score clips against the prompts they were made from.

    clips: uint8 arrays (frames, h, w, 3) of one common shape, or one array (n, frames, h, w, 3); at least
        MIN_FRAMES frames of MIN_SIZE x MIN_SIZE pixels. A motion its shape cannot show (a circle's rotation) is
        not scored: its `motion_ok` is None.
    prompts: one per clip, in the world's caption language (see `parse_caption`).
    tokens: what each token stands for, a motion or a shape: {"pll": "zigzag", "sks": "star"}.
    training_appearances: the (shape, color) pairs a customization was trained on, for the copy score
        (None: copy_score is None).
    """
    clips = _check_clips(clips)
    if isinstance(prompts, str):
        raise ValueError("prompts: a list of prompts, one per clip, not one string")
    prompts = list(prompts)
    if len(prompts) != len(clips):
        raise ValueError(f"one prompt per clip: got {len(clips)} clips and {len(prompts)} prompts")
    asked = [parse_caption(prompt, tokens) for prompt in prompts]  # every prompt checked before any work
    copies = None if training_appearances is None else _check_appearances(training_appearances)
    results = []
    for clip, prompt, (shape, color, motion) in zip(clips, prompts, asked):
        found = classify(clip)
        results.append(ClipResult(
            prompt, motion, color, shape, found["motion"], found["color"], found["shape"],
            _check(motion, found["motion"]) if _visible(shape, motion) else None,
            _check(color, found["color"]), _check(shape, found["shape"]),
        ))  # fmt: skip
    appearance = [[ok for ok in (r.color_ok, r.shape_ok) if ok is not None] for r in results]
    return EvaluationReport(
        clips=results,
        motion_accuracy=_fraction(r.motion_ok for r in results if r.motion_ok is not None),
        appearance_accuracy=_fraction(all(oks) for oks in appearance if oks),
        copy_score=None if copies is None else _copy_score(results, copies),
    )


def _check_appearances(pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The training appearances as a set of (shape, color), each name checked (the order is easy to swap)."""
    pairs = set(map(tuple, pairs))
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in SHAPES + HELD_OUT_SHAPES or pair[1] not in COLORS:
            raise ValueError(f"training_appearances holds {pair!r}; give (shape, color) pairs, e.g. ('circle', 'red')")
    return pairs


def prior_preservation(adapted_report: EvaluationReport, base_report: EvaluationReport) -> float:
    """Motion accuracy of the adapted model minus the base model's, in points (x 100), on the same prompts.

    Negative when the customization made the model worse at the motions it already knew.
    """
    adapted = [c.prompt for c in adapted_report.clips]
    if adapted != [c.prompt for c in base_report.clips]:
        raise ValueError("prior preservation compares two reports on the same prompts, in the same order")
    if adapted_report.motion_accuracy is None or base_report.motion_accuracy is None:
        raise ValueError("prior preservation needs prompts that ask for a motion")
    return 100.0 * (adapted_report.motion_accuracy - base_report.motion_accuracy)
