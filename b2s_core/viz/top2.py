"""Pictures of Top-2 pseudo-labels (``b2s autolabel --top2``): the second choice and how sure the first is.

A Top-2 frame holds, for the M voxels of its support (``top2_support``, else the occupied voxels; C
order), the two best labels and their logits, best first (:mod:`b2s_core.apps.autolabel`). Three BEV
panels show them, x (forward) up and y (left) left like every BEV (:mod:`b2s_core.viz.bev`), and all
three describe the same voxel per column, the one the first-choice panel shows, so that a pixel
reads across the panels as "this voxel: car first, truck second, sure / unsure":

* first choice: the scene the support voxels' first labels make (the file's ``semantics``), by the
  BEV rules: each column's top-most non-free voxel in its class colour, shaded by height;
* second choice: that voxel's second label, coloured and shaded the same way; where the second
  choice is free the column is not drawn, as free never is;
* margin: that voxel's ``logit_1 - logit_2`` (>= 0) on a ramp from bright yellow (0: a coin toss
  between the two) through red to dark blue (``MARGIN_FULL`` and more: sure); brightness falls as
  the margin grows, so the unsure places stand out. The legend names margins by the first choice's
  share of the two (softmax of the two logits, as training turns them into soft targets:
  :func:`b2s_core.data.targets.dense_top2`).

Support voxels whose first choice is free (the paper form keeps free among the candidates) appear in
none of the panels; columns without a drawn voxel keep the background. With a visibility mask only
the visible voxels count, as for every other panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from b2s_core.grids import VoxelGrid
from b2s_core.records import OccFrame
from b2s_core.taxonomy import Taxonomy
from b2s_core.viz.bev import bev_image, columns_image, top_voxels
from b2s_core.viz.compose import legend, side_by_side, stacked, titled
from b2s_core.viz.voxels import BACKGROUND, VisualizeError, VoxelLayer

MARGIN_FULL = math.log(99.0)  # margin where the ramp ends: the first choice holds 99 % of the two
# Ramp stops (position along [0, MARGIN_FULL], RGB): luminance falls monotonically (220 -> 118 -> 63),
# and the sure end still stands apart from BACKGROUND.
MARGIN_RAMP = ((0.0, (255, 230, 80)), (0.5, (220, 80, 50)), (1.0, (45, 60, 125)))
LEGEND_SHARES = (0.5, 0.75, 0.9, 0.99)  # first choice's share of the two, named in the margin legend


@dataclass(frozen=True)
class Top2Layers:
    """One frame's Top-2 pseudo-labels on its grid, masked as asked, one voxel per column for the second choice."""

    first: VoxelLayer  # (X, Y, Z) first label on the support, free elsewhere
    second: VoxelLayer  # (X, Y, Z) second label of each column's top first-choice voxel, free elsewhere
    margin: np.ndarray  # (X, Y) float32 logit_1 - logit_2 of that voxel, NaN where the column has none


def top2_layers(frame: OccFrame, taxonomy: Taxonomy, grid: VoxelGrid, visible: np.ndarray | None = None,
                where: str = "") -> Top2Layers | None:
    """The Top-2 layers of ``frame`` (None when it has no Top-2 arrays). ``visible`` (X, Y, Z) bool:
    only these voxels are drawn. ``where`` names the file and frame in errors."""
    if frame.top2_labels is None or frame.top2_logits is None:
        return None
    support = frame.occupancy if frame.top2_support is None else frame.top2_support  # (X, Y, Z) bool
    flat = np.flatnonzero(support)  # (M,) C order, the rows of the Top-2 arrays
    labels = np.asarray(frame.top2_labels)  # (M, 2) uint8, best first
    logits = np.asarray(frame.top2_logits, dtype=np.float32)  # (M, 2)
    if labels.shape != (len(flat), 2) or logits.shape != (len(flat), 2):
        raise VisualizeError(f"{where}: Top-2 arrays of shape {labels.shape} / {logits.shape} do not fit the "
                             f"{len(flat)} voxels of the frame's Top-2 support")
    X, Y, Z = support.shape
    chosen = np.full((2, support.size), taxonomy.free_index, dtype=np.uint8)  # (2, X*Y*Z)
    chosen[:, flat] = labels.T
    margin = np.full(support.size, np.nan, dtype=np.float32)  # (X*Y*Z,)
    margin[flat] = logits[:, 0] - logits[:, 1]
    first = VoxelLayer.from_semantics(chosen[0].reshape(X, Y, Z), taxonomy, grid, "first choice", visible)
    # The voxel each column shows in the first-choice BEV; the other two panels describe the same one.
    drawn, top = top_voxels(first.occupied)  # (X, Y) bool, (X, Y) int64
    shown = np.zeros((X, Y, Z), dtype=bool)
    np.put_along_axis(shown, top[:, :, None], drawn[:, :, None], axis=2)
    second = np.where(shown, chosen[1].reshape(X, Y, Z), np.uint8(taxonomy.free_index))
    column_margin = np.take_along_axis(margin.reshape(X, Y, Z), top[:, :, None], axis=2)[:, :, 0]  # (X, Y)
    return Top2Layers(first, VoxelLayer(second, taxonomy, grid, "second choice"),
                      np.where(drawn, column_margin, np.float32(np.nan)))


def margin_colors(margin: np.ndarray) -> np.ndarray:
    """(...) margins (logit units, >= 0) -> (..., 3) uint8 colours of ``MARGIN_RAMP``."""
    t = np.clip(np.asarray(margin, dtype=np.float64) / MARGIN_FULL, 0.0, 1.0)
    stops = np.array([stop for stop, _ in MARGIN_RAMP])
    rgb = np.array([color for _, color in MARGIN_RAMP], dtype=np.float64)  # (S, 3)
    channels = [np.interp(t, stops, rgb[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def margin_bev(layers: Top2Layers, *, scale: int = 2, background: tuple[int, int, int] = BACKGROUND,
               draw_ego: bool = True) -> np.ndarray:
    """(X, Y) column margins -> (X * scale, Y * scale, 3) uint8 in the ramp's colours."""
    margin = layers.margin
    drawn = ~np.isnan(margin)  # (X, Y)
    return columns_image(margin_colors(np.where(drawn, margin, 0.0)), drawn, layers.first, scale=scale,
                         background=background, draw_ego=draw_ego)


def margin_of_share(share: float) -> float:
    """The logit margin at which softmax over the two logits gives the first choice ``share`` (0.5..1)."""
    return math.log(share / (1.0 - share))


def margin_legend(width: int) -> np.ndarray:
    """(h, width, 3) uint8: swatches of the ramp at ``LEGEND_SHARES`` under one line saying how to read it."""
    margins = [margin_of_share(s) for s in LEGEND_SHARES]
    names = tuple(f"{m:.1f}{'+' if s == LEGEND_SHARES[-1] else ''} ({100 * s:.0f}:{100 - 100 * s:.0f})"
                  for m, s in zip(margins, LEGEND_SHARES))
    colors = tuple(tuple(int(v) for v in c) for c in margin_colors(np.array(margins)))
    # The ramp as a taxonomy of its samples: compose's legend draws swatches and names the same way
    # for classes and for these.
    ramp = Taxonomy(name="top2 margin", class_names=names + ("none",), free_index=len(names),
                    eval_classes=tuple(range(len(names))), colors=colors + (BACKGROUND,))
    strip = legend(ramp, list(range(len(names))), width)
    return titled(strip, "logit margin = logit 1 - logit 2 (first : second share of the two); bright = unsure")


def top2_picture(layers: Top2Layers, *, scale: int = 2, caption: str = "") -> np.ndarray:
    """first choice | second choice | margin side by side, the class legend and the margin legend -> (H, W, 3) uint8."""
    panels = [bev_image(layers.first, scale=scale), bev_image(layers.second, scale=scale), margin_bev(layers, scale=scale)]
    titles = [layers.first.title, f"{layers.second.title} (free: not drawn)", "logit margin"]
    row = side_by_side([titled(image, title) for image, title in zip(panels, titles)])
    parts = [titled(row, caption)] if caption else [row]
    present = sorted(set(layers.first.present_labels()) | set(layers.second.present_labels()))
    if present:
        parts.append(legend(layers.first.taxonomy, present, row.shape[1]))
    parts.append(margin_legend(row.shape[1]))
    return stacked(parts)
