"""An ablation's results as people read them: `summarize` (each variant's means and spreads over its runs),
`format_table` (table.md, the paper's layout) and `plot` (plot.png, one panel per factor).

They need nothing but what `run_ablation` returns and runs.json holds, so a table or a plot can be made again
from a kept runs.json without running anything.
"""

import io
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .demo import EXAMPLE_APPEARANCES, TOKEN
from .world import parse_caption


def spread(runs: list[dict], keys) -> dict:
    """Mean and standard deviation of each key over runs (None values left out)."""
    summary = {}
    for key in keys:
        values = [r[key] for r in runs if r[key] is not None]
        summary[key] = float(np.mean(values)) if values else None
        summary[f"{key}_std"] = float(np.std(values)) if values else None
    return summary


def summarize(runs: list[dict]) -> dict:
    """Per variant: mean and spread over motions and seeds of the scores, the mean accuracy of each motion (over
    seeds: a default must read every motion, not just most); mean size, time and the learning rate."""
    by_variant: dict[str, list[dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    return {
        name: {
            "runs": len(group),
            **spread(group, ("motion_accuracy", "copy_score", "prior_preservation", "train_seconds")),
            "motion_accuracy_by_motion": {
                motion: float(np.mean([r["motion_accuracy"] for r in group if r["motion"] == motion]))
                for motion in dict.fromkeys(r["motion"] for r in group)
            },
            "motion_accuracy_by_shape": _accuracy_by_shape(group),
            "adapter_bytes": int(np.mean([r["adapter_bytes"] for r in group])),
            "learning_rate": group[0]["learning_rate"],
        }
        for name, group in by_variant.items()
    }


def sweep_means(runs: list[dict]) -> dict[str, float]:
    """Mean motion accuracy and copy score of one swept rate's runs (a copy score of None counts as 0)."""
    return {key: float(np.mean([r[key] or 0.0 for r in runs])) for key in ("motion_accuracy", "copy_score")}


def _accuracy_by_shape(runs: list[dict]) -> dict[str, float]:
    """Motion accuracy over every clip of the runs, by the shape its prompt asks for: where a motion is lost."""
    hits: dict[str, list[bool]] = {}
    for run in runs:
        for clip in run["clips"]:
            shape = parse_caption(clip["prompt"], {TOKEN: run["motion"]})[0]
            hits.setdefault(shape, []).append(clip["motion"] == run["motion"])
    return {shape: float(np.mean(flags)) for shape, flags in sorted(hits.items())}


def _labels(results: dict) -> list[tuple[str, str, str]]:
    """(factor, variant name, label) for every row of the grid that was run, labels filled from the config its
    default runs were trained with (not today's recipe: a kept runs.json keeps its labels)."""
    fields = next(run["config"] for run in results["runs"] if run["variant"] == "default")
    return [(v["factor"], v["name"], v["label"].format(**fields)) for v in results["variants"]]


def _percent(value, std=None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.0f} kB"


def format_table(results: dict) -> str:
    """table.md: a row per variant, grouped by factor (accuracy / copy as the paper shows them), then each variant's
    accuracy per motion, per run and by the shape asked for, the sweeps and the composition."""
    summary = results["summary"]
    settings = results["settings"]
    lines = [
        "# Ablation on the tiny world",
        "",
        f"Motions {', '.join(settings['motions'])}; seeds {', '.join(map(str, settings['seeds']))}; "
        f"{settings['steps']} training steps; {settings['prompts_per_run']} new-appearance prompts x "
        f"{settings['samples_per_prompt']} samples per run, {settings['inference_steps']} DDIM steps. Accuracy and "
        "copy in percent, mean ± standard deviation over motions and seeds; prior preservation in points: "
        f"motion accuracy on {settings['prior_prompts']} pretraining prompts with the adapter minus the base's "
        f"(the base's: {', '.join(f'{100 * a:.0f}%' for a in results['base_prior_accuracy'].values())}).",
        "",
        "| factor | setting | accuracy | copy | prior preservation | adapter | train time | learning rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for factor, name, label in _labels(results):
        row = summary[name]
        pp = row["prior_preservation"]
        lines.append(
            f"| {factor} | {label} | {_percent(row['motion_accuracy'], row['motion_accuracy_std'])} | "
            f"{_percent(row['copy_score'])} | {'-' if pp is None else f'{pp:+.1f}'} | {_size(row['adapter_bytes'])} | "
            f"{row['train_seconds']:.0f} s | {row['learning_rate']:g} |"
        )
    motions = settings["motions"]
    lines += ["", "Accuracy per held-out motion (percent, mean over seeds):", "",
              f"| factor | setting | {' | '.join(motions)} |", "|---|---|" + "---:|" * len(motions)]  # fmt: skip
    rows = {}  # variant name -> (factor, label), each variant once (the default as the recipe of every factor)
    for factor, name, label in _labels(results):
        rows.setdefault(name, ("all", "default") if name == "default" else (factor, label))
    for name, (factor, label) in rows.items():
        by_motion = summary[name]["motion_accuracy_by_motion"]
        lines.append(f"| {factor} | {label} | {' | '.join(_percent(by_motion.get(m)) for m in motions)} |")
    seeds = settings["seeds"]
    by_run = {(run["variant"], run["motion"], run["seed"]): run for run in results["runs"]}
    lines += ["", f"Per run (motion accuracy, percent; seed {' / seed '.join(map(str, seeds))}):", "",
              f"| variant | {' | '.join(motions)} | mean |", "|---|" + "---|" * len(motions) + "---:|"]  # fmt: skip
    for name in rows:
        cells = [" / ".join(f"{100 * by_run[(name, motion, seed)]['motion_accuracy']:.0f}" for seed in seeds)
                 for motion in motions]  # fmt: skip
        lines.append(f"| {name} | {' | '.join(cells)} | {_percent(summary[name]['motion_accuracy'])} |")
    shapes = sorted({shape for name in rows for shape in summary[name]["motion_accuracy_by_shape"]})
    examples = ", ".join(f"{color} {shape}" for shape, color in EXAMPLE_APPEARANCES)
    lines += ["", f"Accuracy by the shape the prompt asks for (percent of the variant's clips; the examples show a "
              f"{examples}):", "", f"| variant | {' | '.join(shapes)} |", "|---|" + "---:|" * len(shapes)]  # fmt: skip
    for name in rows:
        by_shape = summary[name]["motion_accuracy_by_shape"]
        lines.append(f"| {name} | {' | '.join(_percent(by_shape.get(shape)) for shape in shapes)} |")
    lines += _sweep_lines(results["lr_sweeps"])
    composition = results["composition"]
    if composition:
        subject, motion = composition["subject_token"], composition["motion_token"]
        lines += ["", f"Composition: \"a [color] {subject} doing the {motion}\" ({subject} = {composition['subject']}, "
                  f"{motion} = {composition['motion']}); percent of clips, mean ± standard deviation over seeds.", "",
                  "| method | shape | motion | both |", "|---|---:|---:|---:|"]  # fmt: skip
        for name, m in composition["methods"].items():
            cells = [_percent(m[key], m[f"{key}_std"]) for key in ("shape_accuracy", "motion_accuracy", "both")]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _sweep_lines(sweeps: dict) -> list[str]:
    """The learning-rate sweeps' table: each rate's accuracy on every cell of its sweep, the mean, which was chosen."""
    if not sweeps:
        return []
    cells = " / ".join(f"{motion} s{seed}" for motion, seed in next(iter(sweeps.values()))["cells"])
    lines = ["", "Learning-rate sweeps (the rate most accurate on average over the sweep's runs is used for every run "
             "of its variant):", "", f"| variant | learning rate | accuracy ({cells}) | mean | copy | chosen |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, sweep in sweeps.items():
        for rate in sweep["rates"]:
            by_cell = " / ".join(f"{100 * r['motion_accuracy']:.0f}" for r in rate["runs"])
            mean = sweep_means(rate["runs"])
            chosen = "yes" if rate["learning_rate"] == sweep["chosen"] else ""
            lines.append(f"| {name} | {rate['learning_rate']:g} | {by_cell} | {_percent(mean['motion_accuracy'])} | "
                         f"{_percent(mean['copy_score'])} | {chosen} |")  # fmt: skip
    return lines


# Pixels, but for the bars' labels: wrapped at label_width characters, label_lines of them under each bar.
_PANEL = dict(bar=56, gap=18, height=312, top=34, bottom=82, left=40, title=24, max_width=1100, label_width=11,
              label_lines=6)  # fmt: skip


def plot(results: dict) -> bytes:
    """plot.png as bytes: one panel per factor, a bar per setting (mean motion accuracy) with its spread."""
    font = ImageFont.load_default()
    panels: dict[str, list[tuple[str, str]]] = {}
    for factor, name, label in _labels(results):
        panels.setdefault(factor, []).append((name, label))
    p = _PANEL
    placed, x, y = [], 0, p["title"]  # (factor, x, y) of each panel, filled in rows of at most max_width
    for factor, bars in panels.items():
        width = p["left"] + len(bars) * (p["bar"] + p["gap"]) + p["gap"]
        if x and x + width > p["max_width"]:
            x, y = 0, y + p["height"]
        placed.append((factor, x, y))
        x += width
    width = max(x + p["left"] + len(panels[f]) * (p["bar"] + p["gap"]) + p["gap"] for f, x, _ in placed)
    image = Image.new("RGB", (width + 10, y + p["height"]), "white")
    draw = ImageDraw.Draw(image)
    draw.text((5, 6), "motion accuracy on new appearances, % (mean, whiskers one standard deviation over motions and "
              "seeds); dark: the default", fill="black", font=font)  # fmt: skip
    for factor, x, y in placed:
        _panel(draw, font, x + 5, y, factor, panels[factor], results["summary"])
    return _png(image)


def _panel(draw, font, x0: int, y0: int, factor: str, bars, summary: dict) -> None:
    """One factor's panel at (x0, y0): axis 0-100 %, bars with a whisker of one standard deviation, wrapped labels."""
    p = _PANEL
    top, base = y0 + p["top"], y0 + p["height"] - p["bottom"]
    scale = (base - top) / 100.0
    draw.text((x0 + p["left"], y0 + 8), factor, fill="black", font=font)
    for tick in (0, 25, 50, 75, 100):
        y = base - tick * scale
        draw.line((x0 + p["left"] - 4, y, x0 + p["left"] + len(bars) * (p["bar"] + p["gap"]), y), fill=(220, 220, 220))
        draw.text((x0 + 4, y - 6), f"{tick}%", fill="gray", font=font)
    for i, (name, label) in enumerate(bars):
        row = summary[name]
        left = x0 + p["left"] + p["gap"] + i * (p["bar"] + p["gap"])
        mean = 100 * (row["motion_accuracy"] or 0.0)
        std = 100 * (row["motion_accuracy_std"] or 0.0)
        color = (70, 110, 200) if name == "default" else (150, 170, 210)
        draw.rectangle((left, base - mean * scale, left + p["bar"], base), fill=color)
        centre = left + p["bar"] // 2
        low, high = max(mean - std, 0.0), min(mean + std, 100.0)
        draw.line((centre, base - high * scale, centre, base - low * scale), fill="black", width=1)
        for y in (base - high * scale, base - low * scale):
            draw.line((centre - 6, y, centre + 6, y), fill="black")
        draw.text((left, base - mean * scale - 13), f"{mean:.0f}", fill="black", font=font)
        wrapped = textwrap.wrap(label, width=p["label_width"])[: p["label_lines"]]
        for k, line in enumerate(wrapped):
            draw.text((left - p["gap"] // 2, base + 4 + 12 * k), line, fill="black", font=font)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
