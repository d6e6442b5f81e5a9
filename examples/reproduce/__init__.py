"""Helpers of ``examples/reproduce_paper.py``: the paper's experiments in miniature on the synthetic world.

``scales`` (how big), ``world`` (the datasets, built with the real engine), ``cells`` (what runs),
``runner`` (runs one cell, caches its metrics), ``report`` (tables, claims, plots).
"""
