"""The applications on top of the libraries: predict, evaluate, autolabel, export and the file
summary of ``b2s info``, plus their torchrun launcher (``launch``) and per-rank worker (``worker``).
They read checkpoints through :mod:`b2s_core.models.checkpoint` and never import :mod:`b2s_core.train`
(tests/test_layers.py)."""
