"""Tests for motion_adapter.training.data: finding clips, captions, resampling, resizing, buckets, windows, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from motion_adapter.training.cache import LatentStore
from motion_adapter.training.data import (
    DataError,
    bucket_sizes,
    load_clip_folder,
    load_image_folder,
    resize_and_crop,
    sample_window,
)
from motion_adapter.video import VideoReadError, write_video


def moving_clip(num_frames=8, height=32, width=32, step=-2):
    """A white square on black moving horizontally by `step` px a frame (left when negative): uint8 (f, h, w, 3)."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    start = width - 12 if step < 0 else 2
    for k in range(num_frames):
        x = start + step * k
        frames[k, height // 2 - 4 : height // 2 + 4, x : x + 8] = 255
    return frames


def make_folder(root, names, *, num_frames=8, fps=8):
    """A folder with one clip per name: .gif / .mp4 files, or a frame folder for a name without suffix."""
    root.mkdir(exist_ok=True)
    for name in names:
        clip = moving_clip(num_frames)
        if "." in name:
            write_video(root / name, clip, fps=fps)
        else:
            (root / name).mkdir()
            for k, frame in enumerate(clip):
                Image.fromarray(frame).save(root / name / f"{k}.png")
    return root


def load(data, **options):
    """load_clip_folder with small defaults."""
    settings = dict(num_frames=4, height=16, width=16, caption_template="a person doing the {token}", token="pll")
    return load_clip_folder(data, **{**settings, **options})


def test_loads_every_kind_of_clip_at_the_training_size(tmp_path):
    folder = make_folder(tmp_path / "clips", ["clip10.gif", "clip2.mp4", "clip3"])
    examples = load(folder)
    assert [e.source.name for e in examples] == ["clip2.mp4", "clip3", "clip10.gif"]  # natural order
    for example in examples:
        assert example.frames.shape == (8, 3, 16, 16) and example.frames.dtype == torch.float32
        assert -1 <= example.frames.min() and example.frames.max() <= 1
        assert example.caption == "a person doing the pll"
        assert example.fps == pytest.approx(8.0)
    assert load([folder / "clip2.mp4", folder / "clip3"])[1].source == folder / "clip3"  # a list of paths


def test_caption_priority_metadata_then_txt_then_template(tmp_path):
    folder = make_folder(tmp_path / "clips", ["a.gif", "b.gif", "c.gif", "d"])
    lines = [{"file_name": "a.gif", "text": "a dog doing the pll"}, {"file_name": "d/", "text": "a cat doing the pll"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (folder / "a.txt").write_text("loses to metadata")
    (folder / "b.txt").write_text("a bear doing the pll\n")
    captions = {e.source.name: e.caption for e in load(folder, caption_template="a person doing the {token}")}
    assert captions == {
        "a.gif": "a dog doing the pll",
        "b.gif": "a bear doing the pll",
        "c.gif": "a person doing the pll",
        "d": "a cat doing the pll",
    }


def test_metadata_is_read_once_for_the_captions_of_many_clips(tmp_path, monkeypatch):
    from motion_adapter.training import data

    folder = make_folder(tmp_path / "clips", [f"{k}.gif" for k in range(5)])
    lines = [{"file_name": f"{k}.gif", "text": f"clip {k} doing the pll"} for k in range(5)]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    reads, read_metadata = [], data.read_metadata
    monkeypatch.setattr(data, "read_metadata", lambda f: reads.append(f) or read_metadata(f))
    assert [e.caption for e in load(folder)] == [line["text"] for line in lines]
    assert reads == [folder, folder]  # listing the folder, then its captions: not once per clip


def test_caption_errors_name_the_file(tmp_path):
    folder = make_folder(tmp_path / "clips", ["a.gif", "b.gif"])
    (folder / "b.txt").write_text("a bear doing the pll")
    with pytest.raises(DataError, match=r"No caption for .*a\.gif.*metadata\.jsonl.*a\.txt"):
        load(folder, caption_template=None)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.gif", "text": "ok"}\n{"file_name": "b.gif"\n')
    with pytest.raises(DataError, match=r"metadata\.jsonl:2 is not valid JSON"):
        load(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.gif", "caption": "x"}\n')
    with pytest.raises(DataError, match=r"metadata\.jsonl:1 needs .* text"):
        load(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.gif", "text": " "}\n')  # as refused as an empty b.txt
    with pytest.raises(DataError, match=r"metadata\.jsonl:1 has an empty text for a\.gif"):
        load(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.gf", "text": "a fox doing the pll"}\n')
    with pytest.warns(UserWarning, match=r"not in the folder: a\.gf"):
        load(folder)


def test_caption_files_must_be_utf8_and_may_start_with_a_bom(tmp_path):
    folder = make_folder(tmp_path / "clips", ["a.gif", "b.gif"])
    lines = '{"file_name": "a.gif", "text": "a dog doing the pll"}\n{"file_name": "b.gif", "text": "caf\u00e9 pll"}\n'
    (folder / "metadata.jsonl").write_bytes(lines.encode("latin-1"))
    with pytest.raises(DataError, match=r"metadata\.jsonl:2 is not UTF-8 .*save the file as UTF-8"):
        load(folder)
    (folder / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode("utf-8"))  # a BOM, as Notepad writes
    assert [e.caption for e in load(folder)] == ["a dog doing the pll", "caf\u00e9 pll"]
    (folder / "metadata.jsonl").unlink()
    (folder / "a.txt").write_bytes("caf\u00e9 pll".encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.txt:1 is not UTF-8"):
        load(folder)


def test_metadata_may_name_clips_in_subfolders(tmp_path):
    """The `datasets` layout: metadata.jsonl at the top names "train/clip.gif"; train/ is no frame folder."""
    folder = make_folder(tmp_path / "clips", ["top.gif", "frames"])
    make_folder(folder / "train", ["b.gif", "a10.gif", "a2"])
    lines = [{"file_name": f"train/{name}", "text": f"{name} doing the pll"} for name in ("b.gif", "a10.gif", "a2")]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    examples = load(folder)
    assert [e.source.relative_to(folder).as_posix() for e in examples] == [
        "frames", "top.gif", "train/a2", "train/a10.gif", "train/b.gif"
    ]  # fmt: skip
    assert [e.caption for e in examples][2:] == ["a2 doing the pll", "a10.gif doing the pll", "b.gif doing the pll"]
    assert examples[0].caption == "a person doing the pll"  # the template still fills in


def test_subfolder_of_clips_without_metadata_says_how_to_lay_it_out(tmp_path):
    folder = make_folder(tmp_path / "clips", ["top.gif"])
    make_folder(folder / "train", ["a.gif"])
    with pytest.raises(VideoReadError, match=r'train holds no .*move the clips up.*"file_name": "train/a\.gif"'):
        load(folder)


def test_loading_and_encoding_show_progress_on_the_main_process_only(tmp_path, capsys, monkeypatch, pipe):
    folder = make_folder(tmp_path / "clips", ["a.gif", "b.gif"])
    examples = load(folder)
    LatentStore(pipe.vae, examples)
    err = capsys.readouterr().err
    assert "loading clips: 100%" in err and "2/2" in err and "encoding latents: 100%" in err
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)  # another process of a multi-GPU run
    LatentStore(pipe.vae, load(folder))
    assert capsys.readouterr().err == ""


def test_token_must_appear_in_some_caption(tmp_path):
    folder = make_folder(tmp_path / "clips", ["a.gif", "b.gif"])
    (folder / "a.txt").write_text("a man waving")
    with pytest.raises(DataError, match=r"clips.*'pll'.*'a man waving'"):
        load(folder, caption_template="a person dancing")
    with pytest.warns(UserWarning, match="1 of 2 captions"):
        examples = load(folder)  # b.gif gets the template, which holds the token
    assert examples[1].caption == "a person doing the pll"
    (folder / "a.txt").write_text("spll and pllx are not the token")
    with pytest.raises(DataError, match="'pll'"):
        load(folder, caption_template="a person dancing")
    assert load(folder, token=None, caption_template="a person dancing")[1].caption == "a person dancing"


def test_stride_and_fps_resampling_counts(tmp_path):
    folder = make_folder(tmp_path / "clips", ["clip.gif"], num_frames=24, fps=8)
    assert len(load(folder)[0].frames) == 24
    example = load(folder, frame_stride=3)[0]
    assert len(example.frames) == 8 and example.fps == pytest.approx(8 / 3)
    assert len(load(folder, fps=4)[0].frames) == 12
    assert len(load(folder, fps=2)[0].frames) == 6
    with pytest.warns(UserWarning, match="frames repeat"):
        assert len(load(folder, fps=16)[0].frames) == 48
    with pytest.raises(ValueError, match="not both"):
        load(folder, fps=4, frame_stride=2)


def test_stride_keeps_the_right_frames(tmp_path):
    folder = make_folder(tmp_path / "clips", ["clip"], num_frames=8)
    every, strided = load(folder)[0].frames, load(folder, frame_stride=2)[0].frames
    torch.testing.assert_close(strided, every[::2])


def test_no_flip_a_leftward_clip_stays_leftward(tmp_path):
    folder = make_folder(tmp_path / "clips", ["left.mp4"])
    frames = load(folder, height=32, width=32)[0].frames  # (f, 3, h, w)
    brightness = (frames.mean(dim=1) + 1) / 2  # (f, h, w) in [0, 1]
    columns = torch.arange(32, dtype=torch.float32)
    centroid = (brightness.sum(dim=1) * columns).sum(dim=1) / brightness.sum(dim=(1, 2))
    assert (centroid.diff() < 0).all()


def test_resize_short_side_then_center_crop():
    wide = np.zeros((1, 20, 60, 3), dtype=np.uint8)
    wide[:, :, 20:40] = 200  # only the middle third is bright
    out = resize_and_crop(wide, 10, 10)
    assert out.shape == (1, 3, 10, 10)
    torch.testing.assert_close(out[:, :, :, 1:-1], torch.full((1, 3, 10, 8), 200 / 127.5 - 1), atol=0.02, rtol=0)
    stripes = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    stripes[:, :, ::2] = 255  # a 1 px pattern: antialiasing averages it to grey instead of aliasing
    assert resize_and_crop(stripes, 16, 16).std() < 0.05


def test_bad_clip_raises_or_is_skipped_with_a_count(tmp_path):
    folder = make_folder(tmp_path / "clips", ["good.gif", "also_good.gif"])
    (folder / "broken.mp4").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(VideoReadError, match=r"broken\.mp4.*ffmpeg.*skip_bad_clips"):
        load(folder)
    with pytest.warns(UserWarning, match=r"Skipped 1 of 3 clips: broken\.mp4"):
        examples = load(folder, skip_bad_clips=True)
    assert sorted(e.source.name for e in examples) == ["also_good.gif", "good.gif"]


def test_skipping_every_clip_that_holds_the_token_is_refused(tmp_path):
    folder = make_folder(tmp_path / "clips", ["good.gif"])
    (folder / "broken.mp4").write_bytes(b"\x00garbage" * 64)
    lines = [{"file_name": "good.gif", "text": "a dog walking"},
             {"file_name": "broken.mp4", "text": "a dog doing the pll"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"Every clip .* holds the token 'pll' was skipped"):
        load(folder, skip_bad_clips=True)


def test_short_clip_raises_or_is_skipped(tmp_path):
    folder = make_folder(tmp_path / "clips", ["long.gif"], num_frames=8)
    write_video(folder / "short.gif", moving_clip(3))
    with pytest.raises(DataError, match=r"short\.gif has 3 frames.*num_frames=4"):
        load(folder)
    with pytest.warns(UserWarning, match="Skipped 1 of 2"):
        assert len(load(folder, skip_bad_clips=True)) == 1
    with pytest.raises(DataError, match=r"frame_stride=3.*num_frames=4"):
        load(folder, frame_stride=3, skip_bad_clips=False)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="All 2 clips"):
        load(folder, num_frames=9, skip_bad_clips=True)


def test_missing_empty_and_wrong_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"No clips found in .*empty"):
        load(tmp_path / "empty")
    frames_only = tmp_path / "frames_only"
    frames_only.mkdir()
    Image.fromarray(moving_clip(1)[0]).save(frames_only / "0001.png")
    with pytest.warns(UserWarning, match="Ignoring 1"), pytest.raises(DataError, match="subfolder"):
        load(frames_only)
    with pytest.raises(DataError, match=r"notes\.doc is not a supported"):
        (tmp_path / "notes.doc").write_text("x")
        load([tmp_path / "notes.doc"])


def test_training_size_must_divide_by_the_vae_factor(tmp_path):
    folder = make_folder(tmp_path / "clips", ["a.gif"])
    with pytest.raises(ValueError, match=r"width=20 must be a positive multiple of 8.*16 or 24"):
        load(folder, width=20)
    assert load(folder, height=20, width=20, multiple_of=4)[0].frames.shape[-2:] == (20, 20)


def test_buckets_follow_the_clip_aspect(tmp_path):
    sizes = bucket_sizes(32, 32, multiple_of=8)
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in sizes)
    assert (32, 32) in sizes and (24, 48) in sizes and (48, 24) in sizes
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "wide.gif", moving_clip(4, height=32, width=64))
    write_video(folder / "tall.gif", moving_clip(4, height=64, width=32))
    write_video(folder / "square.gif", moving_clip(4, height=40, width=40))
    shapes = {e.source.name: tuple(e.frames.shape[-2:]) for e in load(folder, height=32, width=32, bucket=True)}
    assert shapes == {"wide.gif": (24, 48), "tall.gif": (48, 24), "square.gif": (32, 32)}
    assert {tuple(e.frames.shape[-2:]) for e in load(folder, height=32, width=32)} == {(32, 32)}


def test_sample_window_is_reproducible_and_covers_starts():
    windows = [sample_window(10, 4, torch.Generator().manual_seed(0)) for _ in range(2)]
    assert windows[0] == windows[1] and windows[0].stop - windows[0].start == 4
    generator = torch.Generator().manual_seed(1)
    starts = {sample_window(10, 4, generator).start for _ in range(200)}
    assert starts == set(range(7))
    assert sample_window(4, 4, generator) == slice(0, 4)
    with pytest.raises(ValueError, match="5 frames from 4"):
        sample_window(4, 5, generator)


def test_image_folder_gives_one_frame_clips(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((24, 40, 3), 60 * k, dtype=np.uint8)).save(folder / f"dog{k}.jpg")
    (folder / "dog1.txt").write_text("a photo of a sks dog on grass")
    examples = load_image_folder(folder, token="sks", caption_template="a photo of a {token} dog", height=16, width=16)
    assert [e.frames.shape for e in examples] == [(1, 3, 16, 16)] * 3
    captions = [e.caption for e in examples]
    assert captions == ["a photo of a sks dog", "a photo of a sks dog on grass", "a photo of a sks dog"]
    assert examples[0].fps is None
    torch.testing.assert_close(examples[2].frames, torch.full((1, 3, 16, 16), 120 / 127.5 - 1), atol=0.02, rtol=0)
    with pytest.warns(UserWarning, match="not images"), pytest.raises(DataError, match="No images found"):
        load_image_folder(make_folder(tmp_path / "clips", ["a.gif"]), height=16, width=16)
    with pytest.raises(DataError, match=r"e.g. 'a photo of a zz', or pass caption_template='a photo of a \{token\}'"):
        load_image_folder(folder, token="zz", caption_template="a photo of a dog", height=16, width=16)
    with pytest.raises(ValueError, match=r"only use \{token\} \(and a subject's \{class_word\}\), got 'a \{tok\}'"):
        load_image_folder(folder, token="sks", caption_template="a {tok}", height=16, width=16)
