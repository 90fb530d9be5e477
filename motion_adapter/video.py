"""Clips in and out of files: read a video, a GIF or a folder of frames; write a GIF or an MP4; save a grid.

A clip in memory is always a numpy array of uint8, shape (frames, height, width, 3), RGB. Decoding goes through
PyAV (which also reads GIFs); frame folders and single images through Pillow. Writers are atomic: a clip is
written to a temporary file next to its destination, then moved into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from .files import temporary_sibling

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
WRITE_SUFFIXES = (".gif", ".mp4")
GIF_FPS = (100 / 65535, 50.0)  # the rates a GIF's 16-bit delays in 1/100 s hold, players slowing delays under 2
# The rates an MP4 is written at as asked (within 0.1%, its rate a fraction of denominator <= 1001); at 0.0006 fps
# that fraction is 1/1001, and at 100,000 fps FFmpeg wrote a file that decodes to no frame.
MP4_FPS = (0.01, 10_000.0)

# MP4 encoders tried in order; the first one the installed PyAV/FFmpeg build can encode with is used.
MP4_CODECS = ("h264", "mpeg4")

_REENCODE_FIX = "re-encode it, e.g. `ffmpeg -i {name} -pix_fmt yuv420p fixed.mp4`, or remove it"


class VideoReadError(ValueError):
    """A clip or image could not be read: the message names the file and a fix."""


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value, so "frame2" comes before "frame10"."""
    # re.split with a capture group alternates text and digits, starting with text, so items compare type-wise
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_video(path: str | os.PathLike, *, default_fps: float = 8.0) -> tuple[np.ndarray, float]:
    """Read a clip: a video file (.mp4 .webm .mov .mkv .avi .gif) or a folder of frame images.

    Returns (frames, fps): frames uint8 (f, h, w, 3), fps the clip's frame rate. A folder of frames
    (.png .jpg .jpeg .webp, sorted naturally: frame2 before frame10) has no frame rate of its own and gets
    `default_fps`, as does a file whose container does not record one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No clip at {path}: check the path (a video file or a folder of frames).")
    if path.is_dir():
        return _read_frame_folder(path), float(default_fps)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(
            f"Cannot read {path}: unsupported suffix {path.suffix!r}. Supported: {', '.join(VIDEO_SUFFIXES)}, "
            f"or a folder of {'/'.join(IMAGE_SUFFIXES)} frames; convert it with `ffmpeg -i {path.name} clip.mp4`."
        )
    return _decode_with_pyav(path, default_fps=default_fps)


def _decode_with_pyav(path: Path, *, default_fps: float) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream of `path` to RGB, on an even time grid."""
    fix = _REENCODE_FIX.format(name=path.name)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} holds no video stream: it is not a clip; {fix}.")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # a GIF keeps no rate, only delays in 1/100 s: FFmpeg's guess at one would override the measured rate
            rate = None if container.format.name == "gif" else stream.guessed_rate or stream.average_rate
            declared = stream.frames  # from the container's index; 0 where it keeps none (GIF, WebM)
            recorded = _recorded_seconds(container, stream)  # where no frame count is kept, often a duration is
            frames, times = [], []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(frame.time)
            last_duration = float(frame.duration * frame.time_base) if frames and frame.duration else None
    except av.FFmpegError as err:
        raise VideoReadError(f"Could not decode {path} (corrupt or unsupported: {err}); {fix}.") from err
    if not frames:
        raise VideoReadError(f"{path} decoded to 0 frames; {fix}.")
    short_end = _short_end(times, last_duration, recorded)  # for files that record a duration but no frame count
    # a warning, not an error: some containers misreport their frame count
    if len(frames) < declared:
        warnings.warn(
            f"{path} decoded to {len(frames)} frames, but its container declares {declared}: it may be cut short "
            f"(an interrupted download or copy), and only the {len(frames)} are used. If so, fetch it again, {fix}.",
            stacklevel=3,
        )
    elif short_end is not None:
        warnings.warn(
            f"{path} decoded to {len(frames)} frames that end at {short_end:.2f} s, but its container records a "
            f"duration of {recorded:.2f} s: it may be cut short (an interrupted download or copy), and only the "
            f"{len(frames)} are used. If so, fetch it again, {fix}.",
            stacklevel=3,
        )
    elif path.suffix.lower() == ".gif" and not _ends_with_gif_trailer(path):
        warnings.warn(
            f"{path} lacks the byte that ends a GIF, so it is likely cut short (an interrupted download or copy); "
            f"only the {len(frames)} frames decoded are used. If so, fetch it again, {fix}.",
            stacklevel=3,
        )
    nominal = float(rate) if rate is not None else None
    if len(frames) > 1 and None not in times and all(a < b for a, b in zip(times, times[1:])):
        index, fps = even_time_grid(times, last_duration=last_duration, nominal_fps=nominal)
        return np.stack(frames)[index], fps
    if nominal is None and last_duration:
        nominal = 1.0 / last_duration  # a GIF's one frame: its delay
    if nominal is None:
        warnings.warn(f"{path} records no frame rate; assuming default_fps={default_fps}.", stacklevel=3)
    return np.stack(frames), nominal or float(default_fps)


def _recorded_seconds(container, stream) -> float | None:
    """The video's duration as its file records it: the stream's, else Matroska's per-track DURATION tag (where
    WebM and MKV keep no frame count), else the container's (which may include a longer audio track); or None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    hours, _, rest = stream.metadata.get("DURATION", "").partition(":")  # "00:00:05.000000000"
    minutes, _, seconds = rest.partition(":")
    try:
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return container.duration / av.time_base if container.duration else None


def _short_end(times: Sequence[float | None], last_duration: float | None, recorded: float | None) -> float | None:
    """When the decoded frames (their start times in seconds) end well before the recorded duration, the time they
    end at; else None. Well before: by more than two frames and 5% of it, a margin for rounded timestamps and for an
    audio track a little longer than the video, which a container's duration includes."""
    if recorded is None or None in times:
        return None
    frame = last_duration or (times[-1] - times[-2] if len(times) > 1 else 0.0)
    end = times[-1] + frame
    return end if recorded - end > max(2 * frame, 0.05 * recorded) else None


def _ends_with_gif_trailer(path: Path) -> bool:
    """Whether a GIF ends with its trailer byte ";": a truncated GIF decodes its whole frames without an error."""
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b";"


def even_time_grid(
    times: Sequence[float], *, last_duration: float | None = None, nominal_fps: float | None = None
) -> tuple[np.ndarray, float]:
    """Which decoded frame to show at each step of an even time grid, and the grid's rate.

    Most clips are evenly spaced already: their frames are kept and the rate is frames / duration, or the
    container's `nominal_fps` when within 2% of it (millisecond timestamps make 30 fps measure 30.03). A clip
    that is not (a GIF that holds a frame over several delays, a phone video that dropped frames) is put on a
    grid at the rate of its shortest delay (at most 4x its typical rate), repeating held frames, so that a
    frame's index stays proportional to its time, which frame sampling by fps relies on.
    """
    starts = np.asarray(times, dtype=np.float64)
    gaps = np.diff(starts)
    typical = float(np.median(gaps))
    end = starts[-1] + (last_duration if last_duration else typical)
    delays = np.append(gaps, end - starts[-1])
    if np.all(np.abs(delays - typical) <= typical / 2):
        fps = len(starts) / (end - starts[0])
        return np.arange(len(starts)), nominal_fps if nominal_fps and abs(fps / nominal_fps - 1) < 0.02 else fps
    step = max(float(delays.min()), typical / 4)
    grid = starts[0] + step * np.arange(round((end - starts[0]) / step))
    return np.searchsorted(starts, grid + 1e-6, side="right") - 1, 1 / step


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as uint8 (h, w, 3) RGB, turned upright by its EXIF orientation (phone photos)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No image at {path}: check the path.")
    try:
        with Image.open(path) as image:
            return _to_rgb8(ImageOps.exif_transpose(image))
    except OSError as err:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise VideoReadError(
            f"Could not read image {path} ({err}); re-save it as PNG (e.g. `ffmpeg -i {path.name} fixed.png`) "
            "or remove it."
        ) from err


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """uint8 RGB of an image of any mode; 16-bit greys are scaled down, where Pillow's convert would clip them, and
    transparent pixels show white (a cut-out subject photo), where Pillow's convert would show whatever colour they
    hide, often black."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        grey = np.round(values * 255.0 / 65535.0).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.has_transparency_data:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return np.array(image.convert("RGB"))


def _read_frame_folder(folder: Path) -> np.ndarray:
    """Read a folder of frame images, in natural order, as one clip."""
    names = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not names:
        clips = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        hint = ""
        if clips:
            hint = (
                f" It holds clips ({', '.join(clips[:3])}): a subfolder is read as the frames of one clip, so move "
                "the clips up to the top level, or name each in the top folder's metadata.jsonl as "
                f'{{"file_name": "{folder.name}/{clips[0]}", "text": ...}}.'
            )
        raise VideoReadError(
            f"The frame folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images; put the clip's frames in it "
            f"(e.g. `ffmpeg -i clip.mp4 {folder}/frame%04d.png`) or remove it.{hint}"
        )
    frames = [read_image(p) for p in names]
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise VideoReadError(
            f"The frames in {folder} differ in size ({sorted(sizes)}); all frames of a clip must share one size."
        )
    return np.stack(frames)


def as_uint8_frames(frames) -> np.ndarray:
    """Bring a clip to uint8 (f, h, w, 3).

    Accepts uint8 or float in [0, 1] arrays or tensors (half precision included), shaped (f, h, w, 3) or
    (1, f, h, w, 3) (what a diffusers video pipeline returns with output_type="np"), or a list of frames (PIL
    images of any mode, made RGB as `read_image` does, or arrays).
    """
    if isinstance(frames, (list, tuple)):
        frames = np.stack([_to_rgb8(f) if isinstance(f, Image.Image) else np.asarray(f) for f in frames])
    if isinstance(frames, torch.Tensor):  # numpy has no bfloat16, and a tensor may sit on the GPU
        frames = frames.detach().cpu()
        frames = (frames.float() if frames.is_floating_point() else frames).numpy()
    frames = np.asarray(frames)
    if frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]  # (1, f, h, w, 3) -> (f, h, w, 3)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"Expected one RGB clip shaped (frames, height, width, 3), at least one frame, got shape {frames.shape}; "
            "for a batch from a pipeline pass `output.frames[0]`."
        )
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"Expected uint8 or float frames, got dtype {frames.dtype}.")
    if not np.isfinite(frames).all():
        raise ValueError(
            "The frames hold NaN or infinite values (often a half-precision overflow in generation): nothing to write."
        )
    low, high = float(frames.min()), float(frames.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"Float frames must lie in [0, 1], these span [{low:.3g}, {high:.3g}]; "
            "frames in [-1, 1] convert with (x + 1) / 2."
        )
    return np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)


def write_video(path: str | os.PathLike, frames, *, fps: float = 8) -> Path:
    """Write a clip to `path` as .gif (looping) or .mp4, chosen by suffix; returns the path.

    frames: see `as_uint8_frames`. MP4 uses H.264 when the installed PyAV can encode it, else MPEG-4 part 2,
    both in yuv420p, which needs even sizes: an odd height or width is padded by repeating the last row or
    column. GIF frame delays are stored in 1/100 s; they alternate so that the average rate is `fps`.
    The file is written next to its destination under a temporary name and moved into place.
    """
    path = Path(path)
    check_writable(path, fps)
    frames = as_uint8_frames(frames)
    writer = _write_gif if path.suffix.lower() == ".gif" else _write_mp4
    with temporary_sibling(path) as tmp:
        writer(tmp, frames, fps=fps)
    return path


def check_writable(path: Path, fps: float) -> None:
    """Refuse a file `write_video` cannot write: another suffix, or a rate the format cannot hold."""
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        supported = ", ".join(WRITE_SUFFIXES)
        raise ValueError(f"Cannot write {path}: unsupported suffix {path.suffix!r}. Supported: {supported}.")
    if not 0 < fps < math.inf:
        raise ValueError(f"fps must be a positive number, got {fps}.")
    if suffix == ".gif" and not GIF_FPS[0] <= fps <= GIF_FPS[1]:
        raise ValueError(
            f"A GIF stores frame delays in 1/100 s and players slow delays under 2/100 s: fps={fps:g} is outside "
            f"[{GIF_FPS[0]:g}, {GIF_FPS[1]:g}]; write .mp4 for this rate."
        )
    if suffix == ".mp4" and not MP4_FPS[0] <= fps <= MP4_FPS[1]:
        raise ValueError(
            f"An MP4 is written at fps in [{MP4_FPS[0]:g}, {MP4_FPS[1]:g}]; fps={fps:g} would be stored as another "
            "rate, or as a file that decodes to no frame."
        )


def _write_gif(path: Path, frames: np.ndarray, *, fps: float) -> None:
    """Encode a looping GIF with FFmpeg's encoder, one adaptive palette per frame.

    Pillow's writer merges identical consecutive frames into one longer frame, which changes the frame count a
    reader sees; FFmpeg's keeps every frame. Delays are stored in 1/100 s: frame k starts at k * 100 / fps
    hundredths, rounded, so delays alternate (12, 13, ...) and the average rate is `fps`.
    Inter-frame transparency diffs are off: they compare palette indices, which differ between frames.
    """
    starts = np.floor(np.arange(len(frames) + 1) * 100 / fps + 0.5).astype(int)  # in 1/100 s, one past the end
    with av.open(str(path), mode="w", format="gif", options={"loop": "0"}) as container:
        stream = container.add_stream("gif", options={"gifflags": "-transdiff-offsetting"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "pal8"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 100)
        for k, frame in enumerate(frames):
            image = Image.fromarray(frame).quantize(256)
            rgb = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
            palette = np.zeros((256, 4), dtype=np.uint8)  # ARGB rows, as PyAV takes them
            palette[:, 0] = 255  # opaque, unused rows too: FFmpeg makes an entry with alpha 0 transparent
            palette[: len(rgb), 1:] = rgb
            gif_frame = av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")
            gif_frame.time_base, gif_frame.pts = Fraction(1, 100), int(starts[k])
            for packet in stream.encode(gif_frame):  # one packet per frame: GIF frames are all key frames
                packet.duration = int(starts[k + 1] - starts[k])
                container.mux(packet)
        container.mux(stream.encode())


def _mp4_encoder() -> str:
    """The name of the encoder behind the first of MP4_CODECS this PyAV build can encode (e.g. "libx264")."""
    for name in MP4_CODECS:
        try:
            return av.codec.Codec(name, "w").name
        except av.FFmpegError:
            continue
    raise RuntimeError(f"This PyAV build encodes none of {MP4_CODECS}; write a .gif instead.")


def _write_mp4(path: Path, frames: np.ndarray, *, fps: float) -> None:
    """Encode an MP4 in yuv420p: H.264 at CRF 18 where available, else MPEG-4 part 2 at a high bit rate."""
    # yuv420p subsamples chroma 2x2: pad odd sizes by repeating the last row/column
    _, height, width, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    encoder = _mp4_encoder()
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(
            encoder,
            rate=Fraction(fps).limit_denominator(1001),
            options={"crf": "18"} if encoder == "libx264" else {},
        )
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if encoder != "libx264":
            stream.bit_rate = max(2_000_000, 4 * stream.width * stream.height * int(np.ceil(fps)))
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def save_grid(
    path: str | os.PathLike,
    rows: Sequence,
    *,
    labels: Sequence[str] | None = None,
    fps: float = 8,
    num_columns: int = 8,
) -> Path:
    """Save several clips of one frame size side by side, e.g. "base" vs "customized".

    An image suffix (.png .jpg .jpeg .webp) writes one picture: a row per clip, `num_columns` evenly spaced
    frames as columns. .gif or .mp4 writes an animation with the clips next to each other; a shorter clip holds
    its last frame. `labels`, one per clip, are drawn in a band above each row (still) or panel (animation).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + WRITE_SUFFIXES:
        raise ValueError(
            f"Cannot save a grid to {path}: supported suffixes are {', '.join(IMAGE_SUFFIXES + WRITE_SUFFIXES)}."
        )
    clips = [as_uint8_frames(clip) for clip in rows]
    if not clips:
        raise ValueError("save_grid needs at least one clip.")
    if len({clip.shape[1:] for clip in clips}) > 1:
        raise ValueError(
            f"All clips in a grid must share one frame size, got {[clip.shape[1:3] for clip in clips]}; "
            "generate them at one height and width."
        )
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"Got {len(labels)} labels for {len(clips)} clips: give one label per clip.")
    labels = list(labels) if labels is not None else [None] * len(clips)
    if suffix in WRITE_SUFFIXES:
        length = max(len(clip) for clip in clips)
        panels = [_with_label(_hold_last(clip, length), label) for clip, label in zip(clips, labels)]
        return write_video(path, np.concatenate(panels, axis=2), fps=fps)  # panels side by side along width
    columns = min(num_columns, max(len(clip) for clip in clips))
    # each row: (1, band + h, columns * w, 3); rows stack along height
    grid = np.concatenate([_with_label(_pick_columns(clip, columns), label)[0] for clip, label in zip(clips, labels)])
    image_format = Image.registered_extensions()[suffix]
    with temporary_sibling(path) as tmp:
        Image.fromarray(grid).save(tmp, format=image_format)
    return path


def _hold_last(clip: np.ndarray, length: int) -> np.ndarray:
    """Extend a clip to `length` frames by repeating its last frame."""
    return np.concatenate([clip, np.repeat(clip[-1:], length - len(clip), axis=0)])


def _pick_columns(clip: np.ndarray, columns: int) -> np.ndarray:
    """One strip image (1, h, columns * w, 3) of evenly spaced frames (a short clip repeats some)."""
    index = np.linspace(0, len(clip) - 1, columns).round().astype(int)
    strip = np.concatenate(list(clip[index]), axis=1)  # (columns, h, w, 3) -> (h, columns * w, 3)
    return strip[None]


def _with_label(clip: np.ndarray, label: str | None) -> np.ndarray:
    """Put a white band with `label` above every frame of the clip (nothing when label is None)."""
    if label is None:
        return clip
    band = Image.new("RGB", (clip.shape[2], 14), "white")
    ImageDraw.Draw(band).text((2, 1), label, fill="black")
    bands = np.broadcast_to(np.asarray(band), (len(clip), 14, clip.shape[2], 3))
    return np.concatenate([bands, clip], axis=1)
