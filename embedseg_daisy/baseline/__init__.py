"""The paper's baseline postprocessing (section 2.4, Fig. S10).

Zlateski-Seung watershed fragments from nearest-neighbour affinities (waterz's
steepest-ascent watershed + size-dependent single linkage + dust removal), then
mean-affinity agglomeration, either on a whole volume through waterz or on a
fragment graph (blockwise pipeline).  Affinities follow our convention, which is
also waterz's: channel c at p is the edge to the voxel one step behind along axis c
(offsets (-1,0,0), (0,-1,0), (0,0,-1)).
"""

from .agglomeration import (
    MergeTree,
    affinity_to_cost,
    cost_to_affinity,
    fragment_graph_nn,
    hierarchical_mean_affinity,
    mean_affinity_agglomeration,
    mean_affinity_agglomeration_graph,
    mean_affinity_agglomeration_graph_thresholds,
    mean_affinity_merge_tree,
)
from .watershed import watershed_fragments, waterz_basins

__all__ = [
    "MergeTree",
    "affinity_to_cost",
    "cost_to_affinity",
    "fragment_graph_nn",
    "hierarchical_mean_affinity",
    "mean_affinity_agglomeration",
    "mean_affinity_agglomeration_graph",
    "mean_affinity_agglomeration_graph_thresholds",
    "mean_affinity_merge_tree",
    "watershed_fragments",
    "waterz_basins",
]
