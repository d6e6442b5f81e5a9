"""Occ3D-nuScenes labels: ``<root>/gts/<scene_name>/<sample_token>/labels.npz``.

``np.savez_compressed`` with ``semantics``, ``mask_lidar``, ``mask_camera``: uint8 (200, 200, 16)
indexed (x, y, z) in the ego frame, Occ3D labels (free = 17): the key frame's label set
(:mod:`b2s_core.synth.labels`). Tokens are the nuScenes sample tokens.
"""

from __future__ import annotations

import numpy as np

from b2s_core.synth.scene import KeyFrameRecord
from b2s_core.synth.writers.common import KeyFrameFileWriter, atomic_write_bytes, npz_bytes
from b2s_core.synth.writers.nuscenes import NuScenesWriter

GRID = "occ3d"


class Occ3DWriter(KeyFrameFileWriter):
    def add_key_frame(self, frame: KeyFrameRecord) -> None:
        sample = NuScenesWriter.sample_token(self.spec, frame.key_index)
        labels = frame.labels[GRID]
        data = npz_bytes(
            semantics=labels.semantics.astype(np.uint8),
            mask_lidar=labels.mask_lidar.astype(np.uint8),
            mask_camera=labels.mask_camera.astype(np.uint8),
        )
        atomic_write_bytes(self.root / "gts" / self.spec.name / sample / "labels.npz", data)
