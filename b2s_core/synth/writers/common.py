"""Helpers shared by the format writers: atomic file writes and image encoding."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from b2s_core.output_paths import atomic_path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (no half-written files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_bytes(path, json.dumps(data).encode())  # no indent: the fast C encoder


def jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    """(H, W, 3) uint8 -> JPEG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def npz_bytes(**arrays) -> bytes:
    """The bytes of an ``.npz`` archive (deflate level 1: mostly-empty grids compress well and fast);
    ``np.load`` reads it like any ``np.savez_compressed`` file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            zf.writestr(name + ".npy", member.getvalue())
    return buf.getvalue()


class KeyFrameFileWriter:
    """A writer of one label file per key frame (Occ3D, OpenOccupancy): only ``add_key_frame``
    does work; the other hooks of the writer protocol are no-ops here."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def begin_scene(self, spec) -> None:
        self.spec = spec

    def add_sweep(self, sweep) -> None:
        pass

    def end_scene(self, world) -> None:
        pass

    def finish(self) -> dict:
        return {"root": str(self.root)}
