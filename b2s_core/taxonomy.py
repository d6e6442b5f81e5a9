"""Label sets (taxonomies) and the mappings between them and the datasets' box categories.

A taxonomy's label values are the values stored in the dataset's own files, so that converted
labels stay bit-exact: OpenScene keeps its unused slots 1-3 and 11-15.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from b2s_core.errors import B2SError

IGNORE_INDEX = 255  # "do not score this voxel" in every taxonomy (OpenOccupancy noise, OpenScene invalid)


class TaxonomyError(B2SError, ValueError):
    """An unknown taxonomy or an impossible mapping."""


@dataclass(frozen=True)
class Taxonomy:
    name: str
    class_names: tuple[str, ...]  # indexed by stored label value
    free_index: int
    eval_classes: tuple[int, ...]  # labels averaged into mIoU (free and unused slots excluded)
    colors: tuple[tuple[int, int, int], ...]  # RGB per label value, for pictures
    from_nuscenes: dict[str, int] = field(default_factory=dict)  # nuScenes box category -> label
    from_nuplan: dict[str, int] = field(default_factory=dict)  # nuPlan / OpenScene box category -> label

    def __post_init__(self) -> None:
        if len(self.colors) != len(self.class_names):
            raise TaxonomyError(f"taxonomy {self.name}: {len(self.colors)} colours for {len(self.class_names)} labels")
        if not 0 <= self.free_index < len(self.class_names):
            raise TaxonomyError(f"taxonomy {self.name}: free index {self.free_index} out of range")

    @property
    def num_labels(self) -> int:
        """Number of label values, free included (the width of a semantic head's output)."""
        return len(self.class_names)

    def color_array(self) -> np.ndarray:
        """(256, 3) uint8 lookup table; unused values (e.g. 255 ignore) are grey."""
        table = np.full((256, 3), 128, dtype=np.uint8)
        table[: self.num_labels] = np.asarray(self.colors, dtype=np.uint8)
        return table

    def label_of_nuscenes(self, category: str) -> int:
        """nuScenes category name (e.g. 'vehicle.car') -> label; unknown names fall back by prefix."""
        return _lookup(self.from_nuscenes, category, self.name)

    def label_of_nuplan(self, category: str) -> int:
        return _lookup(self.from_nuplan, category, self.name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "free_index": self.free_index,
            "eval_classes": list(self.eval_classes),
            "colors": [list(c) for c in self.colors],
        }


def _lookup(table: dict[str, int], category: str, taxonomy: str) -> int:
    # nuScenes names are hierarchical ('vehicle.emergency.police'): try the longest known prefix.
    parts = category.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in table:
            return table[key]
    raise TaxonomyError(f"category '{category}' has no label in taxonomy '{taxonomy}'")


# -- Occ3D-nuScenes ---------------------------------------------------------------------------
OCC3D_NAMES = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
    "manmade", "vegetation", "free",
)
# The palette the nuScenes-lidarseg renderings made familiar; every entry distinct so that a
# picture can be read back into classes.
OCC3D_COLORS = (
    (112, 128, 144), (255, 120, 50), (255, 192, 203), (255, 255, 0), (0, 150, 245), (0, 255, 255),
    (200, 180, 0), (255, 0, 0), (255, 240, 150), (135, 60, 0), (160, 32, 240), (255, 0, 255),
    (139, 137, 137), (75, 0, 75), (150, 240, 80), (230, 230, 250), (0, 175, 0), (255, 255, 255),
)
_O = {name: i for i, name in enumerate(OCC3D_NAMES)}
# nuScenes detection categories -> Occ3D; the lidarseg 16-class merge, with the classes it drops
# (stroller, wheelchair, personal mobility, debris, racks, animals) kept as 'others' because
# they still occupy space.
NUSCENES_TO_OCC3D = {
    "animal": _O["others"],
    "human.pedestrian": _O["pedestrian"],
    "human.pedestrian.stroller": _O["others"],
    "human.pedestrian.wheelchair": _O["others"],
    "human.pedestrian.personal_mobility": _O["others"],
    "movable_object.barrier": _O["barrier"],
    "movable_object.trafficcone": _O["traffic_cone"],
    "movable_object": _O["others"],
    "static_object": _O["others"],
    "vehicle.bicycle": _O["bicycle"],
    "vehicle.motorcycle": _O["motorcycle"],
    "vehicle.car": _O["car"],
    "vehicle.bus": _O["bus"],
    "vehicle.construction": _O["construction_vehicle"],
    "vehicle.trailer": _O["trailer"],
    "vehicle.truck": _O["truck"],
    "vehicle.emergency.police": _O["car"],
    "vehicle.emergency.ambulance": _O["truck"],
    "vehicle": _O["car"],
}
NUPLAN_TO_OCC3D = {
    "vehicle": _O["car"],
    "bicycle": _O["bicycle"],
    "pedestrian": _O["pedestrian"],
    "traffic_cone": _O["traffic_cone"],
    "barrier": _O["barrier"],
    "czone_sign": _O["others"],
    "generic_object": _O["others"],
}
OCC3D = Taxonomy(
    name="occ3d",
    class_names=OCC3D_NAMES,
    free_index=17,
    eval_classes=tuple(range(17)),
    colors=OCC3D_COLORS,
    from_nuscenes=NUSCENES_TO_OCC3D,
    from_nuplan=NUPLAN_TO_OCC3D,
)

# -- OpenOccupancy (nuScenes-Occupancy): 0 = empty, 1..16 the Occ3D classes without 'others' ----
OPENOCC_NAMES = ("empty",) + OCC3D_NAMES[1:17]
OPENOCCUPANCY = Taxonomy(
    name="openoccupancy",
    class_names=OPENOCC_NAMES,
    free_index=0,
    eval_classes=tuple(range(1, 17)),
    colors=((255, 255, 255),) + OCC3D_COLORS[1:17],
    # 'others' has no OpenOccupancy class: those boxes are not scored (ignore).
    from_nuscenes={k: (v if v != _O["others"] else IGNORE_INDEX) for k, v in NUSCENES_TO_OCC3D.items()},
    from_nuplan={k: (v if v != _O["others"] else IGNORE_INDEX) for k, v in NUPLAN_TO_OCC3D.items()},
)

# -- OpenScene (nuPlan): the 8 classes of the paper's tables at their file values, free = 16 ----
OPENSCENE_NAMES = (
    "vehicle", "unused_1", "unused_2", "unused_3", "czone_sign", "bicycle", "generic_object", "pedestrian",
    "traffic_cone", "barrier", "background", "unused_11", "unused_12", "unused_13", "unused_14", "unused_15",
    "free",
)
_GREY = (128, 128, 128)
OPENSCENE = Taxonomy(
    name="openscene",
    class_names=OPENSCENE_NAMES,
    free_index=16,
    eval_classes=(0, 4, 5, 6, 7, 8, 9, 10),
    colors=(
        (0, 150, 245), _GREY, _GREY, _GREY, (255, 200, 0), (255, 192, 203), (112, 128, 144), (255, 0, 0),
        (255, 240, 150), (255, 120, 50), (150, 150, 110), _GREY, _GREY, _GREY, _GREY, _GREY, (255, 255, 255),
    ),
    from_nuscenes={
        "animal": 6, "human.pedestrian": 7, "human.pedestrian.stroller": 6, "human.pedestrian.wheelchair": 6,
        "human.pedestrian.personal_mobility": 6, "movable_object.barrier": 9, "movable_object.trafficcone": 8,
        "movable_object": 6, "static_object": 6, "vehicle.bicycle": 5, "vehicle.motorcycle": 5, "vehicle": 0,
    },
    from_nuplan={
        "vehicle": 0, "bicycle": 5, "pedestrian": 7, "traffic_cone": 8, "barrier": 9, "czone_sign": 4,
        "generic_object": 6,
    },
)

# -- binary: free / occupied ---------------------------------------------------------------------
BINARY = Taxonomy(
    name="binary",
    class_names=("free", "occupied"),
    free_index=0,
    eval_classes=(1,),
    colors=((255, 255, 255), (90, 90, 90)),
)

TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (OCC3D, OPENOCCUPANCY, OPENSCENE, BINARY)}


def get_taxonomy(name: str | Taxonomy) -> Taxonomy:
    if isinstance(name, Taxonomy):
        return name
    try:
        return TAXONOMIES[name]
    except KeyError:
        raise TaxonomyError(f"unknown taxonomy '{name}': use one of {', '.join(TAXONOMIES)}") from None


# -- label maps between taxonomies (lookup tables over all 256 byte values) ------------------------
def _table(pairs: dict[int, int], free_from: int, free_to: int) -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in pairs.items():
        table[src] = dst
    table[free_from] = free_to
    return table


_OCC3D_TO_OPENSCENE = {
    _O["others"]: 6, _O["barrier"]: 9, _O["bicycle"]: 5, _O["bus"]: 0, _O["car"]: 0,
    _O["construction_vehicle"]: 0, _O["motorcycle"]: 5, _O["pedestrian"]: 7, _O["traffic_cone"]: 8,
    _O["trailer"]: 0, _O["truck"]: 0, _O["driveable_surface"]: 10, _O["other_flat"]: 10, _O["sidewalk"]: 10,
    _O["terrain"]: 10, _O["manmade"]: 10, _O["vegetation"]: 10,
}
LABEL_MAPS: dict[tuple[str, str], np.ndarray] = {
    ("occ3d", "openoccupancy"): _table({i: i for i in range(1, 17)}, 17, 0),
    ("occ3d", "openscene"): _table(_OCC3D_TO_OPENSCENE, 17, 16),
}


def map_labels(labels: np.ndarray, source: str | Taxonomy, target: str | Taxonomy) -> np.ndarray:
    """uint8 labels of ``source`` -> ``target`` labels; classes without a counterpart become 255."""
    src, dst = get_taxonomy(source), get_taxonomy(target)
    if src.name == dst.name:
        return labels.copy()
    if dst.name == "binary":
        out = (labels != src.free_index).astype(np.uint8)
        out[labels == IGNORE_INDEX] = IGNORE_INDEX
        return out
    try:
        table = LABEL_MAPS[(src.name, dst.name)]
    except KeyError:
        raise TaxonomyError(f"no label map from '{src.name}' to '{dst.name}'") from None
    return table[labels]
