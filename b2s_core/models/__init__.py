"""Occupancy models: Sparse-LS and Sparse-BEVFormer (proposed) and their dense baselines LS and BEVFormer.

    from b2s_core.models import model_config, build_model
    cfg = model_config("sparse-ls", "small", grid="occ3d")
    model = build_model(cfg)
    out = model(images, img_from_cam, ego_from_cam)   # ModelOutput
"""

from b2s_core.models.config import ARRANGEMENTS, PRESETS, VARIANTS, ModelConfig, ModelConfigError, model_config
from b2s_core.models.occupancy_model import ModelInputError, ModelOutput, OccupancyModel, build_model
from b2s_core.models.resnet import BackboneWeightsError

__all__ = [
    "ARRANGEMENTS", "PRESETS", "VARIANTS", "ModelConfig", "ModelConfigError", "model_config",
    "ModelInputError", "ModelOutput", "OccupancyModel", "build_model", "BackboneWeightsError",
]
