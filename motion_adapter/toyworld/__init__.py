"""The embedded default world: tiny clips of shapes in motion, their captions, and their analytic evaluator."""

from motion_adapter.toyworld.ablation import run_ablation
from motion_adapter.toyworld.demo import run_demo, train_config
from motion_adapter.toyworld.evaluate import (
    ClipResult,
    EvaluationReport,
    classify,
    evaluate,
    prior_preservation,
)
from motion_adapter.toyworld.model import load_pipeline
from motion_adapter.toyworld.pretrain import pretrain
from motion_adapter.toyworld.sampling import measure_quality, sample_clips
from motion_adapter.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_MOTIONS,
    HELD_OUT_SHAPES,
    MOTION_PHRASES,
    NUM_FRAMES,
    PRETRAIN_MOTIONS,
    RGB,
    SHAPE_SYMMETRY,
    SHAPES,
    SIZE,
    caption,
    parse_caption,
    render,
    trajectory,
    valid_pairs,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "HELD_OUT_MOTIONS",
    "HELD_OUT_SHAPES",
    "MOTION_PHRASES",
    "NUM_FRAMES",
    "PRETRAIN_MOTIONS",
    "RGB",
    "SHAPE_SYMMETRY",
    "SHAPES",
    "SIZE",
    "ClipResult",
    "EvaluationReport",
    "caption",
    "classify",
    "evaluate",
    "load_pipeline",
    "measure_quality",
    "parse_caption",
    "pretrain",
    "prior_preservation",
    "render",
    "run_ablation",
    "run_demo",
    "sample_clips",
    "trajectory",
    "train_config",
    "valid_pairs",
]
