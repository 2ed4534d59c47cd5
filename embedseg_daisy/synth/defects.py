"""Serial-section defects: missing sections, slips and steps.

* missing section: the raw section is black (0); labels are unchanged.
* slip: one section's raw is shifted in-plane; labels are unchanged (the tissue
  is where it was, only that image is displaced).
* step: every section from ``z`` on is shifted in raw *and* labels (a real
  misalignment of the stack).

Shifts are applied by cutting each section out of a canvas that is larger than
the volume by ``margin`` pixels on every in-plane side, so shifted sections show
real content instead of padding.  A shift ``(dy, dx)`` moves the content by
``(+dy, +dx)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DefectPlan:
    missing: list[int] = field(default_factory=list)
    slips: list[dict] = field(default_factory=list)  # {"z", "shift_yx"}
    steps: list[dict] = field(default_factory=list)  # {"z", "shift_yx"}
    label_offset: np.ndarray | None = None  # (Z, 2) content shift of labels
    raw_offset: np.ndarray | None = None  # (Z, 2) content shift of raw


def _random_shift(rng, lo, hi):
    mag = rng.uniform(lo, hi)
    ang = rng.uniform(0, 2 * np.pi)
    s = np.rint([mag * np.sin(ang), mag * np.cos(ang)]).astype(int)
    if not s.any():
        s[1] = int(lo)
    return s


def plan_defects(
    rngs: dict,
    Z: int,
    margin: int,
    *,
    missing_sections: int = 0,
    slips: int = 0,
    steps: int = 0,
    slip_shift=(4, 10),
    step_shift=(3, 7),
) -> DefectPlan:
    """Choose the defects; each kind draws from its own generator (``rngs`` keys
    ``missing``, ``slips``, ``steps``) so adding one kind never moves another."""
    plan = DefectPlan()
    if missing_sections:
        if missing_sections > Z:
            raise ValueError(f"cannot make {missing_sections} missing sections in {Z} sections")
        plan.missing = sorted(int(z) for z in rngs["missing"].choice(Z, size=missing_sections, replace=False))
    label_off = np.zeros((Z, 2), dtype=int)
    if steps:
        if steps > Z - 1:
            raise ValueError(f"cannot make {steps} steps in {Z} sections")
        zs = sorted(int(z) for z in 1 + rngs["steps"].choice(Z - 1, size=steps, replace=False))
        for z in zs:
            s = _random_shift(rngs["steps"], *step_shift)
            label_off[z:] += s
    label_off = np.clip(label_off, -margin, margin)
    if steps:
        jumps = np.diff(label_off, axis=0, prepend=np.zeros((1, 2), int))
        plan.steps = [
            {"z": int(z), "shift_yx": [int(v) for v in jumps[z]]} for z in np.flatnonzero(np.any(jumps != 0, axis=1))
        ]
    raw_off = label_off.copy()
    if slips:
        if slips > Z:
            raise ValueError(f"cannot make {slips} slips in {Z} sections")
        zs = sorted(int(z) for z in rngs["slips"].choice(Z, size=slips, replace=False))
        for z in zs:
            raw_off[z] += _random_shift(rngs["slips"], *slip_shift)
        raw_off = np.clip(raw_off, -margin, margin)
        d = raw_off - label_off
        plan.slips = [{"z": int(z), "shift_yx": [int(v) for v in d[z]]} for z in zs if np.any(d[z] != 0)]
    plan.label_offset = label_off
    plan.raw_offset = raw_off
    return plan


def cut_sections(canvas: np.ndarray, offsets: np.ndarray, margin: int, shape_yx) -> np.ndarray:
    """Cut ``(Y, X)`` windows out of each canvas section, moved by ``offsets``."""
    Y, X = shape_yx
    Z = canvas.shape[0]
    out = np.empty((Z, Y, X), dtype=canvas.dtype)
    for z in range(Z):  # one slice per section, not per voxel
        oy = margin - int(offsets[z, 0])
        ox = margin - int(offsets[z, 1])
        out[z] = canvas[z, oy : oy + Y, ox : ox + X]
    return out


def blank_missing(raw: np.ndarray, missing) -> None:
    for z in missing:
        raw[z] = 0
