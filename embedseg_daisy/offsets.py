"""Edge offsets in voxels, (z, y, x).

An affinity channel ``k`` stored at voxel ``p`` describes the edge
``(p, p + offsets[k])`` (mwatershed's convention).  The paper writes offsets
as (x, y, z); the tuples here are already reordered.
"""

from __future__ import annotations

Offset = tuple[int, int, int]

#: Fig. S11: the three nearest-neighbour edges, attractive in the Mutex Watershed.
PAPER_ATTRACTIVE: tuple[Offset, ...] = ((0, 0, -1), (0, -1, 0), (-1, 0, 0))

#: Fig. S11: nine longer-range edges, repulsive in the Mutex Watershed.  (-2, 0, 0)
#: is drawn on the nearest-neighbour row of the figure but the text counts
#: 3 attractive + 9 repulsive, so it is repulsive here.
PAPER_REPULSIVE: tuple[Offset, ...] = (
    (-2, 0, 0),
    (0, 0, -5),
    (0, -5, 0),
    (0, -5, -5),
    (0, 5, -5),
    (-1, 0, -5),
    (-1, -5, 0),
    (1, 0, -5),
    (1, -5, 0),
)

#: Baseline affinity net, nearest-neighbour channels (Fig. S6), z, y, x order.
BASELINE_NEAREST: tuple[Offset, ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))

#: Baseline long-range auxiliary channels at 12 nm (Fig. S6 with x, y halved).
BASELINE_LONG_RANGE: tuple[Offset, ...] = (
    (0, 0, -2),
    (0, 0, -4),
    (0, 0, -12),
    (0, -2, 0),
    (0, -4, 0),
    (0, -12, 0),
    (-2, 0, 0),
    (-3, 0, 0),
    (-4, 0, 0),
)


def max_reach(offsets) -> tuple[int, int, int]:
    """Largest absolute offset per axis: the context an edge computation needs."""
    reach = [0, 0, 0]
    for off in offsets:
        for axis in range(3):
            reach[axis] = max(reach[axis], abs(int(off[axis])))
    return tuple(reach)  # type: ignore[return-value]
