"""3D pictures of a voxel layer: one triangle mesh of the visible voxel faces, drawn offscreen by open3d.

The mesh is built with numpy for all voxels at once (a face is emitted only where the neighbouring
voxel is not drawn, so a solid block costs its surface, not its volume). Colours are pre-shaded per
face direction (``FACE_SHADE``) and open3d's lighting is switched off, so a picture's colours are
exactly the taxonomy's colours times a known factor.

open3d needs an OpenGL context; its legacy ``Visualizer`` makes one headless through EGL (Mesa).
Where none can be made, :class:`VoxelRenderer` raises :class:`RenderUnavailable` with the reason.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.viz.voxels import BACKGROUND, VoxelLayer

# One entry per face direction: (axis, side, brightness, 4 unit-cube corners counter-clockwise seen from outside).
# Brightness as if lit from above and a little from the front-left, so that the three visible
# faces of a box always differ.
_FACES: tuple[tuple[int, int, float, tuple[tuple[int, int, int], ...]], ...] = (
    (2, +1, 1.00, ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))),  # top (+z)
    (2, -1, 0.45, ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0))),  # bottom (-z)
    (0, +1, 0.80, ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1))),  # front (+x)
    (0, -1, 0.60, ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0))),  # back (-x)
    (1, +1, 0.70, ((0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0))),  # left (+y)
    (1, -1, 0.70, ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1))),  # right (-y)
)
FACE_SHADE = {(axis, side): bright for axis, side, bright, _ in _FACES}
EGO_BOX_M = (4.6, 1.9, 1.6)  # length, width, height of the ego marker
EGO_COLOR = (235, 235, 235)


class RenderUnavailable(B2SError, RuntimeError):
    """No OpenGL context (or no open3d) on this machine: 3D views cannot be drawn."""


@dataclass
class VoxelMesh:
    """Triangles of the visible voxel faces, in ego-frame metres."""

    vertices: np.ndarray  # (V, 3) float64, 4 per face
    triangles: np.ndarray  # (T, 3) int32, 2 per face
    colors: np.ndarray  # (V, 3) float64 in [0, 1], already shaded

    @property
    def num_faces(self) -> int:
        return len(self.vertices) // 4


def _exposed(occupied: np.ndarray, axis: int, side: int) -> np.ndarray:
    """(X, Y, Z) bool: drawn voxels whose neighbour one step along ``side * axis`` is not drawn."""
    padded = np.pad(occupied, 1, constant_values=False)
    neighbour = np.roll(padded, -side, axis=axis)[1:-1, 1:-1, 1:-1]  # neighbour[i] = occupied[i + side]
    return occupied & ~neighbour


def voxel_mesh(layer: VoxelLayer, *, ego_box: bool = True) -> VoxelMesh:
    """All visible faces of ``layer`` as one mesh (+ the ego box at the origin when ``ego_box``)."""
    grid = layer.grid
    origin, size = grid.origin, np.asarray(grid.voxel_size)
    table = layer.taxonomy.color_array().astype(np.float64) / 255.0
    occupied = layer.occupied
    vertices, colors = [], []
    for axis, side, brightness, corners in _FACES:
        index = np.argwhere(_exposed(occupied, axis, side))  # (F, 3)
        corner = np.asarray(corners, dtype=np.float64)  # (4, 3)
        vertices.append((origin + (index[:, None, :] + corner[None]) * size).reshape(-1, 3))  # (F * 4, 3)
        face_color = table[layer.labels[index[:, 0], index[:, 1], index[:, 2]]] * brightness  # (F, 3)
        colors.append(np.repeat(face_color, 4, axis=0))
    if ego_box:
        box_v, box_c = _ego_box()
        vertices.append(box_v)
        colors.append(box_c)
    vertices_all = np.concatenate(vertices) if vertices else np.zeros((0, 3))
    colors_all = np.concatenate(colors) if colors else np.zeros((0, 3))
    return VoxelMesh(vertices_all, _quad_triangles(len(vertices_all) // 4), colors_all)


def voxel_mesh_reference(layer: VoxelLayer) -> VoxelMesh:
    """Slow voxel-by-voxel version of ``voxel_mesh(layer, ego_box=False)`` (faces in another order), for tests."""
    grid = layer.grid
    origin, size = grid.origin, np.asarray(grid.voxel_size)
    table = layer.taxonomy.color_array().astype(np.float64) / 255.0
    occupied = layer.occupied
    shape = occupied.shape
    vertices, colors = [], []
    for i, j, k in zip(*np.nonzero(occupied)):
        for axis, side, brightness, corners in _FACES:
            neighbour = [i, j, k]
            neighbour[axis] += side
            inside = 0 <= neighbour[axis] < shape[axis]
            if inside and occupied[tuple(neighbour)]:
                continue
            for corner in corners:
                vertices.append(origin + (np.array([i, j, k]) + corner) * size)
                colors.append(table[layer.labels[i, j, k]] * brightness)
    vertices_all = np.array(vertices).reshape(-1, 3)
    return VoxelMesh(vertices_all, _quad_triangles(len(vertices_all) // 4), np.array(colors).reshape(-1, 3))


def _quad_triangles(num_quads: int) -> np.ndarray:
    """(num_quads * 2, 3) int32: quad q's corners 4q..4q+3 split into two counter-clockwise triangles."""
    base = 4 * np.arange(num_quads, dtype=np.int32)[:, None, None]  # (Q, 1, 1)
    return (base + np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)).reshape(-1, 3)


def _ego_box() -> tuple[np.ndarray, np.ndarray]:
    """Vertices (24, 3) and colours (24, 3) of the ego box: bottom at z=0, centred on the origin."""
    size = np.asarray(EGO_BOX_M)
    low = np.array([-size[0] / 2, -size[1] / 2, 0.0])
    vertices, colors = [], []
    for _axis, _side, brightness, corners in _FACES:
        vertices.append(low + np.asarray(corners, dtype=np.float64) * size)
        colors.append(np.tile(np.asarray(EGO_COLOR) / 255.0 * brightness, (4, 1)))
    return np.concatenate(vertices), np.concatenate(colors)


@dataclass(frozen=True)
class ChaseView:
    """A camera behind and above the ego, looking ahead; distances as fractions of the grid's half length.

    Fractions rather than metres so that the same view frames an 80 m and a 102 m grid alike.
    """

    back: float = 1.1  # eye this far behind the ego
    up: float = 0.95  # eye this high above the ego
    ahead: float = 0.3  # look at a point this far ahead of the ego, on the ground
    fov_deg: float = 60.0  # horizontal field of view

    def cam_from_ego(self, half_length: float) -> np.ndarray:
        """(4, 4) OpenCV camera (x right, y down, z forward) from the ego frame."""
        eye = np.array([-self.back * half_length, 0.0, self.up * half_length])
        target = np.array([self.ahead * half_length, 0.0, 0.0])
        return look_at(eye, target, up=np.array([0.0, 0.0, 1.0]))

    def img_from_cam(self, width: int, height: int) -> np.ndarray:
        """(3, 3) pinhole intrinsics for an image of ``width`` x ``height`` pixels."""
        focal = (width / 2) / math.tan(math.radians(self.fov_deg) / 2)
        return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(4, 4) cam_from_world of an OpenCV camera at ``eye`` looking at ``target``."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    cam_from_world = np.eye(4)
    cam_from_world[:3, :3] = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    cam_from_world[:3, 3] = -cam_from_world[:3, :3] @ eye
    return cam_from_world


class VoxelRenderer:
    """An offscreen open3d window, reused for many pictures; use as a context manager.

    >>> with VoxelRenderer(800, 600) as renderer:
    ...     image = renderer.render(voxel_mesh(layer))  # (600, 800, 3) uint8
    """

    def __init__(self, width: int = 800, height: int = 600, *, view: ChaseView = ChaseView(),
                 background: tuple[int, int, int] = BACKGROUND) -> None:
        self.width, self.height, self.view = width, height, view
        try:
            import open3d
        except ModuleNotFoundError as err:
            if err.name != "open3d":  # open3d is there but one of its own modules is not
                raise RenderUnavailable(f"open3d cannot be imported ({err}); 3D views need it (or pass --no-3d)") from None
            # An optional extra (about 900 MB): the plain install has no 3D views.
            raise RenderUnavailable("open3d is not installed; install the viz3d extra for 3D views "
                                    "(pip install 'b2s[viz3d]') or pass --no-3d") from None
        except (ImportError, OSError) as err:  # OSError: a missing shared library (libusb, libGL)
            raise RenderUnavailable(f"open3d cannot be imported ({err}); 3D views need it (or pass --no-3d)") from None
        self._o3d = open3d
        open3d.utility.set_verbosity_level(open3d.utility.VerbosityLevel.Error)
        # Mesa's EGL wants a private runtime folder; headless sessions often have none, and then it
        # prints an error line although rendering works.
        if not os.environ.get("XDG_RUNTIME_DIR"):
            os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="b2s-xdg-")
        self._vis = open3d.visualization.Visualizer()
        if not self._vis.create_window(visible=False, width=width, height=height):
            raise RenderUnavailable(
                "open3d could not create an OpenGL context (no display and no EGL/Mesa offscreen driver); "
                "3D views skipped: install Mesa's EGL (libegl1) or pass --no-3d"
            )
        option = self._vis.get_render_option()
        option.light_on = False  # colours are pre-shaded per face (FACE_SHADE)
        option.mesh_show_back_face = False
        option.background_color = np.asarray(background, dtype=np.float64) / 255.0

    def __enter__(self) -> VoxelRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._vis is not None:
            self._vis.destroy_window()
            self._vis = None

    def render(self, mesh: VoxelMesh, half_length: float = 40.0) -> np.ndarray:
        """Draw ``mesh`` from the chase view of a grid ``half_length`` metres long ahead -> (H, W, 3) uint8."""
        o3d = self._o3d
        triangle_mesh = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.triangles)
        )
        triangle_mesh.vertex_colors = o3d.utility.Vector3dVector(mesh.colors)
        self._vis.clear_geometries()
        self._vis.add_geometry(triangle_mesh, reset_bounding_box=True)
        control = self._vis.get_view_control()
        params = control.convert_to_pinhole_camera_parameters()
        K = self.view.img_from_cam(self.width, self.height)
        params.intrinsic = o3d.camera.PinholeCameraIntrinsic(self.width, self.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        params.extrinsic = self.view.cam_from_ego(half_length)
        control.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)
        control.set_constant_z_far(20.0 * half_length)  # the default far plane follows the bounding box and clips
        control.set_constant_z_near(0.1)
        self._vis.poll_events()
        self._vis.update_renderer()
        buffer = np.asarray(self._vis.capture_screen_float_buffer(do_render=True))  # (H, W, 3) float in [0, 1]
        return np.round(buffer * 255.0).astype(np.uint8)


def render_layers_3d(layers: list[VoxelLayer], width: int = 800, height: int = 600) -> list[np.ndarray]:
    """One chase-view picture per layer -> list of (height, width, 3) uint8; raises RenderUnavailable."""
    with VoxelRenderer(width, height) as renderer:
        return [renderer.render(voxel_mesh(layer), half_length=grid_half_length(layer)) for layer in layers]


def grid_half_length(layer: VoxelLayer) -> float:
    """Half the grid's extent along x (forward), metres."""
    return (layer.grid.range_max[0] - layer.grid.range_min[0]) / 2
