"""Splitting scenes of unequal length into shares of near-equal total frames.

One rule for every engine that divides work: ``--shard i/N`` of convert / build-binary
(converters/jobs/scene_run.py), the ranks of data-parallel autolabel and evaluate
(b2s_core/apps/launch.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def balanced_shares(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of scenes of ``sizes`` frames split into ``parts`` shares of near-equal total frames.

    Greedy, longest scene first (ties: the earlier scene), each onto the share with the fewest
    frames so far (ties: the lower share); the totals then differ by at most the longest scene.
    The split depends on the sizes alone, so every process computes the same one without talking
    to the others. Each share lists its indices ascending (the dataset's order); a share is empty
    when there are fewer scenes than parts. O(n log n).
    """
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    lightest = [(0, p) for p in range(parts)]  # a heap of (frames so far, share)
    shares: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        total, share = lightest[0]
        shares[share].append(index)
        heapq.heapreplace(lightest, (total + sizes[index], share))
    return [sorted(share) for share in shares]
