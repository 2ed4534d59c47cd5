"""Geometry of the synthetic neuropil: skeletons with radii (unions of balls).

A :class:`Scene` holds every neurite as branches of balls in world pixels
(z, y, x; see :mod:`.params`).  Each ball carries its object, branch, arc length
``t`` along the branch, radius, vesicle density and an in-plane ellipticity, which
the rasteriser and the membrane rule use.  Objects are packed with a coarse
occupancy grid (:mod:`.packing`) so thin objects are not swallowed by thick ones.

Object kinds: dendrites with spines (some spines loop back so that their head
touches their own shaft), U-turning axons whose arms touch, axon bundles, and
single axons with boutons.  Glia are added later, in :mod:`.glia`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .curves import (
    arc_length,
    bezier,
    inside_run,
    perpendicular_inplane,
    random_direction,
    resample_by_radius,
    smooth_noise,
    unit,
    wander_path,
)
from .flow import FlowField
from .packing import Occupancy
from .params import REFERENCE_SHAPE, SynthParams

KIND_DENDRITE = 1
KIND_AXON = 2
KIND_GLIA = 3


@dataclass
class PlannedTouch:
    obj: int
    kind: str  # "u_turn" | "spine"
    point: np.ndarray  # world pixels (z, y, x) on the canvas


@dataclass
class Scene:
    world_shape: tuple[float, float, float]  # (Zw, Yc, Xc) world pixels
    section_px: float
    margin_px: int
    ball_chunks: list = field(default_factory=list)
    mito_chunks: list = field(default_factory=list)
    branch_obj: list = field(default_factory=list)
    branch_parent: list = field(default_factory=list)
    branch_base_t: list = field(default_factory=list)
    branch_grow: list = field(default_factory=list)
    obj_kind: list = field(default_factory=lambda: [0])  # index = object id; 0 unused
    touches: list = field(default_factory=list)
    grow_fraction: float = 0.4
    grow_add_px: float = 1.0
    grow_max_px: float = 6.0

    # ---------------------------------------------------------------- building
    def new_object(self, kind: int) -> int:
        self.obj_kind.append(kind)
        return len(self.obj_kind) - 1

    def add_branch(self, obj, pts, r, t, *, parent=-1, base_t=0.0, ves=None, e2c=None, e2s=None, grow=1.0) -> int:
        b = len(self.branch_obj)
        self.branch_obj.append(obj)
        self.branch_parent.append(parent)
        self.branch_base_t.append(base_t)
        self.branch_grow.append(grow)
        n = len(pts)
        z = np.zeros(n)
        self.ball_chunks.append(
            dict(
                pts=np.asarray(pts, dtype=np.float64),
                r=np.asarray(r, dtype=np.float64),
                t=np.asarray(t, dtype=np.float64),
                branch=np.full(n, b, dtype=np.int32),
                ves=z if ves is None else np.asarray(ves, dtype=np.float64),
                e2c=z if e2c is None else np.asarray(e2c, dtype=np.float64),
                e2s=z if e2s is None else np.asarray(e2s, dtype=np.float64),
            )
        )
        return b

    def add_mito(self, obj, pts, r) -> None:
        self.mito_chunks.append(
            dict(
                pts=np.asarray(pts, dtype=np.float64),
                r=np.asarray(r, dtype=np.float64),
                obj=np.full(len(pts), obj, np.int32),
            )
        )

    # ---------------------------------------------------------------- export
    def balls(self) -> dict:
        keys = ("pts", "r", "t", "branch", "ves", "e2c", "e2s")
        if not self.ball_chunks:
            out = {k: np.zeros((0, 3) if k == "pts" else 0) for k in keys}
            out["branch"] = out["branch"].astype(np.int32)
            out["obj"] = np.zeros(0, np.int32)
            out["pad"] = np.zeros(0)
            return out
        out = {k: np.concatenate([c[k] for c in self.ball_chunks]) for k in keys}
        out["obj"] = np.asarray(self.branch_obj, dtype=np.int32)[out["branch"]]
        grow = np.asarray(self.branch_grow, dtype=np.float64)[out["branch"]]
        # how far a ball may grow into free space (pixels), see rasterize.raster_balls
        out["pad"] = grow * np.clip(self.grow_fraction * out["r"] + self.grow_add_px, 1.0, self.grow_max_px)
        return out

    def mitos(self) -> dict:
        if not self.mito_chunks:
            return dict(pts=np.zeros((0, 3)), r=np.zeros(0), obj=np.zeros(0, np.int32))
        return {k: np.concatenate([c[k] for c in self.mito_chunks]) for k in ("pts", "r", "obj")}

    @property
    def n_objects(self) -> int:
        return len(self.obj_kind) - 1

    # ---------------------------------------------------------------- boxes
    @property
    def hi(self) -> np.ndarray:
        return np.asarray(self.world_shape, dtype=float)

    def inner_lo_hi(self, pad_sections: float = 0.0, pad_px: float = 0.0):
        """The box of the final (cropped) volume, shrunk by the given pads."""
        m = self.margin_px
        lo = np.array([pad_sections * self.section_px, m + pad_px, m + pad_px])
        hi = self.hi - np.array([pad_sections * self.section_px, m + pad_px, m + pad_px])
        return lo, hi


# ======================================================================= helpers


def reference_scale(world_shape, section_px) -> float:
    """Canvas volume relative to the 64 x 512 x 512 reference (in-plane cropped)."""
    z, y, x = REFERENCE_SHAPE
    ref = z * section_px * y * x
    return float(np.prod(world_shape)) / ref


def _count(rng, expected: float, minimum: int = 0) -> int:
    """A count near ``expected`` (within +-25 %, rounded at random)."""
    x = expected * rng.uniform(0.75, 1.25)
    n = int(np.floor(x)) + int(rng.random() < x - np.floor(x))
    return max(minimum, n)


def _random_point(rng, lo, hi) -> np.ndarray:
    return lo + rng.random(3) * (hi - lo)


def _profile(rng, n, r0, rel_sd, corr, floor=0.75):
    r = r0 * (1.0 + rel_sd * smooth_noise(rng, n, 1, corr)[:, 0])
    return np.maximum(r, floor * r0)


def _ellipticity(rng, n, amp, corr):
    e = amp * smooth_noise(rng, n, 2, corr)
    e = np.clip(e, -0.25, 0.25)
    return e[:, 0], e[:, 1]


def _long_path(rng, scene: Scene, anchor, d0, corr, wander):
    diag = float(np.linalg.norm(scene.hi)) * 1.15
    return wander_path(rng, anchor, d0, diag, diag, corr_len=corr, wander=wander)


def _trim_to_canvas(scene: Scene, pts, r, keep, *arrays):
    sl = inside_run(pts, r, np.zeros(3), scene.hi, keep)
    return (pts[sl], r[sl]) + tuple(a[sl] for a in arrays)


def _trim_keep(scene: Scene, pts, r, keep, *arrays):
    """Like _trim_to_canvas, also returns the anchor's index in the trimmed run."""
    sl = inside_run(pts, r, np.zeros(3), scene.hi, keep)
    return (pts[sl], r[sl]) + tuple(a[sl] for a in arrays) + (keep - (sl.start or 0),)


# ======================================================================= builders


class NeuropilBuilder:
    """Places objects into a :class:`Scene` with a shared occupancy grid."""

    def __init__(self, rng: np.random.Generator, scene: Scene, params: SynthParams):
        self.rng = rng
        self.scene = scene
        self.p = params
        self.occ = Occupancy(scene.world_shape, params.occupancy_cell_px, params.core_fraction)
        self.scale = reference_scale(scene.world_shape, scene.section_px)
        n_dom = max(2, int(rng.poisson(params.flow_domains_per_ref * self.scale)))
        self.flow = FlowField(rng, scene.hi, n_dom, params.orientation_classes)

    # ------------------------------------------------------------ generic tube
    def _tube(self, r0, d0, *, corr, wander, anchor=None, rel_sd=0.1, ecc=0.08, boutons=False, follow=None):
        """Dense path, radii, vesicle density, ellipticity of one long tube, and
        the index of its anchor.  ``follow``: relaxation rate towards the flow
        field per pixel (None: a free path around ``d0``)."""
        rng = self.rng
        if anchor is None:
            lo, hi = self.scene.inner_lo_hi()
            anchor = _random_point(rng, lo, hi)
        if follow is None:
            pts = _long_path(rng, self.scene, anchor, d0, corr, wander)
            keep = len(pts) // 2
        else:
            diag = float(np.linalg.norm(self.scene.hi)) * 1.1
            pts, keep = self.flow.streamline(rng, anchor, d0, diag, follow=follow, wander=wander, corr=corr)
        n = len(pts)
        r = _profile(rng, n, r0, rel_sd, corr=25.0)
        ves = np.zeros(n)
        if boutons:
            t = np.arange(n, dtype=float)
            n_b = rng.poisson(n / 220.0) + 1
            for tb in rng.uniform(0, n, n_b):
                rb = rng.uniform(*self.p.bouton_radius)
                half = rb * rng.uniform(1.1, 1.6)
                u = (t - tb) / half
                bump = rb * np.sqrt(np.clip(1.0 - u * u, 0.0, None))
                r = np.maximum(r, bump)
                ves = np.maximum(ves, (np.abs(u) < 0.9).astype(float) * rng.uniform(0.6, 1.0))
        e2c, e2s = _ellipticity(rng, n, ecc, corr=40.0)
        return _trim_keep(self.scene, pts, r, keep, ves, e2c, e2s)

    def _try_add(
        self, kind, pts, r, ves, e2c, e2s, keep=None, *, obj=None, parent=-1, base_t=0.0,
        max_conflict=None, truncate=False, grow=1.0,
    ):
        """Resample, check the occupancy, and add as a new branch if it fits.

        With ``truncate`` a tube that collides keeps the collision-free run
        around its anchor (dense index ``keep``) if that run is long enough.
        """
        if len(pts) < 3:
            return None
        t_anchor = arc_length(pts)[keep] if keep is not None and 0 <= keep < len(pts) else None
        pts, r, t, ves, e2c, e2s = resample_by_radius(pts, r, ves, e2c, e2s)
        branch_next = len(self.scene.branch_obj)
        limit = self.p.max_conflict_fraction if max_conflict is None else max_conflict
        flags = self.occ.conflicts(pts, r, branch_next, parent)
        if flags.mean() > limit:
            if not truncate or t_anchor is None:
                return None
            i = int(np.argmin(np.abs(t - t_anchor)))
            if flags[i]:
                return None
            bad = np.flatnonzero(flags)
            lo = bad[bad < i]
            hi = bad[bad > i]
            sl = slice(lo[-1] + 1 if len(lo) else 0, hi[0] if len(hi) else len(t))
            if t[sl.stop - 1] - t[sl.start] < self.p.min_truncated_length_px:
                return None
            pts, r, t, ves, e2c, e2s = (a[sl] for a in (pts, r, t, ves, e2c, e2s))
        if obj is None:
            obj = self.scene.new_object(kind)
        b = self.scene.add_branch(obj, pts, r, t, parent=parent, base_t=base_t, ves=ves, e2c=e2c, e2s=e2s, grow=grow)
        assert b == branch_next
        self.occ.stamp(pts, r, b)
        return obj, b, pts, r, t

    # ------------------------------------------------------------ dendrites
    def dendrites(self) -> list:
        p, rng = self.p, self.rng
        n = _count(rng, p.dendrites_per_ref * self.scale, minimum=1)
        classes = ((0.6, 0.0, 30.0), (0.3, 30.0, 60.0), (0.1, 60.0, 80.0))
        made = []
        for _ in range(n):
            for _attempt in range(100):
                r0 = rng.uniform(*p.dendrite_radius)
                d0 = random_direction(rng, classes)
                lo, hi = self.scene.inner_lo_hi(pad_px=r0 * 0.5)
                anchor = _random_point(rng, lo, hi)
                got = self._try_add(
                    KIND_DENDRITE, *self._tube(r0, d0, corr=140.0, wander=0.25, anchor=anchor, rel_sd=0.08, ecc=0.04)
                )
                if got is not None:
                    made.append(got)
                    break
        for obj, b, pts, r, t in made:
            self._spines(obj, b, pts, r, t)
            self._mitochondria(obj, pts, r, spacing=45.0, frac=(0.2, 0.35))
        return [m[0] for m in made]

    def _frame(self, pts, i):
        j0, j1 = max(i - 2, 0), min(i + 2, len(pts) - 1)
        return unit(pts[j1] - pts[j0])

    def _spines(self, obj, b, pts, r, t):
        p, rng = self.p, self.rng
        length = t[-1] - t[0]
        n_sp = rng.poisson(length / p.spine_spacing_px)
        # touching spines first, so they find room
        n_touch = p.touching_spines_per_dendrite
        for k in range(n_touch):
            for _attempt in range(25):
                if self._touching_spine(obj, b, pts, r, t):
                    break
        for _ in range(n_sp):
            i = int(rng.integers(0, len(pts)))
            self._regular_spine(obj, b, pts, r, t, i)

    def _outward(self, tangent):
        rng = self.rng
        v = rng.standard_normal(3)
        v = v - tangent * np.dot(v, tangent)
        return unit(v)

    def _regular_spine(self, obj, b, pts, r, t, i):
        p, rng = self.p, self.rng
        T = self._frame(pts, i)
        n = self._outward(T)
        rn = rng.uniform(*p.spine_neck_radius)
        rh = rng.uniform(*p.spine_head_radius)
        neck_len = rng.uniform(8.0, 30.0)
        base = pts[i] + (r[i] - 1.5) * n
        d = unit(n + 0.3 * rng.standard_normal(3))
        path = wander_path(rng, base, d, 0.0, neck_len + 1.6 * rh, corr_len=12.0, wander=0.3)
        s = np.arange(len(path), dtype=float)
        ramp = np.clip((s - neck_len) / (0.8 * rh), 0.0, 1.0)
        ramp = ramp * ramp * (3 - 2 * ramp)
        rad = rn + (rh - rn) * ramp
        # round off the head's far end
        tail = np.clip((s[-1] - s) / rh, 0.0, 1.0)
        rad = np.minimum(rad, rh * np.sqrt(np.clip(1 - (1 - tail) ** 2, 0.05, 1.0)) + 0.5)
        z = np.zeros(len(path))
        self._try_add(KIND_DENDRITE, path, rad, z, z, z, obj=obj, parent=b, base_t=float(t[i]), grow=0.3)

    def _touching_spine(self, obj, b, pts, r, t) -> bool:
        """A spine that arches back so that its head presses on its own shaft."""
        p, rng, sc = self.p, self.rng, self.scene
        rh = rng.uniform(p.spine_head_radius[0] + 1.0, p.spine_head_radius[1])
        rn = rng.uniform(2.5, p.spine_neck_radius[1])
        i = int(rng.integers(0, len(pts)))
        shift = rng.uniform(2.2 * rh + 10.0, 2.2 * rh + 30.0) * (1 if rng.random() < 0.5 else -1)
        target_t = t[i] + shift
        if target_t < t[0] or target_t > t[-1]:
            return False
        j = int(np.argmin(np.abs(t - target_t)))
        T1, T2 = self._frame(pts, i), self._frame(pts, j)
        # the contact should be seen in-plane: prefer normals with a small z part
        n = perpendicular_inplane(rng, T1)
        n2 = unit(n - T2 * np.dot(n, T2))
        base = pts[i] + (r[i] - 1.5) * n
        head = pts[j] + (r[j] + rh - 1.5) * n2
        contact = pts[j] + r[j] * n2
        lo, hi = sc.inner_lo_hi(pad_sections=1.5, pad_px=14.0)
        if not (np.all(contact >= lo) and np.all(contact < hi) and np.all(base >= lo) and np.all(base < hi)):
            return False
        a = rh + rng.uniform(6.0, 12.0)
        path = bezier(base, base + a * n, head + a * n2, head, 200)
        # resample the Bezier densely and uniformly in arc length
        seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        s_new = np.arange(0.0, s[-1], 0.5)
        path = np.stack([np.interp(s_new, s, path[:, k]) for k in range(3)], axis=1)
        L = s_new[-1]
        ramp = np.clip((s_new - (L - 1.6 * rh)) / (0.8 * rh), 0.0, 1.0)
        ramp = ramp * ramp * (3 - 2 * ramp)
        rad = rn + (rh - rn) * ramp
        # extend a little past the head centre, towards the shaft, to round it off
        z = np.zeros(len(path))
        got = self._try_add(KIND_DENDRITE, path, rad, z, z, z, obj=obj, parent=b, base_t=float(t[i]), grow=0.3)
        if got is None:
            return False
        sc.touches.append(PlannedTouch(obj=obj, kind="spine", point=contact))
        return True

    # ------------------------------------------------------------ U-turns
    def u_turns(self) -> list:
        p, rng, sc = self.p, self.rng, self.scene
        n = _count(rng, p.u_turns_per_ref * self.scale, minimum=1)
        made = []
        for _ in range(n):
            for _attempt in range(60):
                got = self._u_turn()
                if got is not None:
                    made.append(got)
                    break
        return made

    def _u_turn(self):
        p, rng, sc = self.p, self.rng, self.scene
        r0 = rng.uniform(p.axon_radius[0] + 0.5, 9.0)
        d = random_direction(rng, p.orientation_classes)
        n = perpendicular_inplane(rng, d)
        R = r0 - 0.6  # arms overlap slightly: they must touch
        lc = max(3.0 * r0, 20.0) * rng.uniform(1.0, 2.0)  # length of the contact
        lo, hi = sc.inner_lo_hi(pad_sections=2.0, pad_px=2 * r0 + 14.0)
        if np.any(hi <= lo):
            return None
        apex = _random_point(rng, lo, hi)
        s_c = 0.5 * lc + R
        contact = apex + s_c * d
        if not (np.all(contact >= lo) and np.all(contact < hi)):
            return None
        diag = float(np.linalg.norm(sc.hi)) * 1.1
        s = np.arange(0.0, diag, 1.0)
        # common lateral wander (keeps the arms parallel), zero at the apex
        b2 = unit(np.cross(d, n))
        w = smooth_noise(rng, len(s), 2, 60.0) * 0.25
        w = np.cumsum(w, axis=0)
        w -= w[0]
        wander = w[:, :1] * n[None] + w[:, 1:] * b2[None]
        # arm -1 peels away after the contact length, turning at most 45 degrees
        rdiv = rng.uniform(30.0, 80.0)
        x = np.clip(s - lc, 0.0, None)
        g = np.where(x < rdiv, x * x / (2 * rdiv), rdiv / 2 + (x - rdiv))
        arm_p = apex[None] + s[:, None] * d[None] + R * n[None] + wander
        arm_m = apex[None] + s[:, None] * d[None] - (R + g)[:, None] * n[None] + wander
        phi = np.linspace(0.0, np.pi, max(int(np.pi * R / 0.5), 8))[1:-1]
        arc = apex[None] + R * np.cos(phi)[:, None] * n[None] - R * np.sin(phi)[:, None] * d[None]
        path = np.concatenate([arm_p[::-1], arc, arm_m])
        keep = len(arm_p) + len(arc) // 2
        rad = _profile(rng, len(path), r0, 0.06, corr=25.0, floor=0.85)
        z = np.zeros(len(path))
        e2c, e2s = _ellipticity(rng, len(path), 0.03, 40.0)
        pts, rad, e2c, e2s = _trim_to_canvas(sc, path, rad, keep, e2c, e2s)
        got = self._try_add(KIND_AXON, pts, rad, z[: len(pts)], e2c, e2s)
        if got is None:
            return None
        sc.touches.append(PlannedTouch(obj=got[0], kind="u_turn", point=contact))
        self._mitochondria(got[0], got[2], got[3], spacing=150.0, frac=(0.35, 0.5))
        return got

    # ------------------------------------------------------------ axons
    def bundles(self) -> int:
        p, rng, sc = self.p, self.rng, self.scene
        n = _count(rng, p.bundles_per_ref * self.scale)
        placed = 0
        for _ in range(n):
            d0 = random_direction(rng, p.orientation_classes)
            n1 = perpendicular_inplane(rng, d0)
            n2 = unit(np.cross(d0, n1))
            lo, hi = sc.inner_lo_hi()
            anchor = _random_point(rng, lo, hi)
            centre = _long_path(rng, sc, anchor, d0, 120.0, 0.2)
            k = int(rng.integers(4, 13))
            offs, radii = [], []
            for _try in range(200):
                if len(offs) >= k:
                    break
                ri = rng.uniform(p.axon_radius[0], 7.0)
                o = rng.standard_normal(2) * (4.0 + 3.0 * np.sqrt(k))
                if all(np.hypot(*(o - oo)) > 0.9 * (ri + rr) for oo, rr in zip(offs, radii)):
                    offs.append(o)
                    radii.append(ri)
            keep = len(centre) // 2
            for o, ri in zip(offs, radii):
                jitter = smooth_noise(rng, len(centre), 2, 50.0) * 1.0
                path = centre + (o[0] + jitter[:, :1]) * n1[None] + (o[1] + jitter[:, 1:]) * n2[None]
                rad = _profile(rng, len(path), ri, 0.1, 20.0)
                e2c, e2s = _ellipticity(rng, len(path), 0.08, 40.0)
                ves = np.zeros(len(path))
                pts, rad, ves, e2c, e2s = _trim_to_canvas(sc, path, rad, keep, ves, e2c, e2s)
                got = self._try_add(KIND_AXON, pts, rad, ves, e2c, e2s, max_conflict=0.05)
                if got is not None:
                    placed += 1
                    self._mitochondria(got[0], got[2], got[3], spacing=200.0, frac=(0.4, 0.55))
        return placed

    def _free_anchor(self, r0, tries: int = 60):
        """A random point of the inner box with no core within about ``r0``
        (None if ``tries`` draws all landed in occupied space)."""
        lo, hi = self.scene.inner_lo_hi()
        grid, cell = self.occ.grid, self.occ.cell
        k = max(int(r0 * 0.6 / cell), 0)
        for _ in range(tries):
            pt = _random_point(self.rng, lo, hi)
            c = np.floor(pt / cell).astype(int)
            sl = tuple(slice(max(ci - k, 0), ci + k + 1) for ci in c)
            if not grid[sl].any():
                return pt
        return None

    def axons(self) -> int:
        """Axons until the volume is full: anchors are drawn in free space, and a
        tube that collides keeps its collision-free run if long enough."""
        p, rng = self.p, self.rng
        placed = 0
        failures = 0
        attempt = -1
        max_attempts = max(int(p.max_axon_attempts * self.scale), 300)
        max_failures = max(int(p.max_consecutive_failures * self.scale), 100)
        for attempt in range(max_attempts):
            if self.occ.fill >= p.target_core_fill or failures >= max_failures:
                break
            u = rng.beta(1.6, 2.4)
            r0 = p.axon_radius[0] + u * (p.axon_radius[1] - p.axon_radius[0])
            boutons = rng.random() < 0.3
            anchor = self._free_anchor(r0)
            if anchor is None:
                failures += 1
                continue
            if rng.random() < p.free_axon_fraction:
                d0 = random_direction(rng, p.orientation_classes)
                tube = self._tube(
                    r0, d0, corr=rng.uniform(40.0, 120.0), wander=rng.uniform(0.15, 0.45), anchor=anchor,
                    boutons=boutons,
                )
            else:
                d0 = self.flow.direction_at(anchor, random_direction(rng, p.orientation_classes))
                tube = self._tube(
                    r0, d0, corr=rng.uniform(30.0, 80.0), wander=rng.uniform(0.1, 0.35), anchor=anchor,
                    boutons=boutons, follow=rng.uniform(0.01, 0.05),
                )
            got = self._try_add(KIND_AXON, *tube, truncate=True)
            if got is None:
                failures += 1
                continue
            failures = 0
            placed += 1
            self._mitochondria(got[0], got[2], got[3], spacing=160.0, frac=(0.35, 0.55))
        self.axon_attempts = attempt + 1
        return placed

    # ------------------------------------------------------------ organelles
    def _mitochondria(self, obj, pts, r, *, spacing, frac):
        rng = self.rng
        if len(pts) < 4:
            return
        t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        n_m = rng.poisson(t[-1] / spacing)
        for _ in range(n_m):
            L = rng.uniform(20.0, 90.0)
            t0 = rng.uniform(0.0, max(t[-1] - L, 1e-3))
            sel = (t >= t0) & (t <= t0 + L)
            if sel.sum() < 3:
                continue
            rr = r[sel]
            rm = np.clip(rng.uniform(*frac) * rr.min(), 2.0, 11.0)
            if rm > rr.min() - 1.5:
                continue
            seg_t = t[sel]
            mid, half = 0.5 * (seg_t[0] + seg_t[-1]), 0.5 * (seg_t[-1] - seg_t[0]) + 1e-6
            taper = np.sqrt(np.clip(1.0 - ((seg_t - mid) / half) ** 2, 0.15, 1.0))
            tan = unit(pts[sel][-1] - pts[sel][0])
            v = rng.standard_normal(3)
            v = unit(v - tan * np.dot(v, tan))
            off = rng.uniform(0.0, 1.0) * np.clip(rr - rm - 1.5, 0.0, None)
            cen = pts[sel] + off[:, None] * v[None]
            self.scene.add_mito(obj, cen, rm * taper)


def build_scene(rng: np.random.Generator, shape, params: SynthParams, section_px: float) -> Scene:
    """All neurites of one volume of ``shape`` (z, y, x voxels)."""
    Z, Y, X = shape
    m = params.margin_px
    scene = Scene(
        world_shape=(Z * section_px, Y + 2 * m, X + 2 * m),
        section_px=section_px,
        margin_px=m,
        grow_fraction=params.grow_fraction,
        grow_add_px=params.grow_add_px,
        grow_max_px=params.grow_max_px,
    )
    builder = NeuropilBuilder(rng, scene, params)
    builder.dendrites()
    builder.u_turns()
    builder.bundles()
    builder.axons()
    scene.core_fill = builder.occ.fill  # type: ignore[attr-defined]
    scene.axon_attempts = getattr(builder, "axon_attempts", 0)  # type: ignore[attr-defined]
    return scene
