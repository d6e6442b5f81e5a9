"""Pictures put together: titled panels side by side (GT | prediction | binary decoder) and a legend."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from b2s_core.taxonomy import Taxonomy
from b2s_core.viz.voxels import BACKGROUND, VoxelLayer

TITLE_HEIGHT = 22
GAP = 6
TEXT_COLOR = (235, 235, 235)
LABEL_BOX = (16, 16, 20)  # behind labels drawn on photos: light text on it reads on any image
LABEL_PAD = 3
# Pillow's built-in font (10 px Aileron since Pillow 10.1) has a 2 px space that hinting narrows
# further, so words ran together ("BEVof the realOcc3Dsample"); DejaVu Sans at 12 px has a 4 px space.
FONT_SIZE = 12


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib, a dependency) at FONT_SIZE; Pillow's own font without it."""
    spec = importlib.util.find_spec("matplotlib")  # located, not imported: importing matplotlib is slow
    if spec is not None and spec.origin:
        try:
            return ImageFont.truetype(str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"), FONT_SIZE)
        except OSError:
            pass
    try:
        return ImageFont.load_default(FONT_SIZE)  # Pillow >= 10.1: scalable, with wider spaces at 12 px
    except TypeError:  # older Pillow: its fixed bitmap font, which spaces words evenly
        return ImageFont.load_default()


def titled(image: np.ndarray, title: str, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """(H, W, 3) uint8 -> (H + TITLE_HEIGHT, W, 3) with ``title`` written above."""
    height, width = image.shape[:2]
    canvas = Image.new("RGB", (width, height + TITLE_HEIGHT), background)
    canvas.paste(Image.fromarray(image), (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((6, 3), title, fill=TEXT_COLOR, font=_font())
    return np.asarray(canvas)


def label_box(text: str) -> tuple[int, int]:
    """(width, height) in pixels of the box :func:`labelled` draws for ``text``."""
    left, top, right, bottom = _font().getbbox(text)
    return right + 2 * LABEL_PAD, bottom + 2 * LABEL_PAD


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """(H, W, 3) uint8 -> a copy with ``text`` in ``TEXT_COLOR`` on a ``LABEL_BOX`` box in the top-left
    corner; ``image`` itself when the box would not fit in it."""
    box_w, box_h = label_box(text)
    if box_w > image.shape[1] or box_h > image.shape[0]:
        return image
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, box_w - 1, box_h - 1], fill=LABEL_BOX)
    draw.text((LABEL_PAD, LABEL_PAD), text, fill=TEXT_COLOR, font=_font())
    return np.asarray(canvas)


def side_by_side(panels: list[np.ndarray], background: tuple[int, int, int] = BACKGROUND, gap: int = GAP) -> np.ndarray:
    """(H_i, W_i, 3) uint8 panels -> one row, top-aligned, ``gap`` pixels apart."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    left = 0
    for panel in panels:
        out[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return out


def stacked(rows: list[np.ndarray], background: tuple[int, int, int] = BACKGROUND, gap: int = GAP) -> np.ndarray:
    """(H_i, W_i, 3) uint8 images -> one column, left-aligned."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    top = 0
    for row in rows:
        out[top : top + row.shape[0], : row.shape[1]] = row
        top += row.shape[0] + gap
    return out


def legend(taxonomy: Taxonomy, labels: list[int], width: int, background: tuple[int, int, int] = BACKGROUND,
           colors: np.ndarray | None = None) -> np.ndarray:
    """A strip of colour swatches and class names for ``labels``, wrapped to ``width`` pixels -> (h, width, 3).
    ``colors``: (256, 3) uint8 per label, default the taxonomy's."""
    table = taxonomy.color_array() if colors is None else colors
    entry_w, line_h, swatch = 150, 18, 12
    per_line = max(width // entry_w, 1)
    lines = max((len(labels) + per_line - 1) // per_line, 1)
    canvas = Image.new("RGB", (width, lines * line_h + 6), background)
    draw = ImageDraw.Draw(canvas)
    for n, label in enumerate(labels):
        x, y = 6 + (n % per_line) * entry_w, 4 + (n // per_line) * line_h
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(table[label].tolist()))
        draw.text((x + swatch + 5, y), taxonomy.class_names[label] if label < taxonomy.num_labels else str(label),
                  fill=TEXT_COLOR, font=_font())
    return np.asarray(canvas)


def panels_with_legend(images: list[np.ndarray], layers: list[VoxelLayer], caption: str = "") -> np.ndarray:
    """Titled panels (one per layer, titles from the layers) side by side, the legend of every
    taxonomy drawn below, and an optional caption line on top -> (H, W, 3) uint8."""
    row = side_by_side([titled(image, layer.title) for image, layer in zip(images, layers)])
    parts = [titled(row, caption)] if caption else [row]
    seen: dict[str, tuple[Taxonomy, set[int]]] = {}
    for layer in layers:
        taxonomy, labels = seen.setdefault(layer.taxonomy.name, (layer.taxonomy, set()))
        labels.update(layer.present_labels())
    for taxonomy, labels in seen.values():
        if labels:
            parts.append(legend(taxonomy, sorted(labels), row.shape[1]))
    return stacked(parts)
