"""``b2s visualize``: every picture of one scene, from a data file and optionally a predictions file.

Steps: (1) open the files and pick the scene's frames (predictions matched by frame token);
(2) per picked frame: BEV panels and 3D panels (GT | prediction | binary decoder) and the six
camera images with the occupancy projected; with ``errors``, BEV and 3D panels of each voxel's case
(prediction | binary decoder against the ground truth); (3) the scene's BEV animation over all its
frames; (4) with ``html``, one interactive page of the whole scene.

Binary grids (a data file without semantics, the binary decoder's output) are coloured by height
(:meth:`VoxelLayer.from_heights`), since one grey would show nothing but a filled ground.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from b2s_core.occfile import OccDataset, OccFormatError
from b2s_core.output_paths import Output, atomic_path, check_apart
from b2s_core.records import OccFrame
from b2s_core.viz.animation import write_gif
from b2s_core.viz.bev import bev_image
from b2s_core.viz.cameras import (
    DEFAULT_DISTANCE_M,
    camera_mosaic,
    camera_overlay,
    check_overlay,
    decode_image,
    overlay_legends,
)
from b2s_core.viz.compose import panels_with_legend, stacked, titled
from b2s_core.viz.html import HtmlFrame, write_html
from b2s_core.viz.render3d import RenderUnavailable, VoxelRenderer, grid_half_length, voxel_mesh
from b2s_core.viz.top2 import top2_layers, top2_picture
from b2s_core.viz.voxels import VisualizeError, VoxelLayer, error_layer

MASKS = ("none", "camera", "lidar")
FRAME_FIELDS = ("occupancy", "semantics", "mask_lidar", "mask_camera", "binary_pred", "cameras")


@dataclass(frozen=True)
class VisualizeOptions:
    frame: int | None = None  # index within the scene; None: pictures of every frame
    html: bool = False  # also write the interactive page
    render_3d: bool = True  # 3D views need an OpenGL context (EGL offscreen works headless)
    cameras: bool = True  # camera images with projected occupancy (needs the images)
    mask: str = "none"  # draw only voxels inside the GT frame's 'camera' or 'lidar' mask (as Occ3D scores)
    bev_scale: int = 2  # pixels per voxel in the BEV (2: 400 x 400 for Occ3D)
    view_size: tuple[int, int] = (480, 360)  # width, height of each 3D panel
    camera_width: int = 400  # width of each camera tile
    # region borders only, so near voxels never hide the photo; 'fill': blended voxel squares
    camera_overlay: str = "outline"
    camera_distance: tuple[float, float] = DEFAULT_DISTANCE_M  # (near, far) metres from the camera of the voxels drawn
    gif_fps: float = 2.0  # nuScenes key frames come at 2 Hz
    # also each voxel's case (correct / wrong class / missed / false positive) vs the GT; needs predictions
    errors: bool = False

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise VisualizeError(f"unknown mask '{self.mask}': use one of {', '.join(MASKS)}")
        if self.bev_scale < 1 or self.camera_width < 16 or min(self.view_size) < 16:
            raise VisualizeError("picture sizes must be positive (bev_scale >= 1, widths >= 16 pixels)")
        check_overlay(self.camera_overlay, self.camera_distance)


@dataclass
class VisualizeResult:
    paths: list[Path] = field(default_factory=list)  # every file written, in order
    warnings: list[str] = field(default_factory=list)  # pictures skipped and why
    seconds: float = 0.0


def safe_name(text: str) -> str:
    """A scene name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "scene"


def picture_folder(out_dir: str | os.PathLike, scene: str) -> Output:
    """``out_dir`` as an output of :func:`visualize_scene`: the files it writes there for ``scene``
    (so pictures of other scenes in the same folder are neither in the way nor replaced)."""
    stem = safe_name(scene)
    return Output(Path(out_dir), members=(f"{stem}_frame*", f"{stem}_bev.gif", f"{stem}.html"),
                  exists_hint="pass --overwrite to replace this scene's pictures")


def save_picture(image: np.ndarray, path: Path) -> Path:
    """Write ``image`` (H, W, 3) uint8 as PNG, or JPEG when ``path`` ends in .jpg (photos: 10x smaller),
    via a temporary file + rename (never a half-written picture)."""
    with atomic_path(path) as tmp:
        if path.suffix == ".jpg":
            Image.fromarray(image).save(tmp, format="JPEG", quality=90)
        else:
            Image.fromarray(image).save(tmp, format="PNG")
    return path


def frame_layers(gt: OccFrame, pred: OccFrame | None, data: OccDataset, preds: OccDataset | None,
                 mask: str) -> list[VoxelLayer]:
    """GT, prediction and binary-decoder layers of one frame (those that exist), masked as asked."""
    visible = None
    if mask != "none":
        visible = gt.mask_camera if mask == "camera" else gt.mask_lidar
        if visible is None:
            raise VisualizeError(f"{data.paths[0]}: frame '{gt.token}' has no mask_{mask}; use --mask none")
    layers = [_layer(gt, data, "ground truth", visible)]
    if pred is not None and preds is not None:
        layers.append(_layer(pred, preds, "prediction", visible))
        if pred.binary_pred is not None:
            layers.append(VoxelLayer.from_heights(pred.binary_pred, preds.grid, "binary decoder", visible))
    return layers


def frame_errors(layers: list[VoxelLayer]) -> list[VoxelLayer]:
    """Error layers of :func:`frame_layers`' [GT, prediction, binary decoder] (already masked, so only
    voxels inside the evaluated mask are scored): each later layer against the GT; [] without a prediction."""
    truth = layers[0]
    errors = []
    for guess, name in zip(layers[1:], ("prediction", "binary decoder")):
        # error_layer compares labels only within one taxonomy; height bands are no classes
        classes = guess.taxonomy.name == truth.taxonomy.name and truth.taxonomy.name != "height"
        errors.append(error_layer(truth, guess, f"{name} vs GT {'classes' if classes else 'occupancy'}"))
    return errors


def _layer(frame: OccFrame, ds: OccDataset, title: str, visible: np.ndarray | None) -> VoxelLayer:
    if frame.semantics is not None:
        return VoxelLayer.from_semantics(frame.semantics, ds.taxonomy, ds.grid, title, visible)
    return VoxelLayer.from_heights(frame.occupancy, ds.grid, f"{title} (binary)", visible)


@dataclass(frozen=True)
class _SceneFiles:
    """Step (1): the opened files and the scene's frames in them."""

    data: OccDataset
    preds: OccDataset | None
    pred_path: str | os.PathLike | None  # named in the warning of a frame without a prediction
    frames: range  # global indices of the scene's frames in the data file, in time order
    pred_by_token: dict[str, int]  # frame token -> global index in the predictions file
    picked: set[int]  # indices within the scene of the frames whose pictures are written


@dataclass(frozen=True)
class _DrawnFrame:
    """One frame's layers and caption, shared by all its pictures."""

    n: int  # index within the scene
    index: int  # global index in the data file
    gt: OccFrame
    pred: OccFrame | None
    layers: list[VoxelLayer]  # [GT, prediction, binary decoder], those that exist (frame_layers)
    errors: list[VoxelLayer]  # frame_errors of the layers; [] without options.errors
    caption: str


def visualize_scene(
    data_path: str | os.PathLike,
    scene: str,
    out_dir: str | os.PathLike,
    *,
    pred_path: str | os.PathLike | None = None,
    options: VisualizeOptions = VisualizeOptions(),
    on_frame: Callable[[int, int], None] | None = None,
) -> VisualizeResult:
    """Write the scene's pictures under ``out_dir``; ``on_frame(done, total)`` reports progress."""
    start = time.perf_counter()
    result = VisualizeResult()
    out = Path(out_dir)
    # Never a picture over the files drawn (the CLI also checks existing pictures and holds the lock).
    check_apart([picture_folder(out, scene)], {"data": data_path, "pred": pred_path})
    if options.errors and pred_path is None:
        raise VisualizeError("--errors compares a prediction with the ground truth: "
                             "pass a predictions file (--predictions)")
    files = _open_scene(data_path, scene, pred_path, options.frame)  # (1)
    stem = safe_name(scene)
    out.mkdir(parents=True, exist_ok=True)

    renderer = _open_renderer(options, result)
    gif_frames, html_frames = [], []
    try:
        for n, index in enumerate(files.frames):
            frame = _draw_frame(files, scene, n, index, options, result)
            bev_panels = panels_with_legend([bev_image(layer, scale=options.bev_scale) for layer in frame.layers],
                                            frame.layers, frame.caption)
            gif_frames.append(bev_panels)
            if options.html:
                html_frames.append(HtmlFrame(f"frame {n} ({n + 1} of {len(files.frames)})", frame.layers + frame.errors,
                                             token=frame.gt.token))
            if n in files.picked:  # (2)
                result.paths += _frame_pictures(frame, bev_panels, files, out / f"{stem}_frame{n:03d}", options,
                                                renderer, result)
            if on_frame is not None:
                on_frame(n + 1, len(files.frames))
    finally:
        if renderer is not None:
            renderer.close()

    # (3) animation, (4) page
    result.paths.append(write_gif(gif_frames, out / f"{stem}_bev.gif", fps=options.gif_fps))
    if options.html:
        result.paths.append(write_html(html_frames, out / f"{stem}.html", title=f"b2s: {scene}"))
    result.seconds = time.perf_counter() - start
    return result


def _open_scene(data_path: str | os.PathLike, scene: str, pred_path: str | os.PathLike | None,
                frame: int | None) -> _SceneFiles:
    """Step (1): open the files, check they fit together, match predictions to frames by token."""
    data = OccDataset(data_path)
    preds = OccDataset(pred_path) if pred_path is not None else None
    if preds is not None and not preds.grid.same_geometry(data.grid):
        raise VisualizeError(f"{pred_path}: prediction grid {preds.grid.describe()} differs from the data's "
                             f"{data.grid.describe()}")
    scene_range = data.scene_indices(scene)
    if len(scene_range) == 0:
        raise VisualizeError(f"{data_path}: scene '{scene}' has no frames")
    pred_by_token: dict[str, int] = {}
    if preds is not None:
        pred_by_token = {preds.read(i, fields=()).token: i for i in preds.scene_indices(scene)}
    if frame is not None and not 0 <= frame < len(scene_range):
        raise VisualizeError(f"{data_path}: scene '{scene}' has frames 0..{len(scene_range) - 1}, not {frame}")
    picked = set(range(len(scene_range))) if frame is None else {frame}
    return _SceneFiles(data, preds, pred_path, scene_range, pred_by_token, picked)


def _open_renderer(options: VisualizeOptions, result: VisualizeResult) -> VoxelRenderer | None:
    """The 3D renderer, or None (with a warning) when 3D views are off or no OpenGL context exists."""
    if not options.render_3d:
        return None
    try:
        return VoxelRenderer(*options.view_size)
    except RenderUnavailable as err:
        result.warnings.append(f"3D views skipped: {err}")
        return None


def _draw_frame(files: _SceneFiles, scene: str, n: int, index: int, options: VisualizeOptions,
                result: VisualizeResult) -> _DrawnFrame:
    """Read frame ``n`` of the scene (and its prediction) and build its layers; a picked frame also
    reads what only its pictures need (cameras, Top-2)."""
    picked = n in files.picked
    gt = files.data.read(index, fields=FRAME_FIELDS + ("top2",) if picked else FRAME_FIELDS[:-1])
    pred = None
    if files.preds is not None:
        pred_index = files.pred_by_token.get(gt.token)
        if pred_index is None:
            result.warnings.append(f"frame {n} ({gt.token}): no prediction with this token in {files.pred_path}")
        else:
            fields = ("occupancy", "semantics", "binary_pred") + (("top2",) if picked else ())
            pred = files.preds.read(pred_index, fields=fields)
    layers = frame_layers(gt, pred, files.data, files.preds, options.mask)
    errors = frame_errors(layers) if options.errors else []
    caption = f"{scene}  frame {n} ({n + 1} of {len(files.frames)})  {gt.token}"
    return _DrawnFrame(n, index, gt, pred, layers, errors, caption)


def _frame_pictures(frame: _DrawnFrame, bev_panels: np.ndarray, files: _SceneFiles, prefix: Path,
                    options: VisualizeOptions, renderer: VoxelRenderer | None, result: VisualizeResult) -> list[Path]:
    """Step (2): write one picked frame's pictures (BEV, Top-2, errors, 3D, cameras) as ``{prefix}_*``;
    the paths written, in order."""
    where = "all voxels" if options.mask == "none" else f"inside mask_{options.mask}"
    error_caption = f"{frame.caption}  errors, {where}; BEV: the case of each column's top-most voxel"
    paths = [save_picture(bev_panels, Path(f"{prefix}_bev.png"))]
    top2 = _top2_picture(frame.gt, frame.pred, files.data, files.preds, options, frame.caption)
    if top2 is not None:
        paths.append(save_picture(top2, Path(f"{prefix}_top2.png")))
    if frame.errors:
        error_bev = [bev_image(layer, scale=options.bev_scale) for layer in frame.errors]
        paths.append(save_picture(panels_with_legend(error_bev, frame.errors, error_caption),
                                  Path(f"{prefix}_errors_bev.png")))
    if renderer is not None:
        paths.append(save_picture(_views_3d(renderer, frame.layers, frame.caption), Path(f"{prefix}_3d.png")))
        if frame.errors:
            paths.append(save_picture(_views_3d(renderer, frame.errors, error_caption),
                                      Path(f"{prefix}_errors_3d.png")))
    if options.cameras:
        mosaic = _camera_picture(files.data, frame.index, frame.gt, frame.layers, options, result)
        if mosaic is not None:
            paths.append(save_picture(mosaic, Path(f"{prefix}_cameras.jpg")))
    return paths


def _views_3d(renderer: VoxelRenderer, layers: list[VoxelLayer], caption: str) -> np.ndarray:
    """One 3D view per layer, side by side with their legends."""
    views = [renderer.render(voxel_mesh(layer), grid_half_length(layer)) for layer in layers]
    return panels_with_legend(views, layers, caption)


def _camera_picture(data: OccDataset, index: int, gt: OccFrame, layers: list[VoxelLayer],
                    options: VisualizeOptions, result: VisualizeResult) -> np.ndarray | None:
    """Camera mosaics, one per semantic layer (GT, prediction), stacked; None when there are no images."""
    if not gt.cameras:
        result.warnings.append(f"frame '{gt.token}': no cameras in {data.paths[0]}; camera pictures skipped")
        return None
    try:
        photos = {cam.name: decode_image(data.image(index, cam.name), f"{data.paths[0]} {cam.name}")
                  for cam in gt.cameras}
    except (OccFormatError, VisualizeError) as err:
        result.warnings.append(f"camera pictures skipped: {err}")
        return None
    blocks = []
    for layer in layers[:2]:  # the binary decoder (no classes) would hide the photo without telling much
        tiles = {cam.name: camera_overlay(photos[cam.name], cam, layer, width=options.camera_width,
                                          mode=options.camera_overlay, distance=options.camera_distance)
                 for cam in gt.cameras}
        blocks.append(titled(camera_mosaic(tiles), layer.title))
    # camera colours differ from the BEV's for a few classes, hence legends of their own
    return stacked(blocks + overlay_legends(layers[:2], blocks[0].shape[1]))


def _top2_picture(gt: OccFrame, pred: OccFrame | None, data: OccDataset, preds: OccDataset | None,
                  options: VisualizeOptions, caption: str) -> np.ndarray | None:
    """First choice | second choice | margin of Top-2 pseudo-labels (the predictions file's, else the
    data file's), masked as the other panels; None when neither frame has Top-2 arrays."""
    frame, ds = (pred, preds) if pred is not None and preds is not None and pred.top2_labels is not None else (gt, data)
    visible = None if options.mask == "none" else (gt.mask_camera if options.mask == "camera" else gt.mask_lidar)
    layers = top2_layers(frame, ds.taxonomy, ds.grid, visible, where=f"{ds.paths[0]}: frame '{frame.token}'")
    if layers is None:
        return None
    return top2_picture(layers, scale=options.bev_scale,
                        caption=f"{caption}  Top-2 pseudo-labels of {Path(ds.paths[0]).name}")
