"""Dataset readers: raw nuScenes / nuPlan / OpenScene files (and plug-ins) to frame records."""
