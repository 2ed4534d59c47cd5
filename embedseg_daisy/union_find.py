"""Union-find over node indices ``0 .. n - 1``: connected components of pair lists
that arrive in chunks, at 8 bytes per node.

Roots are always the smallest index of their component (a union hangs the larger root
under the smaller), so with nodes numbered in id order a component's root is its
smallest id, the representative convention of the hierarchy.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _find(parent, x):
    while parent[x] != x:
        # path halving: every other node on the way points to its grandparent
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True)
def _union(parent, a, b):
    for i in range(a.size):
        ra = _find(parent, a[i])
        rb = _find(parent, b[i])
        if ra < rb:
            parent[rb] = ra
        elif rb < ra:
            parent[ra] = rb


@numba.njit(cache=True)
def _compress(parent):
    # ascending order: a node's root is smaller than the node and already final
    for i in range(parent.size):
        parent[i] = parent[parent[i]]


class UnionFind:
    """Components of ``n`` nodes; feed pairs with :meth:`union`, read :meth:`roots`."""

    def __init__(self, n: int):
        self.parent = np.arange(int(n), dtype=np.int64)

    def union(self, a, b) -> None:
        a = np.ascontiguousarray(a, dtype=np.int64).reshape(-1)
        b = np.ascontiguousarray(b, dtype=np.int64).reshape(-1)
        if a.size != b.size:
            raise ValueError(f"pair lists differ in length: {a.size} vs {b.size}")
        n = self.parent.size
        if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n):
            raise ValueError(f"pair endpoints must lie in [0, {n})")
        _union(self.parent, a, b)

    def roots(self) -> np.ndarray:
        """The root (smallest index) of every node's component.

        Computed in place (the parent array becomes the roots, no second array), so
        the union-find stays at 8 bytes per node; further unions remain valid."""
        _compress(self.parent)
        return self.parent
