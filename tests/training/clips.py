"""Small training clips the tests write themselves: a square moving right, at the tiny pipeline's size."""

import json

import numpy as np

from motion_adapter.video import write_video


def moving_square(frames: int = 6, size: int = 16, offset: int = 0) -> np.ndarray:
    clip = np.zeros((frames, size, size, 3), np.uint8)
    for f in range(frames):
        clip[f, 4 + offset : 10 + offset, f : f + 6] = (255, 200, 0)
    return clip


def write_clips(folder, count: int = 3, *, frames: int = 6, suffix: str = ".gif", caption: str | None = None):
    """`count` clips; with `caption`, a metadata.jsonl giving each clip that caption."""
    for i in range(count):
        write_video(folder / f"clip{i}{suffix}", moving_square(frames, offset=i))
    if caption is not None:
        lines = [json.dumps({"file_name": f"clip{i}{suffix}", "text": caption}) for i in range(count)]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_images(folder, count: int = 3, size: int = 16):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.zeros((size, size, 3), np.uint8)
        image[3 + i : 12, 3:12] = (0, 80 * i, 255)
        Image.fromarray(image).save(folder / f"photo{i}.png")
    return folder
