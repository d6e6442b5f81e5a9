"""Binary occupancy ground truth with visibility masks from LiDAR sweeps and 3D boxes (``b2s build-binary``).

* :mod:`~b2s_core.binary.pipeline`: one scene of SensorFrames -> OccFrames (``build_scene``);
* :mod:`~b2s_core.binary.aggregate`: ego-body removal, box interpolation and assignment, point sets;
* :mod:`~b2s_core.binary.raycast`: voxel traversal, vectorised and reference DDA;
* :mod:`~b2s_core.binary.lidar_mask`: LiDAR visibility rules (hit, passed, guard zone);
* :mod:`~b2s_core.binary.densify`: ground completion between scan lines;
* :mod:`~b2s_core.binary.camera_mask`: camera visibility through pixel rays;
* :mod:`~b2s_core.binary.preview`: a bird's-eye picture of a built frame;
* :mod:`~b2s_core.binary.convention`: label sets' vertical conventions (``z_offset``) and estimating one;
* :mod:`~b2s_core.binary.truth_scores`: scores against exact ground truth (synthetic world).

The reader-driven driver (files, workers, shards, resume) is ``converters/jobs/build_binary.py``.
"""
