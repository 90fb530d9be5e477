"""Sampling the tiny world's models: clips per prompt, prompts for measuring a base, measure_quality's scores."""

import numpy as np
import pytest

from motion_adapter import toyworld
from motion_adapter.toyworld.sampling import quality_prompts


@pytest.fixture(scope="module")
def base():
    return toyworld.load_pipeline()


def test_quality_prompts_cover_the_pretraining_world_and_only_it():
    prompts = quality_prompts(len(toyworld.valid_pairs()) * len(toyworld.COLORS))
    parsed = [toyworld.parse_caption(p) for p in prompts]  # (shape, color, motion)
    assert len(set(prompts)) == len(prompts)  # each (pair, colour) once before any repeats
    assert {(shape, motion) for shape, _, motion in parsed} == set(toyworld.valid_pairs())
    assert {color for _, color, _ in parsed} == set(toyworld.COLORS)
    assert quality_prompts(70) == quality_prompts(70, seed=0) != quality_prompts(70, seed=1)


def test_measure_quality_reports_what_the_evaluator_reads_off_the_same_clips(base):
    scores = toyworld.measure_quality(base, count=3, num_inference_steps=2)
    prompts = quality_prompts(3)
    report = toyworld.evaluate(toyworld.sample_clips(base, prompts, num_inference_steps=2), prompts)
    assert scores["num_clips"] == 3 and scores["num_inference_steps"] == 2
    assert scores["motion"] == report.motion_accuracy
    assert scores["color"] == sum(c.color_ok for c in report.clips) / 3
    assert scores["shape"] == sum(c.shape_ok for c in report.clips) / 3


def test_the_shipped_base_generates_a_clip_of_the_world(base):
    prompts = ["a red circle moving left", "a blue square doing the pll"]
    clips = toyworld.sample_clips(base, prompts, num_inference_steps=2)
    assert [c.shape for c in clips] == [(toyworld.NUM_FRAMES, toyworld.SIZE, toyworld.SIZE, 3)] * 2
    assert all(c.dtype == np.uint8 for c in clips)
    again = toyworld.sample_clips(base, prompts[:1], num_inference_steps=2)
    # seeded per clip, whatever the batch (up to rounding: batched kernels may sum in another order)
    assert np.abs(again[0].astype(int) - clips[0]).max() <= 2
