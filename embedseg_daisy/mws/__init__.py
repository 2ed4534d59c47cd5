"""Lean, exact, blockwise-composable Mutex Watershed (numba) and the mwatershed reference.

Voxel level: :func:`mutex_watershed` (plain) and :func:`mutex_watershed_region`
(region mode with freezing -> fragments refining the global MWS).  Graph level:
:func:`graph_mutex_watershed` (exact region rules) and :func:`local_region_clusters`
(local decisions, for large regions) with :func:`contract_edges` /
:func:`upward_edges` for hierarchical agglomeration.  Edge order: :mod:`embedseg_daisy.mws.keys`.  In-memory
reference of the whole blockwise scheme: :func:`blockwise_mutex_watershed`.
"""

from .blockwise import BlockwiseResult, blockwise_mutex_watershed, voxel_fragment_edges
from .graph import contract_edges, graph_mutex_watershed, local_region_clusters, upward_edges
from .keys import (
    DEFAULT_TIEBREAK,
    TIEBREAK_HASH,
    TIEBREAK_RASTER,
    TIEBREAK_TILE,
    edge_keys,
    key_priority,
)
from .reference import mwatershed_reference, signed_weights
from .voxel import RegionResult, mutex_watershed, mutex_watershed_region

__all__ = [
    "BlockwiseResult",
    "DEFAULT_TIEBREAK",
    "TIEBREAK_HASH",
    "TIEBREAK_RASTER",
    "TIEBREAK_TILE",
    "RegionResult",
    "blockwise_mutex_watershed",
    "contract_edges",
    "edge_keys",
    "graph_mutex_watershed",
    "key_priority",
    "local_region_clusters",
    "mutex_watershed",
    "mutex_watershed_region",
    "mwatershed_reference",
    "signed_weights",
    "upward_edges",
    "voxel_fragment_edges",
]
