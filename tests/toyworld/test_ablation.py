"""The ablation's machinery: the grid as data, and a two-variant grid of a few steps on the shipped base."""

import dataclasses
import functools
import json
import math
import textwrap

import pytest
from PIL import Image
from tqdm import tqdm

from motion_adapter import inspect
from motion_adapter.cli import _ablate, build_parser, main
from motion_adapter.toyworld import ablation, ablation_report, composition, world
from motion_adapter.toyworld.demo import EXAMPLE_APPEARANCES, train_config
from motion_adapter.toyworld.model import WEIGHTS_DIR, load_pipeline
from motion_adapter.toyworld.runs import SAMPLES_PER_PROMPT, Settings
from motion_adapter.toyworld.world import parse_caption
from motion_adapter.training.loop import train_motion

needs_weights = pytest.mark.skipif(
    not (WEIGHTS_DIR / "model_index.json").is_file(),
    reason=f"the shipped tiny-world weights are not in {WEIGHTS_DIR} yet",
)


def _changes(variant: ablation.Variant) -> int:
    """How many things a variant changes from the default recipe."""
    default = ablation.GRID_DEFAULT
    other_data = (variant.regularization != default.regularization) + (variant.examples != default.examples)
    return len(variant.overrides) + other_data + (variant.compressed_of is not None)


def test_every_label_of_the_grid_fits_under_its_bar_in_the_plot():
    fields = dataclasses.asdict(train_config())
    panel = ablation_report._PANEL
    for variant in ablation.GRID:
        label = variant.label.format(**fields)
        assert len(textwrap.wrap(label, width=panel["label_width"])) <= panel["label_lines"], label


def test_the_grid_changes_one_factor_at_a_time():
    for variant in ablation.GRID:
        if variant.name == "default":
            assert _changes(variant) == 0
        elif variant.name != "full":  # a full delta also writes its compression, which full-r16 scores
            assert _changes(variant) == 1, variant.name
    for factor in ablation.FACTORS:
        assert any(v.name == "default" and v.factor == factor for v in ablation.GRID), factor


def test_one_name_where_a_list_is_asked_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"variants: give a list, such as \['motion'\], not one value"):
        ablation.select_grid("motion")
    with pytest.raises(ValueError, match=r"motions: give a list, such as \['bounce'\]"):
        ablation.run_ablation(tmp_path / "out", motions="bounce")
    with pytest.raises(ValueError, match=r"seeds: give a list, such as \[0\]"):
        ablation.run_ablation(tmp_path / "out", seeds=0)
    assert not (tmp_path / "out").exists()


def test_select_grid_keeps_the_default_row_of_each_chosen_factor():
    rows = ablation.select_grid(["motion", "uniform"])
    assert [(v.factor, v.name) for v in rows] == [
        ("parameters", "default"), ("parameters", "motion"), ("timesteps", "uniform"), ("timesteps", "default"),
    ]  # fmt: skip
    assert [v.name for v in ablation.select_grid(["default"])] == ["default"]
    with pytest.raises(ValueError, match="unknown variants"):
        ablation.select_grid(["rank-5"])
    with pytest.raises(ValueError, match="select full too"):
        ablation.select_grid(["full-r16"])


def test_new_appearance_prompts_never_ask_for_an_example_appearance():
    prompts = ablation.new_appearance_prompts(16)
    assert len(set(prompts)) == 16
    for prompt in prompts:
        shape, color, motion = parse_caption(prompt, {"pll": "zigzag"})
        assert (shape, color) not in EXAMPLE_APPEARANCES and motion == "zigzag"


def test_accuracy_by_shape_counts_the_clips_that_ask_for_each_shape():
    clips = [("a red cross doing the pll", "zigzag"), ("a blue cross doing the pll", None),
             ("a red circle doing the pll", "zigzag"), ("a cyan circle doing the pll", "zigzag")]  # fmt: skip
    runs = [{"motion": "zigzag", "clips": [{"prompt": prompt, "motion": found} for prompt, found in clips[:2]]},
            {"motion": "zigzag", "clips": [{"prompt": prompt, "motion": found} for prompt, found in clips[2:]]}]
    assert ablation_report._accuracy_by_shape(runs) == {"circle": 1.0, "cross": 0.5}


def test_the_command_line_calls_the_ablation():
    args = build_parser().parse_args(["toyworld", "ablate", "--quick", "--out", "x"])
    assert args.run is _ablate and args.quick and args.out == "x"


def test_the_command_line_hands_every_option_to_the_ablation(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(ablation, "run_ablation", lambda out, **options: calls.append((out, options)) or {"seconds": 1})
    monkeypatch.setattr(ablation_report, "format_table", lambda results: "")
    flags = ["--motions", "orbit", "bounce", "--seeds", "3", "--variants", "motion", "--steps", "5", "--prompts", "2",
             "--prior-prompts", "4", "--no-composition", "--workers", "1", "--base", str(tmp_path)]  # fmt: skip
    assert main(["toyworld", "ablate", "--out", "x", *flags]) == 0
    out, options = calls[0]
    factory = options.pop("pipe_factory")
    assert out == "x" and options == dict(quick=False, motions=["orbit", "bounce"], seeds=[3], variants=["motion"],
                                          steps=5, prompts_per_run=2, prior_prompts=4, composition=False, workers=1)
    assert factory.func is load_pipeline and factory.args == (str(tmp_path),)  # a partial: it pickles for workers
    main(["toyworld", "ablate"])
    assert calls[1][1]["pipe_factory"] is None and calls[1][1]["composition"]  # None: the shipped base


@pytest.mark.parametrize(
    "options, message",
    [({"steps": 0}, "steps must be at least 1"), ({"prior_prompts": 0}, "prior_prompts must be at least 1"),
     ({"motions": []}, "motions the base never saw"), ({"prompts_per_run": 999}, "ask for at most that many")],
)
def test_a_grid_that_cannot_run_is_refused_before_any_work(tmp_path, options, message):
    def no_base():
        pytest.fail("the base was loaded before the check")

    with pytest.raises(ValueError, match=message):  # 0 or [] once ran the full grid's value
        ablation.run_ablation(tmp_path, quick=True, pipe_factory=no_base, **options)


def test_jobs_run_lowest_rank_first_and_start_the_jobs_they_unlock(tmp_path):
    for workers in (1, 2):
        finished = []

        def then(result):
            finished.append(result)
            return [(0, functools.partial(math.comb, 10, 2), then)] if result == 3 else []  # 3 unlocks 45

        jobs = [(2, functools.partial(pow, 2, 5), then), (1, functools.partial(math.comb, 3, 2), then),
                (1, functools.partial(math.comb, 4, 2), then)]  # fmt: skip
        with ablation._pool(workers, tmp_path / "logs") as pool:
            ablation._run_jobs(pool, workers, jobs, tqdm(disable=True))
        if workers == 1:
            assert finished == [3, 45, 6, 32]
        else:  # in worker processes the order of finishing is the workers', the results the same
            assert sorted(finished) == [3, 6, 32, 45]
    assert list((tmp_path / "logs").glob("worker-*.log"))


def test_lora_rates_fall_with_the_rank_around_the_recipes_rate():
    recipe = ablation.train_config()
    assert ablation.lora_rates(recipe.rank)[1] == recipe.lr
    for rank in (4, 8, 64):
        low, centre, high = ablation.lora_rates(rank)
        assert math.isclose(centre, recipe.lr * math.sqrt(recipe.rank / rank), rel_tol=0.05)  # 2 digits
        assert math.isclose(high / centre, 3, rel_tol=0.1) and math.isclose(centre / low, 3, rel_tol=0.1)


def test_a_sweep_reads_two_motions_and_its_chosen_runs_join_the_grid(tmp_path, monkeypatch):
    # the bounce alone would choose 1e-3; on average over the bounce and the orbit 3e-3 reads best
    accuracy = {(1e-3, "bounce"): 1.0, (1e-3, "orbit"): 0.25, (3e-3, "bounce"): 0.75, (3e-3, "orbit"): 0.75,
                (1e-2, "bounce"): 0.5, (1e-2, "orbit"): 0.5}  # fmt: skip
    trained = []

    def train_and_score(s, variant, *, motion, seed, learning_rate=None, folder=None):
        trained.append((motion, seed, learning_rate, folder))
        return {"variant": variant.name, "motion": motion, "seed": seed, "learning_rate": learning_rate,
                "motion_accuracy": accuracy.get((learning_rate, motion), 0.5), "copy_score": None,
                "prior_preservation": 0.0, "final_loss": 0.1}  # fmt: skip

    monkeypatch.setattr(ablation, "_train_and_score", train_and_score)
    variant = ablation.Variant("swept", "tuning", "swept", {"rank": 4}, learning_rates=(1e-3, 3e-3, 1e-2))
    cells = [(motion, seed) for motion in ("bounce", "orbit", "zigzag") for seed in (0, 1)]
    s = Settings(out=tmp_path, steps=1, prompts_per_run=1, prior_prompts=1, pipe_factory=None)
    results = {}
    runs = ablation._grid(s, None, 1, [variant], cells, results, tqdm(disable=True), composition=False)
    sweep = results["lr_sweeps"]["swept"]
    assert sweep["chosen"] == 3e-3 and sweep["cells"] == [("bounce", 0), ("orbit", 0)]
    assert [[r["motion_accuracy"] for r in rate["runs"]] for rate in sweep["rates"]] == [[1.0, 0.25], [0.75, 0.75],
                                                                                         [0.5, 0.5]]  # fmt: skip
    assert len(trained) == 3 * 2 + 4  # each rate on the two sweep cells, the chosen rate on the four others
    assert sorted(runs) == sorted(("swept", *cell) for cell in cells)
    assert {run["learning_rate"] for run in runs.values()} == {3e-3}
    assert tmp_path / "sweeps" / "swept" / "lr-0.003" / "orbit-s0" in {folder for *_, folder in trained}
    table = ablation_report._sweep_lines(results["lr_sweeps"])
    assert "accuracy (bounce s0 / orbit s0)" in table[3]
    assert table[5:] == ["| swept | 0.001 | 100 / 25 | 62.5 | 0.0 |  |",
                         "| swept | 0.003 | 75 / 75 | 75.0 | 0.0 | yes |",
                         "| swept | 0.01 | 50 / 50 | 50.0 | 0.0 |  |"]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    run = ablation.run_ablation(out, variants=["motion"], motions=["zigzag"], seeds=[0], steps=2,
                                prompts_per_run=2, prior_prompts=2, workers=1)  # fmt: skip
    return out, run


@needs_weights
def test_every_output_is_written_and_parses(results):
    out, run = results
    saved = json.loads((out / "runs.json").read_text())
    assert saved["summary"] == run["summary"]
    assert {r["variant"] for r in saved["runs"]} == {"default", "motion"}
    for record in saved["runs"]:
        assert 0.0 <= record["motion_accuracy"] <= 1.0 and record["adapter_bytes"] > 0 and record["train_seconds"] > 0
        assert len(record["clips"]) == 2 * SAMPLES_PER_PROMPT
    assert set(saved["composition"]["methods"]) == {"separate, composed", "separate, per-group weights", "joint"}
    subject = inspect(out / "composition" / "s0" / composition.SUBJECT_TOKEN)
    assert subject.preset == "subject+temporal"  # the world's images run through the temporal layers
    motion = inspect(out / "runs" / "default" / "zigzag-s0" / "adapter")
    assert (subject.training["timestep_sampling"], motion.training["timestep_sampling"]) == ("uniform", "cubic")
    with Image.open(out / "plot.png") as image:
        image.verify()


@needs_weights
def test_the_prior_clips_recorded_add_up_to_the_prior_preservation(results):
    out, _ = results
    saved = json.loads((out / "runs.json").read_text())

    def accuracy(clips):
        return sum(clip["motion"] == parse_caption(clip["prompt"])[2] for clip in clips) / len(clips)

    base = saved["base_prior_clips"]["0"]
    assert len(base) == 2 and accuracy(base) == saved["base_prior_accuracy"]["0"]
    for record in saved["runs"]:
        assert [clip["prompt"] for clip in record["prior_clips"]] == [clip["prompt"] for clip in base]
        assert 100 * (accuracy(record["prior_clips"]) - accuracy(base)) == pytest.approx(record["prior_preservation"])


@needs_weights
def test_the_table_has_a_row_per_variant(results):
    out, run = results
    table = (out / "table.md").read_text()
    main_table, per_motion_table = table.split("Accuracy per held-out motion")
    rows = [line for line in main_table.splitlines() if line.startswith("| parameters |")]
    assert len(rows) == 2
    assert any("temporal layers" in row for row in rows) and any("(paper)" in row for row in rows)
    per_motion = per_motion_table.split("\n\n")[1].splitlines()
    assert per_motion[0] == "| factor | setting | zigzag |" and len(per_motion) == 2 + 2  # header, rule, 2 variants
    for name, row in zip(("default", "motion"), per_motion[2:]):
        assert row.endswith(f"| {100 * run['summary'][name]['motion_accuracy_by_motion']['zigzag']:.1f} |")
    per_run = table.split("Per run")[1].split("\n\n")[1].splitlines()
    assert per_run[0] == "| variant | zigzag | mean |" and [row.split(" | ")[0] for row in per_run[2:]] == [
        "| default", "| motion"]  # fmt: skip
    by_shape = table.split("by the shape the prompt asks for")[1].split("\n\n")[1].splitlines()
    assert by_shape[0].startswith("| variant | ") and len(by_shape) == 2 + 2
    assert table.count("| separate, ") == 2 and "| joint |" in table


@needs_weights
def test_a_grid_run_again_reads_its_runs_back_and_remakes_changed_ones(results, monkeypatch):
    out, run = results

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    def train_only_new(train, *args, output_dir, **kwargs):
        if output_dir.parent.parent.name == "default":
            no_training()
        return train(*args, output_dir=output_dir, **kwargs)

    monkeypatch.setattr(ablation, "train_motion", no_training)
    monkeypatch.setattr(composition, "train_subject", no_training)
    again = ablation.run_ablation(out, variants=["motion"], motions=["zigzag"], seeds=[0], steps=2,
                                  prompts_per_run=2, prior_prompts=2, workers=1)  # fmt: skip
    assert again["runs"] == run["runs"] and again["composition"] == run["composition"]
    with monkeypatch.context() as patched:  # the world draws the subject otherwise: the composition is made again
        patched.setitem(world._POLYGONS, "star", world._star(5, 0.24, 0.06))
        with pytest.raises(AssertionError, match="trained again"):
            ablation.run_ablation(out, variants=["motion"], motions=["zigzag"], seeds=[0], steps=2,
                                  prompts_per_run=2, prior_prompts=2, workers=1)  # fmt: skip
    monkeypatch.setattr(ablation, "train_motion", functools.partial(train_only_new, train_motion))
    other = ablation.run_ablation(out, variants=["coarse"], motions=["zigzag"], seeds=[0], steps=2,
                                  prompts_per_run=2, prior_prompts=2, workers=1, composition=False)  # fmt: skip
    assert other["runs"][1] == run["runs"][0]  # the default, read back though another factor's row shows it now
    monkeypatch.setattr(ablation, "train_motion", no_training)
    with pytest.raises(AssertionError, match="trained again"):  # other settings: the runs are made again
        ablation.run_ablation(out, variants=["motion"], motions=["zigzag"], seeds=[0], steps=3,
                              prompts_per_run=2, prior_prompts=2, workers=1, composition=False)  # fmt: skip
    monkeypatch.setitem(world._MOTIONS, "zigzag", world._MOTIONS["right"])  # the world draws the motion otherwise
    with pytest.raises(AssertionError, match="trained again"):  # other example clips: the runs are made again
        ablation.run_ablation(out, variants=["motion"], motions=["zigzag"], seeds=[0], steps=2,
                              prompts_per_run=2, prior_prompts=2, workers=1, composition=False)  # fmt: skip
