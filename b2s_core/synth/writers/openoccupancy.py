"""OpenOccupancy (nuScenes-Occupancy): ``<root>/scene_<scene_token>/occupancy/<lidar_token>.npy``.

One ``.npy`` per key frame: int64 rows ``[z, y, x, label]`` of the non-empty voxels of the
512 x 512 x 40 grid (0.2 m, range [-51.2, -51.2, -5, 51.2, 51.2, 3]) **in the key frame's LIDAR_TOP
frame**, as the real files are (``b2s_core.grids.OPENOCCUPANCY_LIDAR_GRID``): the labels are the
exact truth of the world on that grid, computed in the sensor frame of the calibrated_sensor the
nuScenes writer stores, not the ego-frame truth moved by whole voxels. Labels are OpenOccupancy's:
1..16 the Occ3D classes barrier..vegetation, 0 (noise) for Occ3D 'others' (it has no OpenOccupancy
class). Tokens are the nuScenes scene token and the key frame's LIDAR_TOP sample_data token.
"""

from __future__ import annotations

import io

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import OPENOCCUPANCY_LIDAR_GRID, VoxelGrid
from b2s_core.synth.groundtruth import FREE, semantic_occupancy
from b2s_core.synth.scene import KeyFrameRecord
from b2s_core.synth.writers.common import KeyFrameFileWriter, atomic_write_bytes
from b2s_core.synth.writers.nuscenes import NuScenesWriter
from b2s_core.taxonomy import IGNORE_INDEX, map_labels


def sparse_rows(semantics_occ3d: np.ndarray) -> np.ndarray:
    """(X, Y, Z) Occ3D labels -> (N, 4) int64 rows [z, y, x, OpenOccupancy label], C order of (x, y, z)."""
    x, y, z = np.nonzero(semantics_occ3d != FREE)
    labels = map_labels(semantics_occ3d[x, y, z], "occ3d", "openoccupancy")
    labels[labels == IGNORE_INDEX] = 0  # 'others' -> noise
    return np.stack([z, y, x, labels], axis=1).astype(np.int64)


def lidar_frame_truth(frame: KeyFrameRecord) -> np.ndarray:
    """(512, 512, 40) uint8 exact Occ3D labels of a key frame on OPENOCCUPANCY_LIDAR_GRID (LIDAR_TOP frame)."""
    ego_from_lidar = frame.scene.lidar.ego_from_sensor
    if not np.allclose(ego_from_lidar[2, :3], [0.0, 0.0, 1.0]):
        # semantic_occupancy and Primitives.transformed take yaw-only frames with the ground at z = 0
        raise B2SError(f"synthetic LiDAR rotation {ego_from_lidar[:3, :3].tolist()} is not a yaw: OpenOccupancy truth needs a level LiDAR")
    height = ego_from_lidar[2, 3]
    # Frame G: the LiDAR's axes with the origin on the ground below it, so G's z is the ego z and the
    # LiDAR grid is the same voxels with z raised by the sensor height.
    ego_from_g = ego_from_lidar.copy()
    ego_from_g[2, 3] = 0.0
    lidar = OPENOCCUPANCY_LIDAR_GRID
    grid_g = VoxelGrid(np.add(lidar.range_min, (0, 0, height)), np.add(lidar.range_max, (0, 0, height)), lidar.voxel_size, lidar.name)
    global_from_g = frame.global_from_ego @ ego_from_g
    prims_g = frame.world.snapshot(frame.sweep.time).transformed(np.linalg.inv(global_from_g))

    def ground_label(xy_g: np.ndarray) -> np.ndarray:
        return frame.world.ground(xy_g @ global_from_g[:2, :2].T + global_from_g[:2, 3])[0]

    return semantic_occupancy(prims_g, ground_label, grid_g).semantics


class OpenOccupancyWriter(KeyFrameFileWriter):
    def add_key_frame(self, frame: KeyFrameRecord) -> None:
        scene_token = NuScenesWriter.scene_token(self.spec)
        lidar_token = NuScenesWriter.sample_data_token(self.spec, "LIDAR_TOP", frame.sweep.sweep_index)
        buf = io.BytesIO()
        np.save(buf, sparse_rows(lidar_frame_truth(frame)))
        atomic_write_bytes(self.root / f"scene_{scene_token}" / "occupancy" / f"{lidar_token}.npy", buf.getvalue())
