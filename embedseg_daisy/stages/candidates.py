"""Candidates stage: stitch contact pieces into contacts and pick self-touch candidates.

Not a block grid: work is split into segment-pair shards (every piece, link and face
edge of a pair lands in the same shard), one daisy block per shard, so no worker
holds more than its shard's contacts.
"""

from __future__ import annotations

import numpy as np
from funlib.geometry import Roi

from ..candidates import self_touch_candidates
from ..contacts import EDGE_PIECE_DTYPE, LINK_DTYPE, PIECE_DTYPE, stitch_contacts
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import GraphStage, dataset


def _records(cols: dict, dtype: np.dtype, mapping: dict[str, str]) -> np.ndarray:
    n = len(next(iter(cols.values()))) if cols else 0
    out = np.zeros(n, dtype)
    for field, column in mapping.items():
        out[field] = np.asarray(cols[column], dtype=out.dtype[field]) if n else out[field]
    return out


def segment_sizes(store, graph: str, segments: np.ndarray, chunk: int = 5000) -> dict[int, int]:
    """Voxel counts of ``segments`` of ``graph``: the sizes of their fragments (from the
    fragments stage) summed through the fragment -> segment table (from relabel)."""
    segments = np.unique(np.asarray(segments, np.int64))
    frag_parts, seg_parts = [], []
    for i in range(0, len(segments), chunk):
        members = store.find_arrays(
            "fragment_segments", {"graph": graph, "segment": {"in": segments[i : i + chunk].tolist()}},
            fields=["fragment", "segment"],
        )
        frag_parts.append(members["fragment"])
        seg_parts.append(members["segment"])
    frags, owner = np.concatenate(frag_parts or [np.zeros(0, np.int64)]), np.concatenate(seg_parts or [np.zeros(0, np.int64)])
    ids_parts, size_parts = [], []
    for j in range(0, len(frags), chunk):
        rows = store.find_arrays("fragments", {"graph": graph, "id": {"in": frags[j : j + chunk].tolist()}}, fields=["id", "size"])
        ids_parts.append(rows["id"])
        size_parts.append(rows["size"])
    ids, sizes = np.concatenate(ids_parts or [np.zeros(0, np.int64)]), np.concatenate(size_parts or [np.zeros(0, np.int64)])
    order = np.argsort(frags)
    seg_of = owner[order][np.searchsorted(frags[order], ids)]
    index = np.searchsorted(segments, seg_of)
    totals = np.bincount(index, weights=sizes, minlength=len(segments)).astype(np.int64)
    present = np.isin(segments, owner)
    return dict(zip(segments[present].tolist(), totals[present].tolist()))


class Candidates(GraphStage):
    name = "candidates"
    section = "contacts"
    kind = "shards"

    @property
    def write_total_roi(self) -> Roi:
        return Roi((0, 0, 0), (1, 1, self.cfg.contacts.shards))

    @property
    def block_shape(self):
        return (1, 1, 1)

    def setup(self) -> None:
        from ..store import open_store

        self.store = open_store(self.cfg)

    def process(self, block: BlockInfo):
        shard = int(block.index[2])
        name = dataset(self.graph, "segmentation")
        where = {"segmentation": name, "shard": shard}
        pieces = _records(
            self.store.find_columns(
                "contact_pieces", where, fields=["piece", "s1", "s2", "size", "sum_z2", "sum_y2", "sum_x2", "aff_sum"]
            ),
            PIECE_DTYPE,
            {
                "piece_id": "piece",
                "seg_a": "s1",
                "seg_b": "s2",
                "size": "size",
                "sum_z2": "sum_z2",
                "sum_y2": "sum_y2",
                "sum_x2": "sum_x2",
                "aff_sum": "aff_sum",
            },
        )
        links = _records(
            self.store.find_columns("contact_links", where, fields=["piece", "edge", "s1", "s2"]),
            LINK_DTYPE,
            {"piece_id": "piece", "edge_id": "edge", "seg_a": "s1", "seg_b": "s2"},
        )
        edges = _records(
            self.store.find_columns("contact_edges", where, fields=["edge", "piece", "s1", "s2"]),
            EDGE_PIECE_DTYPE,
            {"edge_id": "edge", "piece_id": "piece", "seg_a": "s1", "seg_b": "s2"},
        )
        contacts = stitch_contacts(pieces, links, edges)
        origin = np.asarray(self.run.volume_roi.begin, np.float64)
        n = len(contacts)
        self.store.put(
            "contacts",
            {
                "segmentation": [name] * n,
                "contact": contacts["contact_id"].astype(np.int64),
                "shard": [shard] * n,
                "s1": contacts["seg_a"].astype(np.int64),
                "s2": contacts["seg_b"].astype(np.int64),
                "size": contacts["size"].astype(np.int64),
                "centroid": [
                    [float(z) + origin[0], float(y) + origin[1], float(x) + origin[2]]
                    for z, y, x in zip(contacts["z"], contacts["y"], contacts["x"])
                ],
                "score": contacts["score"].astype(np.float64),
            },
            replace_where=where,
        )
        cands = self_touch_candidates(contacts, theta=self.cfg.contacts.theta_self_touch)
        min_size = self.cfg.contacts.min_segment_size_vox
        if min_size > 0 and len(cands):
            sizes = segment_sizes(self.store, self.graph, np.union1d(cands["seg_a"], cands["seg_b"]))
            big_a = np.array([sizes.get(int(s), 0) >= min_size for s in cands["seg_a"]], bool)
            big_b = np.array([sizes.get(int(s), 0) >= min_size for s in cands["seg_b"]], bool)
            cands = cands[big_a & big_b]
        # a re-run shard must not reopen candidates that MEA already decided
        decided = {
            (r["s1"], r["s2"])
            for r in self.store.find(
                "candidates", {"segmentation": name, "status": {"ne": "pending"}}, fields=["s1", "s2"]
            )
        }
        rows = []
        for c in cands:
            key = (int(c["seg_a"]), int(c["seg_b"]))
            if key in decided:
                continue
            rows.append(
                {
                    "segmentation": name,
                    "s1": key[0],
                    "s2": key[1],
                    "centroid": [float(c["z"]) + origin[0], float(c["y"]) + origin[1], float(c["x"]) + origin[2]],
                    "score": float(c["score"]),
                    "n_contacts": int(c["n_contacts"]),
                    "status": "pending",
                    "lease_owner": "",
                    "lease_expires": 0.0,
                    "attempts": 0,
                }
            )
        if rows:
            self.store.put("candidates", rows)
        return {}


def stages(run: RunContext, graph: str) -> list[Stage]:
    return [Candidates(run, graph)]
