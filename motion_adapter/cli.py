"""The `motion-adapter` command: each subcommand parses its arguments and calls one library function.

    motion-adapter inspect SOURCE                  # an adapter's header
    motion-adapter train --data clips/ --token pll --output-dir out/pll [--config train.toml] [--rank 8 ...]
    motion-adapter train-subject --data photos/ --token sks --class-word dog --output-dir out/sks-dog
    motion-adapter generate --adapter out/pll --adapter out/sks-dog:0.8 --prompt "a sks dog doing the pll"
    motion-adapter push out/pll user/pll
    motion-adapter demo                             # the tiny built-in world, no downloads
    motion-adapter toyworld pretrain --out base/    # reproduce the shipped tiny base model
    motion-adapter toyworld ablate [--quick]        # the paper's ablation on the tiny world
"""

import argparse
import dataclasses
import functools
import itertools
import json
import sys
import types
import typing
import warnings
from pathlib import Path

from .constants import TOYWORLD_BASE_ID

DEFAULT_BASE = "cerspense/zeroscope_v2_576w"
_BASE_HELP = f"base model Hub id or folder ({TOYWORLD_BASE_ID}: the tiny built-in world) (default: {DEFAULT_BASE})"
_WORLD_BASE_HELP = "a tiny-world pipeline folder, such as the --out of `toyworld pretrain` (default: the shipped base)"


def _inspect(args) -> int:
    from .hub import inspect

    info = inspect(args.source, revision=args.revision)
    print(
        json.dumps({**info.header(), "file_bytes": info.file_bytes, "path": info.path}, indent=2) if args.json else info
    )
    return 0


def _train(args) -> int:
    from .training.loop import train_motion

    config = _config(args)  # a bad setting is refused before minutes of loading the base model
    _check_data(clips=[args.data, args.reg_data])
    result = train_motion(
        _load_base(args.base, training=True), data=args.data, token=args.token, output_dir=args.output_dir,
        reg_data=args.reg_data, config=config,
    )  # fmt: skip
    print(
        f"wrote {result.adapter_dir} ({result.steps} steps, final loss {result.final_loss:.4f}, {result.seconds:.0f} s)"
    )
    return 0


def _train_subject(args) -> int:
    from .training.loop import train_subject

    config = _config(args)  # a bad setting is refused before minutes of loading the base model
    _check_data(images=[args.data], clips=[args.motion_data, args.reg_data])
    result = train_subject(
        _load_base(args.base, training=True), data=args.data, token=args.token, class_word=args.class_word,
        output_dir=args.output_dir, config=config, preset=args.subject_preset, motion_data=args.motion_data,
        motion_token=args.motion_token, reg_data=args.reg_data,
        **({"caption_template": args.image_caption_template} if args.image_caption_template else {}),
    )  # fmt: skip
    print(
        f"wrote {result.adapter_dir} ({result.steps} steps, final loss {result.final_loss:.4f}, {result.seconds:.0f} s)"
    )
    return 0


def _generate(args) -> int:
    from .hub import inspect
    from .pipeline import generate, load_motion_adapter
    from .video import check_writable, write_video

    check_writable(Path(args.out), args.fps)  # before minutes of loading and sampling
    specs = [split_weight(spec) for spec in args.adapter]
    names = _unique_names([source for source, _ in specs])
    paths = [inspect(source, revision=args.revision).path for source, _ in specs]  # a missing adapter: refused now
    pipe = _load_base(args.base)
    for path, name, (_, weight) in zip(paths, names, specs):
        load_motion_adapter(pipe, path, adapter_name=name, weight=weight)
        print(f"loaded {name} at weight {weight:g}")
    frames = generate(
        pipe, args.prompt, num_frames=args.frames, height=args.height, width=args.width,
        num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
    )  # fmt: skip
    print(f"wrote {write_video(args.out, frames, fps=args.fps)}")
    return 0


def _push(args) -> int:
    from .hub import push_to_hub

    commit = push_to_hub(
        args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.message,
        revision=args.revision, create_pr=args.create_pr,
    )  # fmt: skip
    print(f"pushed {args.folder} to {args.repo_id}: {getattr(commit, 'commit_url', commit)}")
    return 0


def _demo(args) -> int:
    import torch

    from .toyworld.demo import format_table, run_demo, train_config
    from .toyworld.model import load_pipeline

    torch.set_num_threads(1)  # the tiny world's models gain nothing from threads, and lose much on a busy machine

    config = train_config(seed=args.seed, **({"max_train_steps": args.steps} if args.steps is not None else {}))
    pipe = load_pipeline(args.base) if args.base else None
    metrics = run_demo(args.out, motion=args.motion, seed=args.seed, config=config, pipe=pipe)
    print(format_table(metrics))
    print(f"\nwrote {args.out}/: adapter/, samples/, comparison.png, comparison.gif, metrics.json")
    return 0


def _pretrain(args) -> int:
    from .toyworld.pretrain import pretrain

    options = {name: value for name, value in vars(args).items() if name in _pretrain_options() and value is not None}
    print(f"wrote {pretrain(args.out, **options)}")
    return 0


def _ablate(args) -> int:
    import torch

    from .toyworld.ablation import run_ablation
    from .toyworld.ablation_report import format_table
    from .toyworld.model import load_pipeline

    torch.set_num_threads(1)  # each worker process runs one thread too: the tiny models gain nothing from more
    results = run_ablation(
        args.out, quick=args.quick, motions=args.motions, seeds=args.seeds, variants=args.variants, steps=args.steps,
        prompts_per_run=args.prompts, prior_prompts=args.prior_prompts, composition=not args.no_composition,
        workers=args.workers, pipe_factory=functools.partial(load_pipeline, args.base) if args.base else None,
    )  # fmt: skip
    print(format_table(results))
    print(f"wrote {args.out}/: runs.json, table.md, plot.png (runs in {results['seconds']:.0f} s)")
    return 0


def _pretrain_options() -> dict:
    """pretrain()'s keyword options, (default, type) each: each becomes a flag of `toyworld pretrain`."""
    import inspect

    from .toyworld.pretrain import pretrain

    return {
        name: (parameter.default, _plain_type(parameter.annotation))
        for name, parameter in inspect.signature(pretrain).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _check_data(*, clips=(), images=()) -> None:
    """Fail on missing data, or a folder holding no clips or images, before minutes of loading the base model: the
    training loop's own listing, whose warnings about other files it gives again when it loads the data."""
    from .training.data import find_clips, find_images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for find, paths in ((find_clips, clips), (find_images, images)):
            for path in filter(None, paths):
                find(path)


def _positive_int(text: str) -> int:
    """argparse type of a count (steps, frames, pixels, fps): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def split_weight(spec: str) -> tuple[str, float]:
    """'user/pll:0.8' -> ('user/pll', 0.8); without a weight, 1.0."""
    source, sep, weight = spec.rpartition(":")
    try:
        return (source, float(weight)) if sep else (spec, 1.0)
    except ValueError:
        return spec, 1.0


def _unique_names(sources) -> list[str]:
    """Each source's default adapter name, a repeat numbered (adapter, adapter-2, ...): two demo runs both write
    OUT/adapter, and the command has no flag for adapter_name=."""
    from .pipeline import name_from_source

    names = []
    for source in sources:
        base = name = name_from_source(source)
        for number in itertools.count(2):
            if name not in names:
                break
            name = f"{base}-{number}"
        names.append(name)
    return names


def _load_base(name: str, *, training: bool = False):
    """The base pipeline from a Hub id or folder, on this process's GPU if there is one (under `accelerate launch`
    each process its own): in fp16 there for generating; for training in fp32, cast as --mixed-precision asks.
    A path that holds no pipeline is refused before anything loads; the tiny world's id reads the shipped weights;
    any other Hub id goes to diffusers as it is, and one it cannot load (offline, mistyped) is one clear error."""
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or path.exists():  # a folder, not a Hub id
        if not (path / "model_index.json").is_file():
            problem = "is not a pipeline folder (no model_index.json)" if path.exists() else "does not exist"
            raise FileNotFoundError(
                f"base {name} {problem}: a base folder holds model_index.json and a subfolder per model (unet, vae, "
                f"text_encoder, tokenizer, scheduler), as save_pretrained writes it; or a Hub id such as {DEFAULT_BASE}"
            )
        name = str(path.resolve())  # adapters record the base by this name: the same from any working directory

    import torch
    from accelerate import PartialState
    from diffusers import DiffusionPipeline

    device = PartialState().device if torch.cuda.is_available() else torch.device("cpu")
    if name == TOYWORLD_BASE_ID:  # no Hub repo holds it: the package ships it (its models are tiny: fp32 everywhere)
        from .toyworld.model import load_pipeline

        return load_pipeline().to(device)
    half = device.type == "cuda" and not training
    try:
        pipe = DiffusionPipeline.from_pretrained(name, torch_dtype=torch.float16 if half else torch.float32)
    except OSError as error:  # diffusers' own message points at a traceback that main() does not print
        if Path(name).is_dir():  # a pipeline folder with a part missing: diffusers' message names it
            raise FileNotFoundError(f"base {name} could not be loaded: {error}") from error
        raise FileNotFoundError(
            f"base {name} could not be loaded: no local folder has that name, and the Hub id is neither cached nor "
            f"downloadable now ({error}). Check the id (such as {DEFAULT_BASE}); or give a local pipeline folder (as "
            f"save_pretrained writes it) as --base; or run once while online to cache it (HF_HUB_OFFLINE=1 then reads "
            f"the cache). The tiny built-in world is --base {TOYWORLD_BASE_ID}"
        ) from error
    return pipe.to(device)


# ---------------------------------------------------------------- TrainConfig as flags


def _add_config_flags(parser: argparse.ArgumentParser, skip=()) -> None:
    """One flag per TrainConfig field but those in `skip` (a command's own flag replaces them), its help text from
    the field; unset flags leave the TOML or default."""
    from .training.config import TrainConfig

    group = parser.add_argument_group("training settings (TrainConfig; also readable from --config FILE.toml)")
    group.add_argument("--config", default=None, help="a TOML file of TrainConfig fields (flags override it)")
    for item in dataclasses.fields(TrainConfig):
        if item.name in skip:
            continue
        _add_typed_flag(group, item.name, _plain_type(item.type), f"{item.metadata['help']} (default: {item.default})")


def _add_typed_flag(parser, name: str, kind: type, help_text: str) -> None:
    """`--name-with-dashes` for a bool (with --no-), a list or a plain value; unset leaves None, so defaults apply."""
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif kind is list:
        parser.add_argument(flag, dest=name, nargs="+", default=None, help=help_text)
    else:
        parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def _plain_type(annotation):
    """int, float, str, bool or list from a field annotation such as `float | None` or `list[str] | None`."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return list if typing.get_origin(annotation) is list else annotation


def _config(args):
    from .training.config import TrainConfig

    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}  # a skipped flag: None
    given = {name: value for name, value in given.items() if value is not None}
    return TrainConfig.from_toml(args.config, **given) if args.config else TrainConfig(**given)


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motion-adapter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="print an adapter's kind, tokens, base model, preset, rank, size")
    inspect.add_argument("source", help="an adapter folder, a .safetensors file, or a Hub repo id")
    inspect.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    inspect.add_argument("--json", action="store_true", help="print the header as JSON")
    inspect.set_defaults(run=_inspect)

    train = commands.add_parser("train", help="train a motion adapter from a folder of clips")
    train.add_argument("--base", default=DEFAULT_BASE, help=_BASE_HELP)
    train.add_argument("--data", required=True, help="folder of example clips of the motion")
    train.add_argument("--token", required=True, help="the word the motion binds to, e.g. pll")
    train.add_argument("--output-dir", required=True, help="where the adapter folder is written")
    train.add_argument("--reg-data", default=None, help="folder of regularization clips with their own captions")
    _add_config_flags(train)
    train.set_defaults(run=_train)

    subject = commands.add_parser("train-subject", help="train a subject adapter from a folder of images")
    subject.add_argument("--base", default=DEFAULT_BASE, help=_BASE_HELP)
    subject.add_argument("--data", required=True, help="folder of images of the subject")
    subject.add_argument("--token", required=True, help="the new word for the subject, e.g. sks")
    subject.add_argument("--class-word", required=True, help="what the subject is, e.g. dog (initialises the token)")
    subject.add_argument("--output-dir", required=True, help="where the adapter folder is written")
    subject.add_argument("--subject-preset", default=None, help="layers (default: subject, +temporal where images run "
                         "through the temporal layers; joint: motion+appearance)")
    subject.add_argument("--motion-data", default=None, help="clips of a motion, for joint subject+motion training")
    subject.add_argument("--motion-token", default=None, help="the motion's token, for joint training")
    subject.add_argument("--reg-data", default=None, help="folder of regularization clips")
    subject.add_argument("--image-caption-template", default=None, help="caption of the images that have none, with "
                         "{token} and {class_word} (default: 'a photo of a {token} {class_word}'); --caption-template "
                         "captions the motion clips of joint training")
    _add_config_flags(subject, skip=("preset",))  # --subject-preset: a subject's layers have their own default
    subject.set_defaults(run=_train_subject)

    push = commands.add_parser("push", help="upload an adapter folder to the Hub in one commit, with its model card")
    push.add_argument("folder", help="the adapter folder")
    push.add_argument("repo_id", help="e.g. user/pll")
    push.add_argument("--private", action="store_true", default=None, help="create the repo private")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the cached login)")
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--revision", default=None, help="branch to push to")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.set_defaults(run=_push)

    demo = commands.add_parser("demo", help="the tiny built-in world: teach its base a new motion, show the result")
    demo.add_argument("--out", default="motion-adapter-demo", help="output folder")
    demo.add_argument("--motion", default="bounce", help="the held-out motion to teach (bounce, orbit, zigzag, ...)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the world's recipe)")
    demo.add_argument("--base", default=None, help=_WORLD_BASE_HELP)
    demo.set_defaults(run=_demo)

    world = commands.add_parser("toyworld", help="the tiny built-in world: pretrain its base model, run the ablation")
    world_commands = world.add_subparsers(dest="toyworld_command", required=True)
    pretrain = world_commands.add_parser("pretrain", help="reproduce the shipped base model's weights")
    pretrain.add_argument("--out", required=True, help="output folder (a pipeline folder, checkpoints, log)")
    for name, (default, kind) in _pretrain_options().items():
        _add_typed_flag(pretrain, name, kind, f"(default: {default})")
    pretrain.set_defaults(run=_pretrain)
    ablate = world_commands.add_parser("ablate", help="the paper's ablation grid: runs.json, table.md, plot.png")
    ablate.add_argument("--out", default="motion-adapter-ablation", help="output folder")
    ablate.add_argument("--quick", action="store_true", help="the reduced grid (within 10 minutes on 2 CPU cores)")
    ablate.add_argument("--base", default=None, help=_WORLD_BASE_HELP)
    ablate.add_argument("--motions", nargs="+", default=None,
                        help="held-out motions to teach (default: all five; the bounce with --quick); the "
                             "learning-rate sweeps read the first two, the composition study the first")  # fmt: skip
    ablate.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="training seeds (default: 0 1; 0 with --quick)")  # fmt: skip
    ablate.add_argument("--variants", nargs="+", default=None,
                        help="rows of the grid (default: all; five with --quick); each factor shown keeps its "
                             "default row")  # fmt: skip
    ablate.add_argument("--steps", type=_positive_int, default=None,
                        help="training steps per run (default: 300; 200 with --quick)")  # fmt: skip
    ablate.add_argument("--prompts", type=_positive_int, default=None, help="new-appearance prompts per run")
    ablate.add_argument("--prior-prompts", type=_positive_int, default=None,
                        help="pretraining prompts per run, for prior preservation")  # fmt: skip
    ablate.add_argument("--no-composition", action="store_true", help="skip the subject + motion composition study")
    ablate.add_argument("--workers", type=_positive_int, default=None,
                        help="processes side by side, one thread each (default: one per CPU core)")  # fmt: skip
    ablate.set_defaults(run=_ablate)

    gen = commands.add_parser("generate", help="generate a clip with adapters loaded")
    gen.add_argument("--base", default=DEFAULT_BASE, help=_BASE_HELP)
    gen.add_argument("--adapter", action="append", default=[], help="SOURCE[:WEIGHT], repeatable: they compose")
    gen.add_argument("--revision", default=None, help="Hub revision of the adapters")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--frames", type=_positive_int, default=16)
    gen.add_argument("--height", type=_positive_int, default=None, help="default: the model's")
    gen.add_argument("--width", type=_positive_int, default=None, help="default: the model's")
    gen.add_argument("--steps", type=_positive_int, default=40)
    gen.add_argument("--guidance", type=float, default=9.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fps", type=_positive_int, default=8)
    gen.add_argument("--out", default="clip.gif", help="a .gif or .mp4 file")
    gen.set_defaults(run=_generate)
    return parser


def main(argv=None) -> int:
    from .errors import MotionAdapterError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (MotionAdapterError, FileNotFoundError, ValueError) as error:
        command = " ".join(filter(None, (args.command, getattr(args, "toyworld_command", None))))
        print(f"motion-adapter {command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
