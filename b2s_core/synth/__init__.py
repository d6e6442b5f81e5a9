"""A procedural driving world with simulated sensors, written in real formats with labels made as real ones are.

Entry points: :func:`write_dataset` (what ``b2s synth`` calls), :func:`load_manifest`,
:func:`load_ground_truth`; the pieces (``world``, ``sensors``, ``raycast``, ``groundtruth`` (the
exact solid truth), ``labels`` (label sets from the LiDAR, Occ3D masks), ``scene``, ``writers``) are
usable on their own. Layout and file contents: docs/synth.md.
"""

from b2s_core.synth.dataset import FORMATS, MANIFEST, SynthError, SynthManifest, load_manifest, write_dataset
from b2s_core.synth.truth_file import GroundTruthFrame, load_ground_truth

__all__ = [
    "FORMATS", "MANIFEST", "SynthError", "SynthManifest", "load_manifest", "write_dataset", "GroundTruthFrame",
    "load_ground_truth",
]
