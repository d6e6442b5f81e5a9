"""OpenOccupancy (nuScenes-Occupancy): ``<root>/scene_<scene_token>/occupancy/<lidar_token>.npy``.

One ``.npy`` per key frame: int64 rows ``[z, y, x, label]`` of the non-empty voxels of the
512 x 512 x 40 grid (0.2 m, range [-51.2, -51.2, -5, 51.2, 51.2, 3]) **in the key frame's LIDAR_TOP
frame**, as the real files are (``b2s_core.grids.OPENOCCUPANCY_LIDAR_GRID``): the key frame's label
set (:mod:`b2s_core.synth.labels`: the observed surfaces, no solid interiors, as the real files list
them) made on that grid in the sensor frame of the calibrated_sensor the nuScenes writer stores, not
the ego-frame labels moved by whole voxels. Labels are OpenOccupancy's:
1..16 the Occ3D classes barrier..vegetation, 0 (noise) for Occ3D 'others' (it has no OpenOccupancy
class). Tokens are the nuScenes scene token and the key frame's LIDAR_TOP sample_data token.
"""

from __future__ import annotations

import io

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import OPENOCCUPANCY_LIDAR_GRID, VoxelGrid
from b2s_core.synth.groundtruth import FREE
from b2s_core.synth.labels import LabelTarget
from b2s_core.synth.scene import KeyFrameRecord
from b2s_core.synth.sensors import LidarSpec
from b2s_core.synth.writers.common import KeyFrameFileWriter, atomic_write_bytes
from b2s_core.synth.writers.nuscenes import NuScenesWriter
from b2s_core.taxonomy import IGNORE_INDEX, map_labels

TARGET = "openoccupancy-lidar"  # the label target of the files (not an ego-frame grid of the truth file)


def sparse_rows(semantics_occ3d: np.ndarray) -> np.ndarray:
    """(X, Y, Z) Occ3D labels -> (N, 4) int64 rows [z, y, x, OpenOccupancy label], C order of (x, y, z)."""
    x, y, z = np.nonzero(semantics_occ3d != FREE)
    labels = map_labels(semantics_occ3d[x, y, z], "occ3d", "openoccupancy")
    labels[labels == IGNORE_INDEX] = 0  # 'others' -> noise
    return np.stack([z, y, x, labels], axis=1).astype(np.int64)


def openoccupancy_target(lidar: LidarSpec) -> LabelTarget:
    """The label grid of the files: OPENOCCUPANCY_LIDAR_GRID in the LIDAR_TOP frame of the written calibration.

    Built in frame G, the LiDAR's axes with the origin on the ground below it (G's z is the ego z, so
    the ground sits at z = 0 as the label maker needs); the LiDAR grid is the same voxels with z
    raised by the sensor height, so a label's voxel index is the file's.
    """
    ego_from_lidar = lidar.ego_from_sensor
    if not np.allclose(ego_from_lidar[2, :3], [0.0, 0.0, 1.0]):
        # the exact truth (Primitives.transformed) takes yaw-only frames with the ground at z = 0
        raise B2SError(f"synthetic LiDAR rotation {ego_from_lidar[:3, :3].tolist()} is not a yaw: "
                       "OpenOccupancy labels need a level LiDAR")
    height = ego_from_lidar[2, 3]
    ego_from_g = ego_from_lidar.copy()
    ego_from_g[2, 3] = 0.0
    grid = OPENOCCUPANCY_LIDAR_GRID
    raised = (0.0, 0.0, height)
    grid_g = VoxelGrid(np.add(grid.range_min, raised), np.add(grid.range_max, raised), grid.voxel_size, grid.name)
    return LabelTarget(TARGET, grid_g, ego_from_g)


class OpenOccupancyWriter(KeyFrameFileWriter):
    def add_key_frame(self, frame: KeyFrameRecord) -> None:
        scene_token = NuScenesWriter.scene_token(self.spec)
        lidar_token = NuScenesWriter.sample_data_token(self.spec, "LIDAR_TOP", frame.sweep.sweep_index)
        buf = io.BytesIO()
        np.save(buf, sparse_rows(frame.labels[TARGET].semantics))
        atomic_write_bytes(self.root / f"scene_{scene_token}" / "occupancy" / f"{lidar_token}.npy", buf.getvalue())
