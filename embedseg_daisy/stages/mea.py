"""Mean-embedding agglomeration stage (GPU workers, section 2.3).

Candidates are irregular in space, so this is not a block grid: each daisy "block" is
a worker slot that drains the store's candidate queue.  A worker leases a batch of
pending candidates (atomic claim with an expiry, so a dead worker's candidates return
to the queue), runs the embedding net on a patch centred on each candidate's best
contact, compares the mean embeddings of the two segments inside the central focal
window, and records the decision only if it still holds the lease: every candidate is
decided exactly once.  A slot finishes when no candidate is pending or leased.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..mea import mea_decision, patch_box_around
from ..pipeline.faults import fault_point
from ..pipeline.stage import BlockInfo, RunContext, Stage
from .common import GraphStage, dataset
from .predict import raw_reader


class MEA(GraphStage):
    name = "mea"
    section = "mea"
    kind = "leases"
    gpu = True

    @property
    def write_total_roi(self) -> Roi:
        return Roi((0, 0, 0), (1, 1, self.cfg.mea.workers))

    @property
    def block_shape(self):
        return (1, 1, 1)

    @property
    def segmentation_name(self) -> str:
        return dataset(self.graph, "segmentation")

    def setup(self) -> None:
        import torch

        from ..nn.checkpoint import load_checkpoint
        from ..store import open_store

        device = self.cfg.mea.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.spec = load_checkpoint(self.cfg.predict.checkpoint, device=device, expected_kind="embedding")
        if device == "cpu":
            from ..nn.cpu import fast_inference

            self.model = fast_inference(self.model)
        self.store = open_store(self.cfg)
        self.raw = self.run.raw
        self.read_raw = raw_reader(self.raw)
        self.seg = self.run.open_output(self.segmentation_name)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    def decide(self, candidate: dict) -> dict:
        """Run the net around one candidate and decide (pure, no store writes)."""
        import torch

        from ..nn.rsunet import crop_center

        raw_roi = self.raw.roi
        centroid = np.asarray(candidate["centroid"], np.float64) - np.asarray(raw_roi.begin, np.float64)
        boxes = patch_box_around(
            centroid,
            tuple(self.spec.input_shape),
            tuple(raw_roi.shape),
            output_shape=tuple(self.spec.output_crop),
            focal_shape=tuple(self.cfg.mea.focal_window_vox),
        )
        (ib, ie), (ob, oe) = boxes.input_box, boxes.output_box
        origin = Coordinate(raw_roi.begin)
        input_roi = Roi(origin + Coordinate(ib), Coordinate(ie) - Coordinate(ib))
        output_roi = Roi(origin + Coordinate(ob), Coordinate(oe) - Coordinate(ob))
        x = torch.from_numpy(np.ascontiguousarray(self.read_raw(input_roi)))[None, None].to(self.device)
        with torch.inference_mode():
            emb = self.model(x).embedding
        emb = crop_center(emb, tuple(output_roi.shape))[0].float()
        seg = self.seg.read(output_roi, fill_value=0)
        result = mea_decision(
            emb,
            seg,
            int(candidate["s1"]),
            int(candidate["s2"]),
            focal_box=boxes.focal_in_output,
            theta_d=self.cfg.mea.theta_d,
        )
        distance = float(result.distance)
        return {
            "distance": distance if np.isfinite(distance) else -1.0,
            "merge": int(bool(result.merge)),
            "reason": result.reason,
        }

    def process(self, block: BlockInfo):
        where = {"segmentation": self.segmentation_name}
        decided = 0
        while True:
            leased = self.store.lease(
                "candidates", where, owner=self.owner, lease_seconds=self.cfg.mea.lease_s, limit=4
            )
            if not leased:
                open_ = self.store.count("candidates", {**where, "status": {"in": ["pending", "leased"]}})
                if open_ == 0:
                    break
                time.sleep(min(5.0, self.cfg.mea.lease_s / 10))  # others hold leases; they may expire
                continue
            fault_point(self.run.run_dir, self.stage_id, block.key, "leased")
            for cand in leased:
                outcome = self.decide(cand)
                outcome.update(decided_by=self.owner, decided_at=time.time())
                key = {"segmentation": cand["segmentation"], "s1": cand["s1"], "s2": cand["s2"]}
                if self.store.complete_lease("candidates", key, owner=self.owner, values=outcome):
                    decided += 1
        return {}


def stages(run: RunContext, graph: str) -> list[Stage]:
    return [MEA(run, graph)]
