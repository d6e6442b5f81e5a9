"""Evaluation protocols: which voxels are scored and which classes are averaged.

* ``occ3d``: Occ3D-nuScenes, 18 labels, free = 17; score voxels of ``mask_camera`` (the standard
  setting), of ``mask_lidar``, or all voxels; mIoU over classes 0..16.
* ``openoccupancy``: nuScenes-Occupancy, 0 = empty, voxels labelled 255 (noise) are not scored;
  SC IoU = geometry IoU, SSC mIoU over classes 1..16.
* ``openscene``: nuPlan-based OpenScene, free = 16, 255 = invalid is not scored; mIoU over the
  8 used classes (0, 4..10).

Every protocol scores one confusion matrix accumulated over the whole split (not a mean of
per-frame figures), as the public evaluation code of these benchmarks does.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2s_core.metrics.confusion import MetricsError
from b2s_core.taxonomy import IGNORE_INDEX, OCC3D, OPENOCCUPANCY, OPENSCENE, Taxonomy

MASKS = ("camera", "lidar", "none")


@dataclass(frozen=True)
class Protocol:
    name: str
    taxonomy: Taxonomy
    mask: str  # which visibility mask selects the scored voxels: 'camera', 'lidar' or 'none'
    ignore_index: int = IGNORE_INDEX  # ground-truth label that is never scored

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise MetricsError(f"protocol {self.name}: mask must be one of {', '.join(MASKS)}, got '{self.mask}'")

    @property
    def label(self) -> str:
        return self.name if self.mask == "none" else f"{self.name} (mask_{self.mask})"

    def with_mask(self, mask: str | None) -> Protocol:
        return self if mask is None else Protocol(self.name, self.taxonomy, mask, self.ignore_index)

    def mask_of(self, mask_camera=None, mask_lidar=None):
        """The visibility mask that selects the scored voxels (None: all voxels). Ground truth
        equal to ``ignore_index`` is left out on top of it (by the confusion matrix).

        masks: (..., X, Y, Z) bool, or None when the data have none.
        """
        if self.mask == "none":
            return None
        mask = mask_camera if self.mask == "camera" else mask_lidar
        if mask is None:
            raise MetricsError(f"protocol {self.label} needs mask_{self.mask} in the ground truth, which has none")
        return mask


PROTOCOLS: dict[str, Protocol] = {
    "occ3d": Protocol("occ3d", OCC3D, mask="camera"),
    "openoccupancy": Protocol("openoccupancy", OPENOCCUPANCY, mask="none"),
    "openscene": Protocol("openscene", OPENSCENE, mask="none"),
}


def get_protocol(name: str, mask: str | None = None) -> Protocol:
    """A protocol by name, optionally with another mask (``occ3d`` + ``lidar``)."""
    try:
        return PROTOCOLS[name].with_mask(mask)
    except KeyError:
        raise MetricsError(f"unknown protocol '{name}': use one of {', '.join(PROTOCOLS)}") from None


def protocol_for_taxonomy(taxonomy: Taxonomy, mask: str | None = None) -> Protocol:
    """The protocol of a taxonomy; taxonomies without a benchmark get a plain no-mask protocol."""
    for protocol in PROTOCOLS.values():
        if protocol.taxonomy.name == taxonomy.name:
            return protocol.with_mask(mask)
    return Protocol(taxonomy.name, taxonomy, mask=mask or "none")
