"""``generate_volume``: geometry -> slab rasterisation -> glia -> membranes ->
EM rendering -> defects -> honest ground truth (one 6-connected piece per id)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .components import small_pieces, split_disconnected
from .defects import blank_missing, cut_sections, plan_defects
from .glia import fill_glia
from .neurites import KIND_AXON, KIND_DENDRITE, KIND_GLIA, build_scene, reference_scale
from .params import DEFAULT_PARAMS, SynthParams
from .rasterize import membranes, raster_balls, raster_mito, synapses
from .render import render
from .touches import find_self_contact, window_slices

GENERATOR_VERSION = 1
STREAMS = ("geometry", "glia", "render", "missing", "slips", "steps")


@dataclass
class SynthVolume:
    """A synthetic serial-section EM volume, arrays in (z, y, x) voxels."""

    raw: np.ndarray  # uint8
    labels: np.ndarray  # uint64, 0 = boundary / background
    self_touches: list[dict] = field(default_factory=list)  # {"id", "kind", "contact_zyx"}
    meta: dict = field(default_factory=dict)


def _streams(seed: int) -> dict:
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, children)}


def generate_volume(
    shape,
    seed: int,
    *,
    missing_sections: int = 0,
    slips: int = 0,
    steps: int = 0,
    voxel_size=(29, 12, 12),
    params: SynthParams | None = None,
    timings: dict | None = None,
    debug: dict | None = None,
) -> SynthVolume:
    """Generate a synthetic EM volume of ``shape`` (z, y, x voxels).

    Deterministic per ``seed``; geometry, glia, rendering and each defect kind
    draw from separate generators spawned from the seed, so turning defects on
    or off changes nothing else (except that steps move labels).
    ``voxel_size`` (nm, z, y, x) sets the section thickness relative to the
    in-plane pixel; y and x must be equal.  Calibres and lengths in ``params``
    are in in-plane pixels and are meant for 12 nm pixels.

    ``self_touches``: objects verified to touch themselves (two local pieces of
    one id separated only by label 0, at most ``params.touch_max_gap`` voxels,
    inside a ``params.touch_window_half`` window around ``contact_zyx``, which is
    a label-0 voxel between them).  ``timings`` (if given) receives seconds per
    stage; ``debug`` (if given) receives internals (``origin``: source object of
    every final id, ``kinds``, ``scene``).
    """
    t_start = time.perf_counter()
    p = params or DEFAULT_PARAMS
    Z, Y, X = (int(s) for s in shape)
    if min(Z, Y, X) < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    vz, vy, vx = (float(v) for v in voxel_size)
    if vy != vx:
        raise ValueError(f"in-plane voxel size must be isotropic, got {voxel_size}")
    section_px = vz / vy
    rng = _streams(seed)
    m = p.margin_px
    Yc, Xc = Y + 2 * m, X + 2 * m
    tick = {"t": time.perf_counter()}

    def lap(name):
        if timings is not None:
            now = time.perf_counter()
            timings[name] = now - tick["t"]
            tick["t"] = now

    # 1. geometry
    scene = build_scene(rng["geometry"], (Z, Y, X), p, section_px)
    balls = scene.balls()
    n_balls = len(balls["r"])
    lap("geometry")

    # 2. slab-projection rasterisation of the neurites
    part = np.full((Z, Yc, Xc), -1, dtype=np.int32)
    score = np.full((Z, Yc, Xc), np.inf, dtype=np.float32)
    raster_balls(
        np.ascontiguousarray(balls["pts"]),
        balls["r"],
        balls["pad"],
        balls["e2c"],
        balls["e2s"],
        section_px,
        score,
        part,
    )
    del score
    lap("rasterize")

    # 3. glia fill the rest
    n_glia = max(1, int(rng["glia"].poisson(p.glia_per_ref * reference_scale(scene.world_shape, section_px))))
    glia_obj = np.array([scene.new_object(KIND_GLIA) for _ in range(n_glia)], dtype=np.int32)
    glia_branch = np.arange(len(scene.branch_obj), len(scene.branch_obj) + n_glia, dtype=np.int32)
    scene.branch_obj.extend(glia_obj.tolist())
    scene.branch_parent.extend([-1] * n_glia)
    scene.branch_base_t.extend([0.0] * n_glia)
    fill_glia(rng["glia"], part, n_balls, section_px, n_glia, p)
    lap("glia")

    # part tables: balls first, then one part per glial cell
    part_obj = np.concatenate([balls["obj"], glia_obj]).astype(np.int32)
    part_branch = np.concatenate([balls["branch"], glia_branch]).astype(np.int32)
    part_t = np.concatenate([balls["t"], np.zeros(n_glia)]).astype(np.float64)
    part_r = np.concatenate([balls["r"], np.ones(n_glia)]).astype(np.float64)
    part_ves = np.concatenate([balls["ves"], np.zeros(n_glia)]).astype(np.float32)
    br_parent = np.asarray(scene.branch_parent, dtype=np.int32)
    br_base = np.asarray(scene.branch_base_t, dtype=np.float64)

    # 4. membranes (label-0 boundaries) and mitochondria
    boundary = np.zeros(part.shape, dtype=np.uint8)
    membranes(
        part, part_obj, part_branch, part_t, part_r, br_parent, br_base,
        p.self_contact_min_px, p.self_contact_factor, int(p.membrane_width), boundary,
    )
    mitos = scene.mitos()
    mito = np.zeros(part.shape, dtype=np.uint8)
    if len(mitos["r"]):
        raster_mito(np.ascontiguousarray(mitos["pts"]), mitos["r"], mitos["obj"], section_px, part, part_obj, mito)
    lab_canvas = part_obj[part]
    lab_canvas[boundary.astype(bool)] = 0
    # slivers left between membranes are drawn as membrane, not as objects
    sliver = small_pieces(lab_canvas, p.min_piece_voxels)
    boundary[sliver] = 1
    lab_canvas[sliver] = 0
    del sliver
    mito &= boundary == 0
    lap("membranes")

    # 5. EM appearance
    obj_kind = np.asarray(scene.obj_kind, dtype=np.int32)
    psd = np.zeros(part.shape, dtype=np.uint8)
    synapses(part, boundary, obj_kind[part_obj] == KIND_DENDRITE, part_ves, psd)
    raw_canvas = render(
        rng["render"], part, boundary, mito, part_obj, part_ves, obj_kind, psd=psd, oblique_ghost=p.oblique_ghost
    )
    del psd
    del part, mito
    lap("render")

    # 6. defects, cut the volume out of the canvas
    plan = plan_defects(
        rng, Z, m, missing_sections=missing_sections, slips=slips, steps=steps,
        slip_shift=p.slip_shift_px, step_shift=p.step_shift_px,
    )
    raw = cut_sections(raw_canvas, plan.raw_offset, m, (Y, X))
    labels0 = cut_sections(lab_canvas, plan.label_offset, m, (Y, X))
    del raw_canvas, lab_canvas
    blank_missing(raw, plan.missing)

    # 7. honest ground truth: one 6-connected component per id; pieces too small
    #    to be objects (cut by a step or the volume faces) become boundary
    labels0[small_pieces(labels0, p.min_final_piece_voxels)] = 0
    labels, origin = split_disconnected(labels0)
    lap("defects+components")

    # 8. self-touches that are really there
    touches = []
    seen = set()
    for pt in scene.touches:
        zf = int(np.floor(pt.point[0] / section_px))
        if not 0 <= zf < Z:
            continue
        yf = int(np.floor(pt.point[1])) - m + int(plan.label_offset[zf, 0])
        xf = int(np.floor(pt.point[2])) - m + int(plan.label_offset[zf, 1])
        center = (zf, yf, xf)
        if not (0 <= yf < Y and 0 <= xf < X):
            continue
        win = labels[window_slices(center, p.touch_window_half, labels.shape)]
        cands = [int(i) for i in np.unique(win) if i and int(origin[int(i)]) == pt.obj]
        for cid in cands:
            c = find_self_contact(labels, cid, center, p.touch_window_half, p.touch_max_gap)
            if c is not None and (cid, tuple(c)) not in seen:
                seen.add((cid, tuple(c)))
                touches.append({"id": cid, "kind": pt.kind, "contact_zyx": c})
                break
    lap("touches")

    kinds = obj_kind[origin.astype(np.int64)]
    if debug is not None:
        debug.update(origin=origin, kinds=kinds, scene=scene)
    meta = {
        "generator": "embedseg_daisy.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "shape": [Z, Y, X],
        "voxel_size": [int(v) if float(v).is_integer() else float(v) for v in voxel_size],
        "missing_sections": plan.missing,
        "slips": plan.slips,
        "steps": plan.steps,
        "n_objects": int(len(origin) - 1),
        "n_dendrite_ids": int(np.sum(kinds == KIND_DENDRITE)),
        "n_axon_ids": int(np.sum(kinds == KIND_AXON)),
        "n_glia_ids": int(np.sum(kinds == KIND_GLIA)),
        "n_planned_touches": len(scene.touches),
        "self_touch_window_half_zyx": list(p.touch_window_half),
        "self_touch_max_gap": int(p.touch_max_gap),
    }
    if timings is not None:
        timings["total"] = time.perf_counter() - t_start
    return SynthVolume(raw=raw, labels=labels, self_touches=touches, meta=meta)
