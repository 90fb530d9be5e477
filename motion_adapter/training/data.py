"""Training data: clips (or subject images) with captions, decoded once at the training size.

`load_clip_folder` and `load_image_folder` turn a folder, or a list of paths, into `ClipExample`s: every frame
of a clip, resampled in time (frame stride or target fps), resized on its short side and center-cropped to the
training size, in [-1, 1], with its caption. The VAE and text encoder are frozen, so the training loop encodes
each example once (with latent_cache="off", each step's window instead); every step it picks a random window of
num_frames (of frames or of cached latents) with `sample_window`. Captions come from metadata.jsonl, else a
sibling <name>.txt, else one template for all. Caption files are UTF-8 (a byte order mark is accepted).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from motion_adapter.video import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoReadError,
    natural_key,
    read_image,
    read_video,
)

METADATA_FILE = "metadata.jsonl"  # the `datasets` video/image folder convention: {"file_name": ..., "text": ...}
# width / height of the aspect buckets offered with bucket=True, from tall to wide
BUCKET_ASPECTS = (1 / 2, 9 / 16, 2 / 3, 3 / 4, 1, 4 / 3, 3 / 2, 16 / 9, 2)
_RESIZE_CHUNK = 8  # frames resized at once: bounds the float copy of a long full-HD clip


class DataError(ValueError):
    """Training data that cannot be used as given: the message names the file and the fix."""


@dataclass
class ClipExample:
    """One decoded training clip (or a subject image, as a one-frame clip)."""

    frames: torch.Tensor  # (f_total, 3, h, w) float in [-1, 1], resampled in time, resized and cropped
    caption: str
    source: Path
    fps: float | None = None  # frame rate of `frames` after resampling; None for an image


def load_clip_folder(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    token: str | None = None,
    caption_template: str | None = None,
    num_frames: int,
    height: int,
    width: int,
    frame_stride: int = 1,
    fps: float | None = None,
    multiple_of: int = 8,
    skip_bad_clips: bool = False,
    bucket: bool = False,
) -> list[ClipExample]:
    """Load every clip of `data` (a folder of .mp4/.webm/.mov/.mkv/.avi/.gif files and frame folders, or a list
    of them) with its caption, resampled and resized for training.

    Time: keep every `frame_stride`-th frame, or resample to `fps` frames per second (a frame folder counts as
    8 fps); each clip must keep at least `num_frames`. Space: resize the short side, center-crop to
    height x width (both divisible by `multiple_of`, the VAE factor). No horizontal flip: it would turn
    "moving left" into "moving right". With `bucket=True` each clip is instead cropped to the size in
    `bucket_sizes(height, width)` (about the same pixel count) closest to its own aspect ratio, so wide and tall
    clips lose less; examples then differ in size and cannot be stacked into one batch.
    A metadata.jsonl line may name a clip in a subfolder ("train/clip1.mp4", the `datasets` layout); such a
    subfolder then holds clips, not frames, and only the clips it names are used.
    An unreadable or too short clip raises, or with `skip_bad_clips=True` is skipped with one warning.
    `token`, when given, must appear in at least one caption.
    """
    check_size(height, width, multiple_of=multiple_of)
    if num_frames < 1 or frame_stride < 1:
        raise ValueError(f"num_frames and frame_stride must be >= 1, got {num_frames} and {frame_stride}.")
    if fps is not None and (fps <= 0 or frame_stride != 1):
        raise ValueError(
            f"Give a positive fps or a frame_stride, not both (got fps={fps}, frame_stride={frame_stride})."
        )
    sources = find_clips(data)
    captions = resolve_captions(sources, data=data, token=token, caption_template=caption_template,
                                example="a person doing the {token}")
    sizes = bucket_sizes(height, width, multiple_of=multiple_of) if bucket else [(height, width)]

    examples, skipped, slow = [], [], []
    progress = tqdm(zip(sources, captions), total=len(sources), desc="loading clips", unit="clip", **progress_options())
    with progress:  # closed on an error too, so that the error does not print on the line of the bar
        for source, caption in progress:
            try:
                frames, source_fps = read_video(source)
                index, clip_fps = resample_indices(
                    len(frames), source_fps=source_fps, frame_stride=frame_stride, fps=fps
                )
                if len(index) < num_frames:
                    how = f"resampling to {fps:g} fps" if fps is not None else f"frame_stride={frame_stride}"
                    raise DataError(
                        f"{source} has {len(index)} frames after {how} ({len(frames)} decoded at {source_fps:g} "
                        f"fps), fewer than num_frames={num_frames}; lower num_frames, frame_stride or fps, or remove "
                        "the clip."
                    )
            except (VideoReadError, DataError) as err:
                if not skip_bad_clips:
                    hint = "(Or pass skip_bad_clips=True (--skip-bad-clips) to skip such clips.)"
                    raise type(err)(f"{err} {hint}") from err
                skipped.append(f"{source.name}: {err}")
                continue
            if fps is not None and source_fps < fps:
                slow.append(f"{source.name} ({source_fps:g} fps)")
            clip_height, clip_width = choose_bucket(frames.shape[1], frames.shape[2], sizes)
            frames = resize_and_crop(frames[index], clip_height, clip_width)
            examples.append(ClipExample(frames, caption, source, clip_fps))

    if slow:
        warnings.warn(
            f"{len(slow)} clips have a lower frame rate than fps={fps:g}, so frames repeat: {', '.join(slow)}.",
            stacklevel=2,
        )
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} of {len(sources)} clips: " + " | ".join(skipped), stacklevel=2)
    if not examples:
        raise DataError(f"All {len(sources)} clips of {_describe(data)} were skipped; see the warning for why.")
    if token is not None and not any(holds_token(example.caption, token) for example in examples):
        raise DataError(
            f"Every clip of {_describe(data)} whose caption holds the token {token!r} was skipped (see the warning "
            "for why): mend or replace those clips, or caption the others with the token."
        )
    return examples


def load_image_folder(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    token: str | None = None,
    caption_template: str | None = None,
    height: int,
    width: int,
    multiple_of: int = 8,
    bucket: bool = False,
) -> list[ClipExample]:
    """Load subject images (.png/.jpg/.jpeg/.webp in a folder, or a list of them) as one-frame clips.

    Captions, resizing, cropping and buckets work as in `load_clip_folder`; frames is (1, 3, h, w).
    """
    check_size(height, width, multiple_of=multiple_of)
    sources = find_images(data)
    captions = resolve_captions(sources, data=data, token=token, caption_template=caption_template,
                                example="a photo of a {token}")
    sizes = bucket_sizes(height, width, multiple_of=multiple_of) if bucket else [(height, width)]
    examples = []
    progress = tqdm(
        zip(sources, captions), total=len(sources), desc="loading images", unit="image", **progress_options()
    )
    with progress:
        for source, caption in progress:
            image = read_image(source)[None]  # (h, w, 3) -> (1, h, w, 3)
            image_height, image_width = choose_bucket(image.shape[1], image.shape[2], sizes)
            examples.append(ClipExample(resize_and_crop(image, image_height, image_width), caption, source))
    return examples


def progress_options() -> dict:
    """tqdm options for a progress bar shown by the main process only, as the training loop's bar is: the other
    processes of a multi-GPU run load the same data and would repeat it."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    # {} rather than disable=False on the main process: disable=False would override TQDM_DISABLE=1
    return {"disable": True} if distributed and torch.distributed.get_rank() != 0 else {}


def sample_window(num_available: int, num_frames: int, generator: torch.Generator | None = None) -> slice:
    """A random window of `num_frames` consecutive frames out of `num_available`, e.g. `latents[:, window]`.

    Every start is equally likely; pass a seeded torch.Generator for a reproducible sequence of windows.
    """
    if not 1 <= num_frames <= num_available:
        raise ValueError(f"Cannot take a window of {num_frames} frames from {num_available}.")
    start = int(torch.randint(num_available - num_frames + 1, (1,), generator=generator))
    return slice(start, start + num_frames)


def check_size(height: int, width: int, *, multiple_of: int) -> None:
    """Raise when the training size is not positive or not divisible by the VAE factor `multiple_of`."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple_of:
            lower = max(multiple_of, value // multiple_of * multiple_of)
            raise ValueError(
                f"{name}={value} must be a positive multiple of {multiple_of} (the VAE's downsampling factor): "
                f"use {lower} or {lower + multiple_of}."
            )


def find_clips(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The clips `load_clip_folder` reads from `data`: video files and folders of frames (`find_sources`)."""
    return find_sources(data, suffixes=VIDEO_SUFFIXES, frame_folders=True)


def find_images(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The images `load_image_folder` reads from `data` (`find_sources`)."""
    return find_sources(data, suffixes=IMAGE_SUFFIXES, frame_folders=False)


def find_sources(
    data: str | os.PathLike | Sequence[str | os.PathLike], *, suffixes: Sequence[str], frame_folders: bool
) -> list[Path]:
    """The training files of `data`: a folder's files with `suffixes` (and, with `frame_folders`, its
    subfolders, each one clip) in natural order; or a given list of such paths; or one such file."""
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        return _scan_folder(Path(data), suffixes=suffixes, frame_folders=frame_folders)
    paths = [Path(data)] if isinstance(data, (str, os.PathLike)) else [Path(p) for p in data]
    if not paths:
        raise DataError("The list of training files is empty.")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"Training data {path} does not exist: check the path.")
        if not (path.suffix.lower() in suffixes or (frame_folders and path.is_dir())):
            allowed = ", ".join(suffixes) + (", or a folder of frames" if frame_folders else "")
            raise DataError(f"{path} is not a supported training file: use {allowed}.")
    return paths


def _scan_folder(folder: Path, *, suffixes: Sequence[str], frame_folders: bool) -> list[Path]:
    """Files with `suffixes` (and frame subfolders) of `folder`, then those its metadata.jsonl names in subfolders
    (the `datasets` layout: "train/clip1.mp4"); warn about what else is there."""

    def usable(path: Path) -> bool:
        return path.suffix.lower() in suffixes or (frame_folders and path.is_dir())

    named = sorted((name for name in read_metadata(folder) if _in_subfolder(name)), key=natural_key)
    nested = [folder / name for name in named if usable(folder / name) and (folder / name).exists()]
    holders = {path.relative_to(folder).parts[0] for path in nested}  # subfolders of clips, not frame folders
    sources, ignored = [], []
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.name.startswith(".") or path.name in (METADATA_FILE, *holders) or path.suffix.lower() == ".txt":
            continue
        if usable(path):
            sources.append(path)
        else:
            ignored.append(path.name)
    sources += nested
    what = "clips" if frame_folders else "images"
    if ignored:
        warnings.warn(
            f"Ignoring {len(ignored)} entries of {folder} that are not {what} ({', '.join(suffixes)}): "
            f"{', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''}.",
            stacklevel=4,
        )
    if sources:
        return sources
    hint = ""
    if frame_folders and any(name.lower().endswith(IMAGE_SUFFIXES) for name in ignored):
        hint = (
            " It holds images: if they are the frames of one clip, put them in a subfolder "
            "(one folder per clip); if they are subject photos, use load_image_folder."
        )
    kinds = ", ".join(suffixes) + (" files or frame folders" if frame_folders else " files")
    raise DataError(f"No {what} found in {folder}: add {kinds}.{hint}")


def _in_subfolder(file_name: str) -> bool:
    """Whether a metadata.jsonl file_name ("train/clip1.mp4") names a file in a subfolder of its folder."""
    parts = Path(file_name).parts
    return len(parts) > 1 and not Path(file_name).is_absolute() and ".." not in parts


def read_metadata(folder: Path) -> dict[str, str]:
    """Captions from `folder`/metadata.jsonl, keyed by file_name (relative to the folder, with "/" between
    folders); {} without the file."""
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    captions = {}
    example = '{"file_name": "clip1.mp4", "text": "a person doing the pll"}'
    for number, line in enumerate(read_caption_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number} is not valid JSON ({err.msg}); each line is like {example}.") from err
        valid = isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("file_name", "text"))
        if not valid:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataError(f"{path}:{number} needs string keys file_name and text (got {keys}); e.g. {example}.")
        if not entry["text"].strip():
            raise DataError(f"{path}:{number} has an empty text for {entry['file_name']}: write its caption there.")
        captions[Path(entry["file_name"]).as_posix()] = entry["text"]
    return captions


def read_caption_file(path: Path) -> str:
    """The text of a caption file (metadata.jsonl or <name>.txt), which must be UTF-8; a byte order mark, which
    some editors write, is dropped."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line} is not UTF-8 (byte {raw[err.start]:#04x}): save the file as UTF-8 (your editor's "
            "Save As, or `iconv -f latin1 -t utf-8` for a Latin-1 file)."
        ) from err


def resolve_captions(
    sources: Sequence[Path],
    *,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    token: str | None,
    caption_template: str | None,
    example: str = "a person doing the {token}",
) -> list[str]:
    """One caption per source: its metadata.jsonl entry, else its sibling <name>.txt, else the template.

    With a token, at least one caption must contain it (as a word); captions without it are only warned about.
    `example` is the template the errors suggest (a motion's or a subject's).
    """
    fallback = _fill_template(caption_template, token=token)
    root = Path(data) if isinstance(data, (str, os.PathLike)) and Path(data).is_dir() else None
    metadata: dict[Path, dict[str, str]] = {}
    captions = []
    for source in sources:
        folder = root if root is not None else source.parent  # the folder whose metadata.jsonl names the source
        if folder not in metadata:  # once a folder: setdefault would read the file again for every source
            metadata[folder] = read_metadata(folder)
        entries = metadata[folder]
        file_name = source.relative_to(folder).as_posix()
        sibling = source.parent / f"{source.stem if source.is_file() else source.name}.txt"
        if file_name in entries:
            captions.append(entries[file_name])
        elif sibling.is_file():
            text = read_caption_file(sibling).strip()
            if not text:
                raise DataError(f"The caption file {sibling} is empty: write the caption of {source.name} in it.")
            captions.append(text)
        elif fallback is not None:
            captions.append(fallback)
        else:
            template = f", or pass caption_template={example!r}" if token is not None else ""
            raise DataError(
                f"No caption for {source}: add a line {{\"file_name\": \"{file_name}\", \"text\": ...}} to "
                f"{folder / METADATA_FILE}, or write {sibling.name} next to it{template}."
            )
    if root is not None:
        unused = sorted(set(metadata.get(root, {})) - {source.relative_to(root).as_posix() for source in sources})
        if unused:
            warnings.warn(
                f"{root / METADATA_FILE} names files that are not in the folder: {', '.join(unused[:5])}; "
                "check its file_name values.",
                stacklevel=3,
            )
    if token is not None:
        _check_token(captions, sources, token=token, data=data, example=example)
    return captions


def _fill_template(caption_template: str | None, *, token: str | None) -> str | None:
    """The template's caption, checking that it only uses {token}, and only when a token is given."""
    if caption_template is None:
        return None
    fields = {name for _, name, _, _ in string.Formatter().parse(caption_template) if name is not None}
    if fields - {"token"}:
        raise ValueError(
            f"caption_template may only use {{token}} (and a subject's {{class_word}}), got {caption_template!r}."
        )
    if "token" in fields and token is None:
        raise ValueError(f"caption_template {caption_template!r} uses {{token}}: pass token= as well.")
    return caption_template.format(token=token)


def holds_token(caption: str, token: str) -> bool:
    """Whether `caption` has `token` as a word ("doing the pll." holds "pll"; "pllx" does not)."""
    return re.search(rf"(?<!\w){re.escape(token)}(?!\w)", caption) is not None


def _check_token(captions: Sequence[str], sources: Sequence[Path], *, token: str, data, example: str) -> None:
    """Raise when no caption contains `token` as a word; warn about the captions that lack it."""
    missing = [i for i, caption in enumerate(captions) if not holds_token(caption, token)]
    if len(missing) == len(captions):
        raise DataError(
            f"No caption of {_describe(data)} contains the token {token!r} (e.g. {captions[0]!r} for "
            f"{sources[0].name}): put it in the captions, e.g. {example.format(token=token)!r}, or pass "
            f"caption_template={example!r} and remove the other captions."
        )
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(captions)} captions do not contain the token {token!r} "
            f"(e.g. {captions[missing[0]]!r} for {sources[missing[0]].name}); those clips train without it.",
            stacklevel=4,
        )


def _describe(data) -> str:
    """`data` in an error message: the folder, or the folders of the listed files."""
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    return "the listed files in " + ", ".join(sorted({str(Path(p).parent) for p in data}))


def resample_indices(
    num_decoded: int, *, source_fps: float, frame_stride: int = 1, fps: float | None = None
) -> tuple[np.ndarray, float]:
    """Indices of the decoded frames to keep, and the resulting frame rate.

    Every `frame_stride`-th frame, or, with `fps`, the frame shown at each step k / fps of the clip's duration
    (frames repeat when the clip is slower than `fps`).
    """
    if fps is None:
        return np.arange(0, num_decoded, frame_stride), source_fps / frame_stride
    count = math.floor(num_decoded * fps / source_fps + 1e-6)  # steps of 1/fps that fit in the clip
    return np.floor(np.arange(count) * source_fps / fps + 1e-6).astype(int), float(fps)


def resize_and_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (f, h0, w0, 3) frames -> float (f, 3, height, width) in [-1, 1].

    Resizes so that the clip covers height x width (its short side, relative to the target's aspect, matches)
    with antialiased bicubic filtering, then crops the center.
    """
    frames = np.require(frames, requirements=("C_CONTIGUOUS", "WRITEABLE"))  # what torch.from_numpy needs
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (f, h0, w0, 3) -> (f, 3, h0, w0)
    source_height, source_width = video.shape[-2:]
    scale = max(height / source_height, width / source_width)
    size = (max(height, round(source_height * scale)), max(width, round(source_width * scale)))
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    out = torch.empty(len(video), 3, height, width)
    for start in range(0, len(video), _RESIZE_CHUNK):
        chunk = video[start : start + _RESIZE_CHUNK].float()
        if size != (source_height, source_width):
            chunk = F.interpolate(chunk, size=size, mode="bicubic", antialias=True, align_corners=False)
        out[start : start + _RESIZE_CHUNK] = chunk[..., top : top + height, left : left + width]
    return out.clamp_(0, 255).div_(127.5).sub_(1)


def bucket_sizes(height: int, width: int, *, multiple_of: int = 8) -> list[tuple[int, int]]:
    """(height, width) sizes with about height * width pixels, one per aspect of BUCKET_ASPECTS plus the
    requested size, all divisible by `multiple_of`; sorted from tall to wide."""
    area = height * width
    sizes = {(height, width)}
    for aspect in BUCKET_ASPECTS:
        bucket_height = max(multiple_of, round(math.sqrt(area / aspect) / multiple_of) * multiple_of)
        bucket_width = max(multiple_of, round(math.sqrt(area * aspect) / multiple_of) * multiple_of)
        sizes.add((bucket_height, bucket_width))
    return sorted(sizes, key=lambda size: size[1] / size[0])


def choose_bucket(clip_height: int, clip_width: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The size whose aspect ratio is closest (in log ratio) to the clip's."""
    clip_aspect = math.log(clip_width / clip_height)
    return min(sizes, key=lambda size: abs(math.log(size[1] / size[0]) - clip_aspect))
