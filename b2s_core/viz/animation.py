"""Animated GIFs of a scene (Pillow), one picture per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from b2s_core.output_paths import atomic_path
from b2s_core.viz.voxels import VisualizeError


def write_gif(frames: list[np.ndarray], path: Path, *, fps: float = 2.0) -> Path:
    """(H, W, 3) uint8 pictures -> an endlessly looping GIF at ``fps`` (2 Hz = nuScenes key-frame rate).

    Frames of other sizes are padded to the first frame's size. Written to a temporary file and
    renamed, so an interrupted run never leaves a truncated GIF.
    """
    if not frames:
        raise VisualizeError(f"{path}: no frames to animate")
    height, width = frames[0].shape[:2]
    images = []
    for frame in frames:
        if frame.shape[:2] != (height, width):
            padded = np.zeros((height, width, 3), dtype=np.uint8)
            h, w = min(height, frame.shape[0]), min(width, frame.shape[1])
            padded[:h, :w] = frame[:h, :w]
            frame = padded
        # One adaptive palette per frame: class colours are few, so 256 entries keep them exact.
        images.append(Image.fromarray(frame).convert("P", palette=Image.ADAPTIVE, colors=256))
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
    return path
