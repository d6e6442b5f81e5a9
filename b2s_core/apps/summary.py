"""Facts about unified occupancy files, for ``b2s info`` (and anyone who wants them as data)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py

from b2s_core.occfile import (
    FLAG_MASK_CAMERA,
    FLAG_MASK_LIDAR,
    FLAG_POINTS,
    FLAG_SEMANTICS,
    FLAG_TOP2,
    OccDataset,
    OccFormatError,
)

# What a frame adds to a file: its rows of the per-frame tables (packed grids, index, pose,
# calibration) and its stored labels. Embedded images and LiDAR points are counted on their own.
PER_FRAME_GROUPS = ("frames", "cameras")
PER_FRAME_RAGGED = ("ragged/labels", "ragged/top2_labels", "ragged/top2_logits")


@dataclass(frozen=True)
class FileSummary:
    path: Path
    source: str
    command: str
    created: str
    compression: str
    grid_name: str
    grid_shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    z_offset: float  # label z = ego z + z_offset (0: the ego frame)
    taxonomy: str
    num_labels: int
    cameras: list[str]
    scenes: int
    frames: int
    with_semantics: int
    with_mask_lidar: int
    with_mask_camera: int
    with_top2: int
    with_points: int
    with_embedded_images: int
    with_image_paths: int
    bytes_on_disk: int
    image_bytes: int  # embedded images, stored as they came
    point_bytes: int  # LiDAR points after compression
    payload_bytes: int  # per-frame datasets as stored (PER_FRAME_GROUPS, PER_FRAME_RAGGED): grids, labels, calibration

    @property
    def overhead_bytes(self) -> int:
        """What the file takes besides its frames' data: HDF5 header and chunk indexes, the scene
        table, free space; about the same for one frame or many."""
        return self.bytes_on_disk - self.payload_bytes - self.image_bytes - self.point_bytes

    @property
    def bytes_per_frame(self) -> float:
        """Payload per frame: grids, labels and calibration (images, points and overhead excluded)."""
        return self.payload_bytes / max(self.frames, 1)

    @property
    def raw_bytes(self) -> int:
        """What the grids would take as plain uint8 arrays, one byte per voxel per grid."""
        voxels = self.grid_shape[0] * self.grid_shape[1] * self.grid_shape[2]
        grids = self.frames + self.with_mask_lidar + self.with_mask_camera  # labels/occupancy + masks
        return voxels * grids

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / max(self.payload_bytes, 1)


def payload_bytes(h5: h5py.File) -> int:
    """Stored bytes (after compression) of the per-frame datasets of an open file."""
    datasets = [ds for group in PER_FRAME_GROUPS if group in h5
                for ds in h5[group].values() if isinstance(ds, h5py.Dataset)]
    datasets += [h5[name] for name in PER_FRAME_RAGGED if name in h5]
    return sum(int(ds.id.get_storage_size()) for ds in datasets)


def summarize(path: str | os.PathLike) -> FileSummary:
    """Read a file's header and per-frame index (no grids are decoded): linear in frames, fast."""
    dataset = OccDataset(path)
    try:
        attrs = dataset.attrs()
        h5 = dataset.h5()
        try:
            image_range = h5["cameras/image_range"][:]  # (N, C, 2)
            image_path = h5["cameras/image_path"][:]  # (N, C)
            image_bytes = int(h5["ragged/images"].id.get_storage_size())
            point_bytes = int(h5["ragged/points"].id.get_storage_size())
            payload = payload_bytes(h5)
        except (KeyError, OSError) as err:  # a missing table or a chunk that does not decode: one line naming the file
            raise OccFormatError(f"{path}: camera or ragged tables cannot be read ({err})") from None
        embedded = int((image_range[..., 1] > 0).any(axis=1).sum()) if len(image_range) else 0
        with_paths = int((image_path != b"").any(axis=1).sum()) if len(image_path) else 0
        return FileSummary(
            path=Path(path),
            source=attrs.get("source", ""),
            command=attrs.get("command", ""),
            created=attrs.get("created", ""),
            compression=attrs.get("compression", ""),
            grid_name=dataset.grid.name,
            grid_shape=dataset.grid.shape,
            voxel_size=dataset.grid.voxel_size,
            z_offset=dataset.z_offset,
            taxonomy=dataset.taxonomy.name,
            num_labels=dataset.taxonomy.num_labels,
            cameras=list(dataset.camera_names),
            scenes=len(dataset.scenes),
            frames=len(dataset),
            with_semantics=dataset.count_flag(FLAG_SEMANTICS),
            with_mask_lidar=dataset.count_flag(FLAG_MASK_LIDAR),
            with_mask_camera=dataset.count_flag(FLAG_MASK_CAMERA),
            with_top2=dataset.count_flag(FLAG_TOP2),
            with_points=dataset.count_flag(FLAG_POINTS),
            with_embedded_images=embedded,
            with_image_paths=with_paths,
            bytes_on_disk=Path(path).stat().st_size,
            image_bytes=image_bytes,
            point_bytes=point_bytes,
            payload_bytes=payload,
        )
    finally:
        dataset.close()
