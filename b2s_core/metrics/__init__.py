"""Occupancy metrics as pure functions: confusion matrices, IoU / mIoU, protocols, RayIoU.

Everything here works on arrays (NumPy or torch) and knows nothing of files; ``b2s_core.apps.evaluate``
loads files, feeds these functions and renders the results.
"""

from b2s_core.metrics.confusion import MetricsError, confusion_matrix, confusion_matrix_reference
from b2s_core.metrics.evaluator import EvaluationResult, OccupancyEvaluator
from b2s_core.metrics.iou import binary_iou, geometry_iou, mean_iou, per_class_iou
from b2s_core.metrics.protocols import PROTOCOLS, Protocol, get_protocol, protocol_for_taxonomy
from b2s_core.metrics.rayiou import (
    RAYIOU_THRESHOLDS,
    RayIoUAccumulator,
    first_hits,
    first_hits_reference,
    lidar_ray_directions,
    ray_origins,
)

__all__ = [
    "MetricsError",
    "confusion_matrix",
    "confusion_matrix_reference",
    "EvaluationResult",
    "OccupancyEvaluator",
    "per_class_iou",
    "mean_iou",
    "geometry_iou",
    "binary_iou",
    "Protocol",
    "PROTOCOLS",
    "get_protocol",
    "protocol_for_taxonomy",
    "RAYIOU_THRESHOLDS",
    "RayIoUAccumulator",
    "first_hits",
    "first_hits_reference",
    "lidar_ray_directions",
    "ray_origins",
]
