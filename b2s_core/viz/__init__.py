"""Pictures of occupancy: BEV (:mod:`.bev`), 3D (:mod:`.render3d`), camera overlays (:mod:`.cameras`),
GIFs (:mod:`.animation`), an interactive page (:mod:`.html`), panels (:mod:`.compose`), and
:func:`b2s_core.viz.scene.visualize_scene`, which draws a whole scene from the unified files."""
