"""Synthetic serial-section EM volumes with dense, honest ground truth.

``python -m embedseg_daisy.synth OUT.zarr --shape Z Y X --seed N`` writes ``raw``
(uint8) and ``labels`` (uint64, 0 = boundary) datasets.

Modules, one job each: ``params`` (constants), ``curves`` and ``flow``
(skeleton paths), ``packing`` (occupancy), ``neurites`` (object geometry),
``rasterize`` (slab projection, membranes), ``glia``, ``components`` (6-connected
relabelling), ``render`` (EM appearance), ``defects``, ``touches`` (self-touch
verification), ``volume`` (the pipeline), ``io``, ``preview``.
"""

from .params import DEFAULT_PARAMS, SynthParams
from .volume import SynthVolume, generate_volume


def write_volume(*args, **kwargs):
    """See :func:`embedseg_daisy.synth.io.write_volume` (imported lazily: generating
    needs only numpy, scipy and numba; writing needs zarr and funlib.persistence)."""
    from .io import write_volume as _write

    return _write(*args, **kwargs)


def read_volume(*args, **kwargs):
    """See :func:`embedseg_daisy.synth.io.read_volume`."""
    from .io import read_volume as _read

    return _read(*args, **kwargs)

__all__ = ["DEFAULT_PARAMS", "SynthParams", "SynthVolume", "generate_volume", "read_volume", "write_volume"]
