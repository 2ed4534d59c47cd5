"""Collections the store holds, their natural keys and field types.

One run per store: a SQLite file beside the output container, or one MongoDB
database per run.  Every collection has a natural key; writes are upserts on it,
so a re-run block rewrites its own rows instead of adding new ones.

Field types: ``int`` (signed 64-bit; ids must stay below 2**63), ``float``,
``str``, ``json`` (lists / dicts, e.g. centroids and bounding boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Collection:
    name: str
    key: tuple[str, ...]
    fields: dict[str, str]
    #: extra (non-unique) indexes, each a tuple of field names
    indexes: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    @property
    def columns(self) -> dict[str, str]:
        return dict(self.fields)

    def type_of(self, name: str) -> str:
        return self.fields[name]


def _c(name, key, fields, indexes=()):
    return Collection(name=name, key=tuple(key), fields=dict(fields), indexes=tuple(indexes))


COLLECTIONS: dict[str, Collection] = {
    c.name: c
    for c in [
        # The run: resolved config, its hash and the hash of the result-affecting part.
        _c(
            "runs",
            ["run_id"],
            {
                "run_id": "str",
                "config": "json",
                "config_hash": "str",
                "results_hash": "str",
                "created": "float",
                "updated": "float",
                "version": "str",
            },
        ),
        # The plan of each stage (written by the driver at start, read by `status`).
        _c(
            "stages",
            ["stage"],
            {
                "stage": "str",
                "total_blocks": "int",
                "block_shape": "json",
                "roi_offset": "json",
                "roi_shape": "json",
                "kind": "str",  # grid | shards | leases
                "updated": "float",
            },
        ),
        # Block completion per stage.  `block` is the grid index "z_y_x" derived from the
        # write ROI offset (never daisy's block_id).
        _c(
            "blocks",
            ["stage", "block"],
            {
                "stage": "str",
                "block": "str",
                "status": "str",  # running | done | failed
                "roi_offset": "json",  # voxels, z y x
                "roi_shape": "json",
                "worker": "int",
                "host": "str",
                "gpu": "str",
                "started": "float",
                "duration": "float",
                "attempt": "int",
                "error": "str",
            },
            indexes=[("stage", "status")],
        ),
        # Fragments of a graph ("mws" or "baseline"): id = 1 + global raster index of the
        # fragment's first voxel.
        _c(
            "fragments",
            ["graph", "id"],
            {
                "graph": "str",
                "id": "int",
                "block": "str",
                "size": "int",
                "centroid": "json",  # voxels, z y x, global frame
                "bbox": "json",  # [z0, y0, x0, z1, y1, x1), voxels
                "embedding_sum": "json",  # optional, 24 floats
                "embedding_count": "int",
                "frozen": "int",  # 1: may still merge across the block (not a final cluster)
            },
            indexes=[("graph", "block")],
        ),
        # Per-block contributions to fragment-pair edges (u < v).  Aggregated on read:
        # max of the keys, sum of the sums and counts.  Keys are MWS order keys (int63).
        _c(
            "fragment_edges",
            ["graph", "block", "u", "v"],
            {
                "graph": "str",
                "block": "str",
                "u": "int",
                "v": "int",
                "attr_key": "int",  # -1 when the pair has no attractive voxel edge
                "rep_key": "int",  # -1 when the pair has no repulsive voxel edge
                "aff_sum": "float",  # nearest-neighbour affinities, for mean affinity
                "aff_count": "int",
            },
            indexes=[("graph", "u"), ("graph", "v")],
        ),
        # Hierarchical agglomeration: node -> parent at a level (only nodes that change).
        _c(
            "lookups",
            ["graph", "level", "node"],
            {"graph": "str", "level": "int", "node": "int", "parent": "int", "region": "str"},
            indexes=[("graph", "level", "region")],
        ),
        # Merges a tile of a tiled last level committed (node -> smallest node of its tile
        # cluster, only nodes that change); their connected components become that level's lookups.
        _c(
            "tile_merges",
            ["graph", "level", "region", "node"],
            {"graph": "str", "level": "int", "region": "str", "node": "int", "parent": "int"},
            indexes=[("graph", "level", "region")],
        ),
        # Edges that travel up a level of the hierarchy, per region that produced them.
        _c(
            "level_edges",
            ["graph", "level", "region", "u", "v"],
            {
                "graph": "str",
                "level": "int",
                "region": "str",
                "u": "int",
                "v": "int",
                "attr_key": "int",
                "rep_key": "int",
                "aff_sum": "float",
                "aff_count": "int",
            },
            # (graph, level, u): a tile of a tiled last level finds the edges among its nodes
            indexes=[("graph", "level", "region"), ("graph", "level", "u")],
        ),
        # Final fragment -> segment map of a graph.
        _c(
            "fragment_segments",
            ["graph", "fragment"],
            {"graph": "str", "fragment": "int", "segment": "int", "block": "str"},
            indexes=[("graph", "segment")],
        ),
        # Contact pieces computed per block and what stitches them across block faces
        # (see embedseg_daisy.contacts).  Sums are exact integers: doubled edge-midpoint
        # coordinates and fixed-point affinities (a * 2**32), so blockwise == one block.
        # `shard` is the segment-pair shard the stitching stage reads by.
        _c(
            "contact_pieces",
            ["segmentation", "block", "piece"],
            {
                "segmentation": "str",
                "block": "str",
                "piece": "int",
                "shard": "int",
                "s1": "int",
                "s2": "int",
                "size": "int",
                "sum_z2": "int",
                "sum_y2": "int",
                "sum_x2": "int",
                "aff_sum": "int",
            },
            indexes=[("segmentation", "shard")],
        ),
        # a piece of this block touches the interface edge `edge` owned by a neighbour
        _c(
            "contact_links",
            ["segmentation", "block", "piece", "edge"],
            {"segmentation": "str", "block": "str", "piece": "int", "edge": "int", "shard": "int", "s1": "int", "s2": "int"},
            indexes=[("segmentation", "shard")],
        ),
        # interface edges of this block next to its faces, and the piece that holds each
        _c(
            "contact_edges",
            ["segmentation", "block", "edge"],
            {"segmentation": "str", "block": "str", "edge": "int", "piece": "int", "shard": "int", "s1": "int", "s2": "int"},
            indexes=[("segmentation", "shard")],
        ),
        # Stitched contacts.
        _c(
            "contacts",
            ["segmentation", "contact"],
            {
                "segmentation": "str",
                "contact": "int",
                "shard": "int",
                "s1": "int",
                "s2": "int",
                "size": "int",
                "centroid": "json",
                "score": "float",
            },
            indexes=[("segmentation", "s1", "s2")],
        ),
        # Self-touch candidates and their mean-embedding agglomeration decisions.
        _c(
            "candidates",
            ["segmentation", "s1", "s2"],
            {
                "segmentation": "str",
                "s1": "int",
                "s2": "int",
                "centroid": "json",
                "score": "float",
                "n_contacts": "int",
                "status": "str",  # pending | leased | decided
                "lease_owner": "str",
                "lease_expires": "float",
                "attempts": "int",
                "distance": "float",
                "merge": "int",
                "reason": "str",
                "decided_by": "str",
                "decided_at": "float",
            },
            indexes=[("segmentation", "status")],
        ),
        # Evaluation scores per method and threshold.
        _c(
            "scores",
            ["method", "threshold"],
            {
                "method": "str",
                "threshold": "float",
                "vi_split": "float",
                "vi_merge": "float",
                "vi_sum": "float",
                "log_base": "str",
                "adapted_rand": "float",
                "splits": "int",
                "merges": "int",
                "details": "json",
                "created": "float",
            },
        ),
    ]
}


def collection(name: str) -> Collection:
    try:
        return COLLECTIONS[name]
    except KeyError:
        raise KeyError(f"unknown store collection {name!r}; known: {sorted(COLLECTIONS)}") from None
