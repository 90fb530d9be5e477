"""Tests for motion_adapter.video: reading and writing clips, frame folders, grids, and their errors."""

import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from motion_adapter import video
from motion_adapter.video import VideoReadError, even_time_grid, read_image, read_video, save_grid, write_video


def moving_square(num_frames=8, height=32, width=48):
    """A white square on dark grey moving right by 4 px a frame: uint8 (f, h, w, 3)."""
    frames = np.full((num_frames, height, width, 3), 30, dtype=np.uint8)
    for k in range(num_frames):
        frames[k, 8:20, 4 * k : 4 * k + 12] = 255
    return frames


def test_mp4_round_trip_keeps_shape_fps_and_content(tmp_path):
    clip = moving_square()
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)
    frames, fps = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(8.0)
    assert np.abs(frames.astype(int) - clip).mean() < 4  # lossy, but close


def test_mp4_falls_back_to_mpeg4(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "MP4_CODECS", ("mpeg4",))
    clip = moving_square()
    frames, fps = read_video(write_video(tmp_path / "clip.mp4", clip, fps=12))
    assert frames.shape == clip.shape and fps == pytest.approx(12.0)
    assert np.abs(frames.astype(int) - clip).mean() < 6


def test_mp4_pads_odd_sizes(tmp_path):
    clip = moving_square(height=31, width=45)
    frames, _ = read_video(write_video(tmp_path / "odd.mp4", clip))
    assert frames.shape == (8, 32, 46, 3)
    assert np.abs(frames[:, :31, :45].astype(int) - clip).mean() < 4


def test_gif_round_trip_is_exact_and_keeps_repeated_frames(tmp_path):
    clip = moving_square()
    clip[3] = clip[2]  # a held frame: Pillow's writer would merge these two
    frames, fps = read_video(write_video(tmp_path / "clip.gif", clip, fps=8))
    np.testing.assert_array_equal(frames, clip)
    assert fps == pytest.approx(8.0)
    assert Image.open(tmp_path / "clip.gif").info.get("loop") == 0


def test_gif_round_trip_is_exact_for_soft_edged_frames(tmp_path):
    """Frames of a few shades each (anti-aliased edges): every frame comes back as written.

    FFmpeg's GIF encoder makes a palette entry with alpha 0 transparent; unused palette rows must be opaque, or
    frames whose palette has such a row came back with the shape partly missing.
    """
    rows, cols = np.mgrid[0:32, 0:32]
    clip = []
    for k in range(8):
        distance = np.maximum(np.abs(cols - 10 - 2 * k), np.abs(rows - 12)) - 6  # a square of half-side 6
        cover = np.clip(0.5 - distance / (1 + k % 3), 0, 1)[..., None]  # its soft edge 1 to 3 pixels wide
        clip.append(np.rint(240 + cover * (np.array([40, 190 - 10 * k, 60]) - 240)).astype(np.uint8))
    clip = np.stack(clip)
    frames, _ = read_video(write_video(tmp_path / "soft.gif", clip))
    np.testing.assert_array_equal(frames, clip)


def test_gif_with_merged_frames_is_put_on_an_even_grid(tmp_path):
    clip = moving_square(num_frames=6)
    clip[2] = clip[3] = clip[1]  # Pillow stores frame 1 once, shown for 3 delays
    images = [Image.fromarray(frame) for frame in clip]
    images[0].save(tmp_path / "held.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    frames, fps = read_video(tmp_path / "held.gif")
    assert fps == pytest.approx(10.0)
    np.testing.assert_array_equal(frames, clip)


def test_even_time_grid():
    index, fps = even_time_grid([0.0, 0.125, 0.25, 0.375], last_duration=0.125)
    assert index.tolist() == [0, 1, 2, 3] and fps == pytest.approx(8.0)
    _, fps = even_time_grid([0.0, 0.033, 0.067, 0.1], last_duration=0.033, nominal_fps=30.0)  # ms timestamps
    assert fps == 30.0
    index, fps = even_time_grid([0.0, 0.1, 0.4, 0.5], last_duration=0.1)  # frame 1 held for 3 steps
    assert index.tolist() == [0, 1, 1, 1, 2, 3] and fps == pytest.approx(10.0)


def test_write_accepts_pipeline_float_output(tmp_path):
    clip = moving_square()
    batch = (clip / 255.0).astype(np.float32)[None]  # what pipe(..., output_type="np").frames looks like
    frames, _ = read_video(write_video(tmp_path / "float.gif", batch))
    np.testing.assert_array_equal(frames, clip)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        write_video(tmp_path / "bad.gif", batch[0] * 2 - 1)
    with pytest.raises(ValueError, match=r"frames\[0\]"):
        write_video(tmp_path / "bad.gif", np.concatenate([batch, batch]))
    with pytest.raises(ValueError, match="NaN or infinite"):  # a half-precision overflow, not a black clip
        write_video(tmp_path / "bad.gif", np.full_like(batch, np.nan))
    with pytest.raises(ValueError, match="at least one frame"):
        write_video(tmp_path / "bad.gif", batch[:, :0])
    assert not (tmp_path / "bad.gif").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_write_accepts_tensors_of_any_float_precision(tmp_path, dtype):
    clip = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    clip[1] = 255  # black then white: exact in every precision
    frames, _ = read_video(write_video(tmp_path / "clip.gif", torch.from_numpy(clip / 255.0).to(dtype)))
    np.testing.assert_array_equal(frames, clip)


def test_write_accepts_pil_frames_of_any_mode(tmp_path):
    clip = moving_square()
    rgba = [Image.fromarray(frame).convert("RGBA") for frame in clip]
    grey = [Image.fromarray(frame).convert("L") for frame in clip]
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "rgba.gif", rgba))[0], clip)
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "grey.gif", grey))[0], clip)  # grey frames


@pytest.mark.parametrize("frames, fps", [(24, 24), (9, 30), (12, 12)])  # delays that add up to whole 1/100 s
def test_a_gifs_rate_is_read_from_its_delays(tmp_path, frames, fps):
    """Not FFmpeg's guess at a rate, which a GIF does not store (24 fps read back as 23.976)."""
    clip = np.repeat(moving_square(), 3, axis=0)[:frames]
    assert read_video(write_video(tmp_path / "clip.gif", clip, fps=fps))[1] == pytest.approx(fps, rel=1e-9)


def test_a_one_frame_gif_reads_at_its_delay(tmp_path):
    _, fps = read_video(write_video(tmp_path / "still.gif", moving_square(1), fps=8))
    assert fps == pytest.approx(8, rel=0.1)  # its delay, 13/100 s, and not FFmpeg's 100 fps


@pytest.mark.parametrize("fps", [60, 0.001, float("nan"), float("inf"), 0])
def test_a_rate_the_file_cannot_hold_is_refused(tmp_path, fps):
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "clip.gif", moving_square(), fps=fps)


@pytest.mark.parametrize("fps", [0.0006, 100_000])
def test_an_mp4_rate_it_would_store_as_another_is_refused(tmp_path, fps):
    with pytest.raises(ValueError, match=rf"An MP4 is written at fps in \[0.01, 10000\]; fps={fps:g} would be stored"):
        write_video(tmp_path / "clip.mp4", moving_square(), fps=fps)
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("fps", [0.01, 10_000])
def test_an_mp4_at_the_ends_of_its_rates_reads_back_at_them(tmp_path, fps):
    assert read_video(write_video(tmp_path / "clip.mp4", moving_square(), fps=fps))[1] == pytest.approx(fps, rel=1e-3)


def test_write_unknown_suffix_lists_supported(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif, \.mp4"):
        write_video(tmp_path / "clip.avi", moving_square())


def test_write_is_atomic(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.gif", moving_square())
    before = path.read_bytes()

    def crash(tmp, frames, *, fps):
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "_write_gif", crash)
    with pytest.raises(KeyboardInterrupt):
        write_video(path, moving_square(num_frames=3))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]  # no temporary file left behind


def test_frame_folder_is_sorted_naturally(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):
        Image.fromarray(np.full((8, 8, 3), 20 * k, dtype=np.uint8)).save(folder / f"frame{k}.png")
    frames, fps = read_video(folder, default_fps=5)
    assert frames.shape == (12, 8, 8, 3) and fps == 5.0
    assert frames[:, 0, 0, 0].tolist() == [20 * k for k in range(12)]  # frame2 before frame10


def test_read_errors_name_the_file_and_a_fix(tmp_path):
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"not a video" * 50)
    with pytest.raises(VideoReadError, match=r"broken\.mp4.*ffmpeg"):
        read_video(corrupt)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(write_video(tmp_path / "good.mp4", moving_square()).read_bytes()[:300])
    with pytest.raises(VideoReadError, match=r"truncated\.mp4"):
        read_video(truncated)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="empty.*holds no"):
        read_video(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.doc").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.mp4.*\.gif"):
        read_video(tmp_path / "notes.doc")


def write_indexed_mp4(path, frames, *, fps=8, format="mp4"):
    """An MP4 with its index (moov) first, as streaming sites serve them, so that a cut-off copy still opens; or, with
    format="matroska", an MKV (which records the duration, but no frame count)."""
    options = {"movflags": "faststart"} if format == "mp4" else {}
    with av.open(str(path), mode="w", format=format, options=options) as container:
        stream = container.add_stream(video._mp4_encoder(), rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_truncated_clip_warns_with_frame_counts(tmp_path):
    clip = np.random.default_rng(0).integers(0, 256, (40, 32, 48, 3), dtype=np.uint8)
    mp4, gif = write_indexed_mp4(tmp_path / "whole.mp4", clip), write_video(tmp_path / "whole.gif", clip)
    mkv = write_indexed_mp4(tmp_path / "whole.mkv", clip, format="matroska")
    cases = [
        (mp4, r"cut\.mp4 decoded to \d+ frames, but its container declares 40"),
        (mkv, r"cut\.mkv decoded to \d+ frames that end at \d\.\d\d s, but its container records a duration of "
              r"5\.00 s"),  # Matroska and WebM keep no frame count
        (gif, r"cut\.gif lacks the byte that ends a GIF"),  # a GIF holds no frame count
    ]
    for whole, message in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a whole clip reads without a warning
            assert len(read_video(whole)[0]) == 40
        cut = tmp_path / f"cut{whole.suffix}"
        cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.9)])
        with pytest.warns(UserWarning, match=message + ".*cut short"):
            assert len(read_video(cut)[0]) < 40


def test_read_image_applies_exif_rotation(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (20, 10, 3)


def test_a_16_bit_grey_image_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 6), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    frame = read_image(tmp_path / "grey16.png")
    assert frame.shape == (4, 6, 3) and frame.dtype == np.uint8 and np.all(frame == 128)  # mid-grey, not white


def test_transparent_pixels_read_as_white(tmp_path):
    cut_out = np.zeros((4, 6, 4), dtype=np.uint8)  # black everywhere, and transparent but in one corner
    cut_out[0, 0] = (255, 0, 0, 255)
    cut_out[0, 1] = (0, 0, 255, 128)  # half see-through blue over white
    Image.fromarray(cut_out).save(tmp_path / "subject.png")
    frame = read_image(tmp_path / "subject.png")
    assert frame.shape == (4, 6, 3) and np.all(frame[1:] == 255)
    assert tuple(frame[0, 0]) == (255, 0, 0) and tuple(frame[0, 1]) == (127, 127, 255)


def test_save_grid_still_and_animation(tmp_path):
    base, custom = moving_square(), moving_square(num_frames=5)
    save_grid(tmp_path / "grid.png", [base, custom], labels=["base", "customized"], num_columns=4)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * (14 + 32), 4 * 48, 3)  # a label band + one row per clip; 4 frames as columns
    np.testing.assert_array_equal(grid[14 : 14 + 32, :48], base[0])
    frames, _ = read_video(save_grid(tmp_path / "grid.gif", [base, custom]))
    assert frames.shape == (8, 32, 96, 3)  # clips side by side, the longer one's length
    np.testing.assert_array_equal(frames[-1, :, 48:], custom[-1])  # the short clip holds its last frame
    with pytest.raises(ValueError, match="one label per clip"):
        save_grid(tmp_path / "grid.png", [base, custom], labels=["base"])
