"""OpenOccupancy (nuScenes-Occupancy): ``<root>/scene_<scene_token>/occupancy/<lidar_token>.npy``.

One ``.npy`` per key frame: int64 rows ``[z, y, x, label]`` of the non-empty voxels of the
512 x 512 x 40 grid (0.2 m, range [-51.2, -51.2, -5, 51.2, 51.2, 3]), indexed in the ego frame
like every b2s grid. Labels are OpenOccupancy's: 1..16 the Occ3D classes barrier..vegetation, 0
(noise) for Occ3D 'others' (it has no OpenOccupancy class). Tokens are the nuScenes scene token and
the key frame's LIDAR_TOP sample_data token.
"""

from __future__ import annotations

import io

import numpy as np

from b2s_core.synth.scene import KeyFrameRecord
from b2s_core.synth.writers.common import KeyFrameFileWriter, atomic_write_bytes
from b2s_core.synth.writers.nuscenes import NuScenesWriter
from b2s_core.taxonomy import IGNORE_INDEX, map_labels

GRID = "openoccupancy"


def sparse_rows(semantics_occ3d: np.ndarray) -> np.ndarray:
    """(X, Y, Z) Occ3D labels -> (N, 4) int64 rows [z, y, x, OpenOccupancy label], C order of (x, y, z)."""
    x, y, z = np.nonzero(semantics_occ3d != 17)
    labels = map_labels(semantics_occ3d[x, y, z], "occ3d", "openoccupancy")
    labels[labels == IGNORE_INDEX] = 0  # 'others' -> noise
    return np.stack([z, y, x, labels], axis=1).astype(np.int64)


class OpenOccupancyWriter(KeyFrameFileWriter):
    def add_key_frame(self, frame: KeyFrameRecord) -> None:
        scene_token = NuScenesWriter.scene_token(self.spec)
        lidar_token = NuScenesWriter.sample_data_token(self.spec, "LIDAR_TOP", frame.sweep.sweep_index)
        buf = io.BytesIO()
        np.save(buf, sparse_rows(frame.truth[GRID].semantics))
        atomic_write_bytes(self.root / f"scene_{scene_token}" / "occupancy" / f"{lidar_token}.npy", buf.getvalue())
