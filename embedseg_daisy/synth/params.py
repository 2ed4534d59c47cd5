"""Tunable constants of the synthetic EM generator, in one place.

Geometry is built in *world pixels*: in-plane pixels (12 nm) on y and x, and the
same unit on z, so a section of 29 nm is ``section_px = 29 / 12`` world pixels
thick.  Section ``s`` covers world z in ``[s * section_px, (s + 1) * section_px)``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Reference volume for scaling object counts: 64 x 512 x 512 voxels at 29/12/12 nm.
REFERENCE_SHAPE = (64, 512, 512)


@dataclass(frozen=True)
class SynthParams:
    # --- canvas -----------------------------------------------------------------
    #: Extra in-plane pixels rendered on each side so that slips and steps can be
    #: cut from real content.  Fixed (not derived from the defects) so that the same
    #: seed gives the same geometry with and without defects.
    margin_px: int = 16

    # --- calibres (radii in in-plane pixels) ------------------------------------
    dendrite_radius: tuple[float, float] = (25.0, 40.0)  # 50-80 px diameter
    axon_radius: tuple[float, float] = (4.0, 12.5)  # 8-25 px diameter
    spine_neck_radius: tuple[float, float] = (2.0, 3.0)  # 4-6 px diameter
    spine_head_radius: tuple[float, float] = (5.0, 9.0)
    bouton_radius: tuple[float, float] = (11.0, 17.0)

    # --- counts per reference volume (scaled by canvas volume) ------------------
    dendrites_per_ref: float = 9.0
    u_turns_per_ref: float = 3.0
    bundles_per_ref: float = 5.0
    glia_per_ref: float = 20.0
    spine_spacing_px: float = 45.0  # mean dendrite length between spines
    touching_spines_per_dendrite: int = 1

    # --- packing -----------------------------------------------------------------
    occupancy_cell_px: float = 3.0
    core_fraction: float = 0.6  # cores (this fraction of the radius) must not overlap
    max_conflict_fraction: float = 0.04
    target_core_fill: float = 0.42
    max_axon_attempts: int = 4000  # per reference volume
    max_consecutive_failures: int = 400  # per reference volume
    min_truncated_length_px: float = 150.0
    free_axon_fraction: float = 0.25  # the rest follow the flow field
    flow_domains_per_ref: float = 8.0

    # --- direction classes: (probability, min angle to z, max angle to z) in degrees
    orientation_classes: tuple[tuple[float, float, float], ...] = (
        (0.40, 0.0, 30.0),  # running along z, through the sections
        (0.35, 30.0, 65.0),  # oblique
        (0.25, 65.0, 90.0),  # nearly parallel to the section plane
    )

    # --- membranes ----------------------------------------------------------------
    #: two parts of one object get a membrane between them when their skeleton
    #: (geodesic) distance exceeds max(min, factor * larger radius)
    self_contact_min_px: float = 8.0
    self_contact_factor: float = 1.5
    membrane_width: int = 2  # 1: one side of each interface, 2: both sides
    #: growth into free space: pad = clip(grow_fraction * r + grow_add, 1, grow_max)
    grow_fraction: float = 0.5
    grow_add_px: float = 1.0
    grow_max_px: float = 8.0
    #: 6-connected pieces smaller than this (voxels) become membrane / boundary
    min_piece_voxels: int = 40
    min_final_piece_voxels: int = 20

    #: strength of the grey band an oblique membrane leaves in neighbouring
    #: sections' images (0: membranes only exactly on label-0 voxels)
    oblique_ghost: float = 0.3

    # --- glia ------------------------------------------------------------------------
    glia_downsample: int = 2
    glia_min_voxels: int = 3000  # smaller glia pieces are absorbed by neighbours
    absorb_iterations: int = 12

    # --- self-touch verification window (half sizes, voxels z, y, x) -------------
    touch_window_half: tuple[int, int, int] = (2, 12, 12)
    touch_max_gap: int = 2

    # --- defects ---------------------------------------------------------------------
    slip_shift_px: tuple[int, int] = (4, 10)  # |shift| range per slipped section
    step_shift_px: tuple[int, int] = (3, 7)


DEFAULT_PARAMS = SynthParams()
