"""``b2s visualize``: pictures of one scene (BEV, 3D, cameras, animation, interactive page)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from b2s_cli.errors import cli_errors
from b2s_cli.options import Mask, OptionValueError, check_number, choices, refuse_together
from b2s_core.output_paths import claim_outputs
from b2s_core.viz.cameras import OVERLAY_MODES
from b2s_core.viz.scene import VisualizeOptions, picture_folder, visualize_scene

_console = Console(highlight=False, soft_wrap=True)  # soft wrap: paths stay whole, one per line
_DEFAULTS = VisualizeOptions()
CameraOverlay = choices("CameraOverlay", OVERLAY_MODES)


@cli_errors
def visualize(
    scene: str = typer.Argument(..., help="Scene name, as `b2s info` lists it."),
    data: Path = typer.Option(..., "--data", help="Data file (unified HDF5) with the ground truth (or binary occupancy) and cameras."),
    predictions: Optional[Path] = typer.Option(None, "--predictions",
                                               help="Predictions file (unified HDF5: semantics = prediction, "
                                                    "binary_pred = binary decoder); frames matched by token."),
    # --pred: this option's name before it was spelled as in `b2s evaluate`; kept for old scripts, not listed.
    pred: Optional[Path] = typer.Option(None, "--pred", hidden=True),
    frame: Optional[int] = typer.Option(None, "--frame",
                                        help="Only this frame of the scene (0-based) gets pictures; default: "
                                             "every frame."),
    out: Path = typer.Option(..., "--out", help="Folder for the pictures (created if missing; pictures of other scenes stay)."),
    html: bool = typer.Option(False, "--html", help="Also write one self-contained interactive HTML page of the scene."),
    no_3d: bool = typer.Option(False, "--no-3d", help="Skip the 3D views (they need an OpenGL context; EGL works headless)."),
    no_cameras: bool = typer.Option(False, "--no-cameras", help="Skip the camera images with projected occupancy."),
    mask: Mask = typer.Option("none", "--mask", help="Draw only voxels inside the GT's 'camera' or 'lidar' mask, or all ('none')."),
    errors: bool = typer.Option(False, "--errors",
                                help="Also draw each voxel's case against the GT (correct / wrong class / missed / "
                                     "false positive, inside --mask) in BEV, 3D and the page; needs --predictions."),
    camera_overlay: CameraOverlay = typer.Option(_DEFAULTS.camera_overlay, "--camera-overlay",
                                                 help="Camera pictures: 'outline' draws the borders of each class's "
                                                      "region over the photo (it stays visible), "
                                                      "'fill' blends voxel squares over it."),
    camera_range: str = typer.Option("{:g}:{:g}".format(*_DEFAULTS.camera_distance), "--camera-range",
                                     help="NEAR:FAR metres from the camera: only voxels in between are drawn on the "
                                          "photos (FAR may be 'inf')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace pictures of this scene already in --out."),
) -> None:
    """Draw a scene: per frame GT | prediction | binary decoder in BEV and 3D, camera overlays, a GIF, and an HTML page.

    Top-2 pseudo-labels (b2s autolabel --top2, given as --predictions or --data) also get first | second choice | logit margin in BEV.

    Example: b2s visualize scene-0061 --data val.h5 --predictions preds.h5 --frame 0 --out pictures/ --html --errors
    """
    check_number("--frame", frame, at_least=0)
    refuse_together("--predictions", predictions, "--pred", pred, "--pred is the old name of --predictions")
    predictions = predictions or pred
    if errors and predictions is None:
        raise OptionValueError("--errors compares a prediction with the ground truth: pass a predictions file with --predictions")
    options = VisualizeOptions(frame=frame, html=html, render_3d=not no_3d, cameras=not no_cameras, mask=mask.value,
                               errors=errors, camera_overlay=camera_overlay.value,
                               camera_distance=_metres_range("--camera-range", camera_range))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with claim_outputs([picture_folder(out, scene)], {"--data": data, "--predictions": predictions}, overwrite=overwrite), \
            Progress(*columns, console=_console, transient=True) as progress:
        task = progress.add_task(f"drawing {escape(scene)}", total=None)
        result = visualize_scene(data, scene, out, pred_path=predictions, options=options,
                                 on_frame=lambda done, total: progress.update(task, completed=done, total=total))
    for warning in result.warnings:
        _console.print(f"[yellow]warning:[/] {escape(str(warning))}")
    for path in result.paths:
        _console.print(str(path), markup=False)
    _console.print(f"{len(result.paths)} files in {result.seconds:.1f} s")


def _metres_range(option: str, text: str) -> tuple[float, float]:
    """'NEAR:FAR' -> (near, far) metres with 0 <= near < far; FAR may be 'inf' (no far limit)."""
    near_text, sep, far_text = text.partition(":")
    try:
        if not sep:
            raise ValueError
        near, far = float(near_text), float(far_text)
    except ValueError:
        raise OptionValueError(f"{option} must be NEAR:FAR in metres (e.g. 2.5:50 or 2.5:inf), got '{text}'") from None
    check_number(option + " NEAR", near, at_least=0)
    if not far > near:  # also refuses NaN
        raise OptionValueError(f"{option}: FAR must be greater than NEAR, got '{text}'")
    return near, far
