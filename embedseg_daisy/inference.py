"""Blended inference for a box of the output volume (predict stage and MEA).

:func:`predict_box` runs an embedding net on every lattice patch whose output crop
touches ``box`` (see :mod:`embedseg_daisy.blending`), computes the metric-graph
affinities (Eq. 6) inside each patch's crop from that patch's embeddings, and blends
them with bump weights, per channel (a patch whose crop lacks the partner voxel gives
that edge no weight).  The background probability ``sigmoid(mask_logit)`` is blended
the same way.  :func:`predict_box_affinity` does the same for the baseline affinity net
(``sigmoid(logits)``, the edge partner only has to be inside the volume: the net sees
the context).  Edges whose partner lies outside the volume are not edges: value 0.

Block-size invariance
---------------------
The result for a voxel does not depend on the box that asked for it (bit-identical,
on one machine, device and thread count), because

* the patches are on one global lattice and a patch's input is read from global
  coordinates, so a patch's net output depends only on the patch (batches always have
  ``batch_size`` samples: the last one is padded with zero inputs; networks must treat
  samples independently: instance norm, no batch norm in training mode);
* per-patch post-processing (crop, Eq. 6, sigmoid) runs on arrays of one fixed
  shape and layout;
* blending multiplies each patch output by its *normalised* weight, which comes from
  per-volume 1-D tables (float64, global coordinates; :class:`~embedseg_daisy.blending.Lattice`),
  and adds the products into float32 accumulators **in lattice order** using plain
  element-wise multiplies and adds (no fused multiply-add, whose SIMD body and scalar
  tail could round differently), so every voxel sums the same terms in the same
  order whatever the box's size or alignment.

On CPU the per-patch work (Eq. 6 and blending) runs in single-threaded numba kernels
(``numba_kernels``): on 2 shared cores the equivalent torch operations spent most of
their time in OpenMP synchronisation whenever other processes were busy.  On CUDA it
is torch operations, and the call runs with ``cudnn.deterministic = True`` and
``cudnn.benchmark = False`` (restored afterwards) so that every worker picks the same
convolution algorithms.  Results may differ between CPU and CUDA, GPU models, CPU
instruction sets or intra-op thread counts: run all blocks of one volume alike.

Raw reading
-----------
``read_raw(roi)`` receives a ``funlib.geometry.Roi`` (voxels, in the frame of ``box``
and ``volume``: absolute when ``volume`` is a ``Roi``, relative to the volume origin
when it is a shape) and must return a float32 array of ``roi.shape`` with intensities
in [0, 1] — also where ``roi`` reaches outside the volume (input context).  The
convention is **mirror padding** without repeating the border voxel (``... 2 1 | 0 1 2
...``, numpy's ``"reflect"``), which keeps membranes continuous at the border where
zero padding would not; :func:`array_reader` does that for an in-memory array and
``embedseg_daisy.stages.predict.raw_reader`` for a zarr dataset.

CPU note: PyTorch's CPU convolution picks its slow im2col kernel for small
``N*C*D*H``; keep ``batch_size >= 2`` or route the net to oneDNN
(``embedseg_daisy.nn.cpu.fast_inference``).  The model is held by the caller (loaded
once per worker), already on ``device`` and in eval mode.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
import torch

from embedseg_daisy.blending import Box, Lattice, Patch, Vec3, context, get_lattice
from embedseg_daisy.metric_graph import DELTA_D, metric_affinities, metric_affinities_numba

ReadRaw = Callable[..., np.ndarray]

OUTPUT_PATCH: Vec3 = (16, 96, 96)
INPUT_PATCH: Vec3 = (20, 128, 128)


@dataclass
class BoxPrediction:
    """Blended predictions for one box (voxels, z y x), all float32 numpy arrays.

    ``affinities``: ``(K, *box_shape)`` in [0, 1], channel ``k`` at ``p`` = edge
    ``(p, p + offsets[k])``; 0 where the partner is outside the volume.
    ``background``: ``(*box_shape)`` blended P(background) (``None`` for affinity nets).
    ``embeddings``: ``(D, *box_shape)`` or ``None`` (only with ``return_embeddings``):
    **not blended** — each voxel takes the embedding of the lattice patch whose crop
    centre is nearest along every axis (ties: the earlier patch); embeddings of
    different patches are not comparable, so this is for viewing only.
    ``box``: ``(begin, end)`` in the caller's frame.  ``n_patches``: patches run.
    """

    affinities: np.ndarray
    background: np.ndarray | None
    offsets: tuple[Vec3, ...]
    box: Box
    embeddings: np.ndarray | None = None
    n_patches: int = 0
    profile: dict[str, float] = field(default_factory=dict)


def quantize_u8_torch(a: torch.Tensor) -> torch.Tensor:
    """:func:`quantize_u8` in torch operations, on ``a``'s device."""
    return torch.round(torch.clamp(a.detach().float(), 0.0, 1.0) * 255.0).to(torch.uint8)


def quantize_u8(a) -> np.ndarray:
    """``round(255 * a)`` as uint8 (values clipped to [0, 1] first; ties to even).

    A CUDA tensor is quantised on the device and only the bytes are copied back: the
    float32 copy would be 4x the traffic, and on a GPU that copy cost as much as the
    network (``benchmarks/predict.py``).  Both paths round identically (float32
    multiply, round half to even)."""
    if isinstance(a, torch.Tensor):
        if a.device.type != "cpu":
            return quantize_u8_torch(a).cpu().numpy()
        a = a.detach().numpy()
    a = np.asarray(a, dtype=np.float32)
    return np.rint(np.clip(a, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def array_reader(raw: np.ndarray, origin: Sequence[int] = (0, 0, 0)) -> Callable[..., np.ndarray]:
    """A ``read_raw`` over an in-memory ``(z, y, x)`` array whose first voxel sits at
    ``origin``: mirror padding outside it; uint8 is scaled by 1/255, other dtypes are
    cast to float32 as they are."""
    raw = np.asarray(raw)
    if raw.ndim != 3:
        raise ValueError(f"raw must be (z, y, x), got shape {raw.shape}")
    origin = tuple(int(o) for o in origin)

    def read(roi) -> np.ndarray:
        begin, end = _box_of(roi)
        axes = [_reflect(np.arange(b - o, e - o), n) for b, e, o, n in zip(begin, end, origin, raw.shape)]
        data = raw[np.ix_(*axes)]
        if data.dtype == np.uint8:
            return data.astype(np.float32) / np.float32(255.0)
        return data.astype(np.float32, copy=False)

    return read


def _box_of(obj) -> Box:
    if hasattr(obj, "begin") and hasattr(obj, "end"):
        return tuple(int(v) for v in obj.begin), tuple(int(v) for v in obj.end)  # type: ignore[return-value]
    if len(obj) == 3 and all(isinstance(s, slice) for s in obj):
        return tuple(int(s.start or 0) for s in obj), tuple(int(s.stop) for s in obj)  # type: ignore[return-value]
    return tuple(int(v) for v in obj[0]), tuple(int(v) for v in obj[1])  # type: ignore[return-value]


def _frame(box, volume) -> tuple[Vec3, Vec3, Box]:
    """(volume origin, volume shape, box relative to the volume origin)."""
    if hasattr(volume, "begin") and hasattr(volume, "shape"):
        origin = tuple(int(v) for v in volume.begin)
        shape = tuple(int(v) for v in volume.shape)
    else:
        shape = tuple(int(v) for v in volume)
        origin = (0, 0, 0)
    if len(shape) != 3 or len(origin) != 3:
        raise ValueError(f"volume must be 3-D (z, y, x), got {volume!r}")
    begin, end = _box_of(box)
    rel_b = tuple(b - o for b, o in zip(begin, origin))
    rel_e = tuple(e - o for e, o in zip(end, origin))
    for b, e, n in zip(rel_b, rel_e, shape):
        if not 0 <= b < e <= n:
            raise ValueError(f"box {begin}..{end} is empty or not inside the volume (origin {origin}, shape {shape})")
    return origin, shape, (rel_b, rel_e)  # type: ignore[return-value]


def _roi(begin: Sequence[int], shape: Sequence[int]):
    from funlib.geometry import Coordinate, Roi

    return Roi(Coordinate(*(int(b) for b in begin)), Coordinate(*(int(s) for s in shape)))


def _overlap(patch: Patch, out_shape: Vec3, rel_box: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (in the patch crop, in the box) of crop ∩ box (non-empty for touching patches)."""
    p_sl, b_sl = [], []
    for o, n, bb, be in zip(patch.origin, out_shape, rel_box[0], rel_box[1]):
        lo, hi = max(o, bb), min(o + n, be)
        p_sl.append(slice(lo - o, hi - o))
        b_sl.append(slice(lo - bb, hi - bb))
    return tuple(p_sl), tuple(b_sl)


@contextlib.contextmanager
def _deterministic_cudnn(device: torch.device):
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


class _Timer:
    def __init__(self, profile: dict[str, float] | None, device: torch.device):
        self.profile = profile
        self.sync = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.profile is None:
            yield
            return
        if self.sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.profile[name] = self.profile.get(name, 0.0) + time.perf_counter() - t


class _InputBatches:
    """Yields ``(patches, x)`` with ``x`` a ``(batch_size, 1, *I)`` float32 tensor on the
    device (zero inputs pad the last batch).  On CUDA the next batch is read by a
    background thread into a pinned host buffer and copied asynchronously."""

    def __init__(self, read_raw, patches, batch_size, out_shape, in_shape, origin, device, timer):
        self.read_raw = read_raw
        self.groups = [patches[i : i + batch_size] for i in range(0, len(patches), batch_size)]
        self.batch_size = batch_size
        self.out_shape, self.in_shape, self.origin = out_shape, in_shape, origin
        self.device = device
        self.timer = timer
        self.cuda = device.type == "cuda"

    def _fill(self, buf: torch.Tensor, group: list[Patch]) -> None:
        view = buf.numpy()
        for j, patch in enumerate(group):
            begin, _ = patch.input_box(self.out_shape, self.in_shape)
            data = self.read_raw(_roi([b + o for b, o in zip(begin, self.origin)], self.in_shape))
            data = np.asarray(data)
            if data.shape != tuple(self.in_shape):
                raise ValueError(f"read_raw returned shape {data.shape}, expected {tuple(self.in_shape)}")
            view[j, 0] = data
        if len(group) < self.batch_size:
            view[len(group) :] = 0.0

    def __iter__(self):
        shape = (self.batch_size, 1) + tuple(self.in_shape)
        if not self.cuda:
            buf = torch.empty(shape, dtype=torch.float32)
            for group in self.groups:
                with self.timer("read"):
                    self._fill(buf, group)
                yield group, buf
            return
        bufs = [torch.empty(shape, dtype=torch.float32).pin_memory() for _ in range(2)]
        copied: list[torch.cuda.Event | None] = [None, None]

        def job(k: int, group):
            if copied[k] is not None:
                copied[k].synchronize()  # the previous async copy out of bufs[k] is done
            self._fill(bufs[k], group)

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(job, 0, self.groups[0]) if self.groups else None
            for n, group in enumerate(self.groups):
                k = n % 2
                with self.timer("read"):
                    pending.result()
                if n + 1 < len(self.groups):
                    # bufs[1 - k] was last copied for batch n - 1, recorded below
                    pending = pool.submit(job, 1 - k, self.groups[n + 1])
                x = bufs[k].to(self.device, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()
                copied[k] = ev
                yield group, x


def _forward(model, x: torch.Tensor, amp: bool):
    if amp:
        with torch.autocast(device_type=x.device.type, dtype=torch.float16):
            return model(x)
    return model(x)


def _crop(t: torch.Tensor, ctx: Vec3, out_shape: Vec3, in_shape: Vec3) -> torch.Tensor:
    """Crop a net output ``(..., Z, Y, X)`` (input-sized, or already crop-sized) to the crop."""
    spatial = tuple(t.shape[-3:])
    if spatial == tuple(out_shape):
        return t
    if spatial != tuple(in_shape):
        raise ValueError(f"net output spatial shape {spatial} is neither the input {in_shape} nor the crop {out_shape}")
    return t[..., ctx[0] : ctx[0] + out_shape[0], ctx[1] : ctx[1] + out_shape[1], ctx[2] : ctx[2] + out_shape[2]]


def _check_model_device(model, device: torch.device) -> None:
    try:
        p = next(model.parameters())
    except (StopIteration, AttributeError):
        return
    if p.device.type != device.type:
        raise ValueError(f"model is on {p.device} but device={device}; move it once when loading it")


class _Blender:
    """Float32 accumulators over the box; per-axis normalised weights uploaded once.

    The weight of patch ``(iz, iy, ix)`` for channel ``c`` is the product of three 1-D
    float32 vectors taken from the lattice's global tables, so it does not depend on the
    box; it is applied as ``((y * wz) * wy) * wx`` and added with a separate ``add``
    (never a fused multiply-add), so every element rounds the same way in any layout.
    With ``numba`` (CPU) a single-threaded numba kernel does this (no OpenMP
    synchronisation per operation); otherwise (CUDA) torch operations."""

    def __init__(
        self,
        lattice: Lattice,
        rel_box: Box,
        shifts: list[Vec3],
        partner_in_crop: bool,
        device,
        with_background: bool,
        numba: bool,
    ):
        self.lattice = lattice
        self.rel_box = rel_box
        self.out_shape = lattice.output_patch
        self.numba = numba
        box_shape = tuple(e - b for b, e in zip(*rel_box))
        self.affs = torch.zeros((len(shifts),) + box_shape, dtype=torch.float32, device=device)
        self.background = torch.zeros(box_shape, dtype=torch.float32, device=device) if with_background else None
        self.first = []  # first touching origin index per axis
        self.aff_np: list[np.ndarray] = []  # per axis (n_a, K, O_a) float32
        self.mask_np: list[np.ndarray] = []  # per axis (n_a, 1, O_a) float32
        self.aff_w: list[torch.Tensor] = []  # per axis (n_a, K, ...) broadcastable over (K, Oz, Oy, Ox)
        self.mask_w: list[torch.Tensor] = []  # per axis (n_a, ...) broadcastable over (Oz, Oy, Ox)
        for a in range(3):
            r = lattice.axis_range_touching(a, rel_box[0][a], rel_box[1][a])
            self.first.append(r.start)
            rows = slice(r.start, r.stop)
            table = np.stack([lattice.axis_weights(a, s[a], partner_in_crop)[rows] for s in shifts], axis=1)
            mask = lattice.axis_weights(a, 0, partner_in_crop)[rows][:, None, :]
            self.aff_np.append(np.ascontiguousarray(table, dtype=np.float32))
            self.mask_np.append(np.ascontiguousarray(mask, dtype=np.float32))
            if not self.numba:
                view = [1, 1, 1]
                view[a] = self.out_shape[a]
                self.aff_w.append(_to_device(self.aff_np[a].reshape((len(r), len(shifts)) + tuple(view)), device))
                self.mask_w.append(_to_device(self.mask_np[a].reshape((len(r),) + tuple(view)), device))
        self._contrib: torch.Tensor | None = None

    def add(self, patch: Patch, affs: torch.Tensor, background: torch.Tensor | None) -> None:
        """Add one patch's crop-sized outputs (``(K, *O)`` and ``(*O)``) in place."""
        p_sl, b_sl = _overlap(patch, self.out_shape, self.rel_box)
        i = [patch.index[a] - self.first[a] for a in range(3)]
        if self.numba:
            p0 = np.array([s.start for s in p_sl], np.int64)
            b0 = np.array([s.start for s in b_sl], np.int64)
            n = np.array([s.stop - s.start for s in p_sl], np.int64)
            w = [self.aff_np[a][i[a]] for a in range(3)]
            _blend_kernel(self.affs.numpy(), affs.numpy(), w[0], w[1], w[2], p0, b0, n)
            if background is not None and self.background is not None:
                w = [self.mask_np[a][i[a]] for a in range(3)]
                _blend_kernel(self.background.numpy()[None], background.numpy()[None], w[0], w[1], w[2], p0, b0, n)
            return
        n = tuple(s.stop - s.start for s in p_sl)
        if self._contrib is None:  # scratch reused by every patch
            shape = (self.affs.shape[0],) + tuple(self.out_shape)
            self._contrib = torch.empty(shape, dtype=torch.float32, device=self.affs.device)
        wz, wy, wx = (self.aff_w[a][i[a]] for a in range(3))
        contrib = self._contrib[:, : n[0], : n[1], : n[2]]
        torch.mul(affs[(slice(None),) + p_sl], wz[:, p_sl[0]], out=contrib)
        contrib.mul_(wy[:, :, p_sl[1]]).mul_(wx[:, :, :, p_sl[2]])
        self.affs[(slice(None),) + b_sl].add_(contrib)
        if background is not None and self.background is not None:
            wz, wy, wx = (self.mask_w[a][i[a]] for a in range(3))
            contrib = self._contrib[0, : n[0], : n[1], : n[2]]
            torch.mul(background[p_sl], wz[p_sl[0]], out=contrib)
            contrib.mul_(wy[:, p_sl[1]]).mul_(wx[:, :, p_sl[2]])
            self.background[b_sl].add_(contrib)


@numba.njit(cache=True, boundscheck=False)
def _blend_kernel(acc, y, wz, wy, wx, p0, b0, n):  # pragma: no cover - compiled
    """``acc[c, b0 + q] += ((y[c, p0 + q] * wz[c, .]) * wy[c, .]) * wx[c, .]`` over the
    overlap ``q < n``: the same rounding as the torch path (no fused multiply-add)."""
    for c in range(y.shape[0]):
        for z in range(n[0]):
            fz = wz[c, p0[0] + z]
            for yy in range(n[1]):
                fy = wy[c, p0[1] + yy]
                src = y[c, p0[0] + z, p0[1] + yy]
                dst = acc[c, b0[0] + z, b0[1] + yy]
                for x in range(n[2]):
                    t = src[p0[2] + x] * fz
                    t = t * fy
                    t = t * wx[c, p0[2] + x]
                    dst[b0[2] + x] += t


def _to_device(table: np.ndarray, device) -> torch.Tensor:
    """float64 table -> float32 tensor on ``device`` (one copy per call, not per patch)."""
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)).to(device)


def _run(
    kind: str,
    model,
    read_raw,
    box,
    volume_shape,
    offsets,
    *,
    output_patch,
    input_patch,
    batch_size,
    device,
    delta_d,
    stride,
    amp,
    return_embeddings,
    profile,
    numba_kernels,
    quantize=False,
) -> BoxPrediction:
    total_t0 = time.perf_counter()
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if numba_kernels is None:
        numba_kernels = device.type == "cpu"
    if numba_kernels and device.type != "cpu":
        raise ValueError("numba_kernels needs device='cpu'")
    offsets = [tuple(int(v) for v in o) for o in offsets]
    if not offsets:
        raise ValueError("need at least one offset")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_shape = tuple(int(v) for v in output_patch)
    in_shape = tuple(int(v) for v in input_patch)
    ctx = context(out_shape, in_shape)
    origin, vol_shape, rel_box = _frame(box, volume_shape)
    lattice = get_lattice(vol_shape, out_shape, stride)
    patches = lattice.patches_touching(rel_box)
    partner_in_crop = kind == "embedding"
    for a in range(3):  # builds (and validates coverage of) every table up front
        for s in sorted({o[a] for o in offsets} | {0}):
            lattice.axis_weights(a, s, partner_in_crop)
    if amp is None:
        amp = device.type == "cuda"
    _check_model_device(model, device)
    timer = _Timer(profile, device)
    blender = _Blender(
        lattice, rel_box, offsets, partner_in_crop, device, with_background=kind == "embedding", numba=numba_kernels
    )
    box_shape = tuple(e - b for b, e in zip(*rel_box))
    emb_out: torch.Tensor | None = None
    emb_buf = scratch = aff_buf = bg_buf = None  # per-call buffers, allocated at the first patch

    with _deterministic_cudnn(device), torch.inference_mode():
        for group, x in _InputBatches(read_raw, patches, batch_size, out_shape, in_shape, origin, device, timer):
            with timer("forward"):
                out = _forward(model, x, bool(amp))
            for j, patch in enumerate(group):
                if kind == "embedding":
                    with timer("affinity"):
                        crop = _crop(out.embedding[j], ctx, out_shape, in_shape)
                        if emb_buf is None:  # buffers reused by every patch of the call
                            emb_buf = torch.empty(crop.shape, dtype=torch.float32, device=device)
                            scratch = torch.empty_like(emb_buf)
                            aff_buf = torch.empty((len(offsets),) + out_shape, dtype=torch.float32, device=device)
                            bg_buf = torch.empty(out_shape, dtype=torch.float32, device=device)
                        # a contiguous copy: identical layout for every patch and batch slot
                        emb = emb_buf.copy_(crop)
                        if numba_kernels:
                            metric_affinities_numba(emb.numpy(), offsets, delta_d, out=aff_buf.numpy())
                            affs = aff_buf
                        else:
                            affs, _ = metric_affinities(emb, offsets, delta_d, out=aff_buf, scratch=scratch)
                        bg = torch.sigmoid(_crop(out.mask_logit[j, 0], ctx, out_shape, in_shape).float(), out=bg_buf)
                    with timer("blend"):
                        blender.add(patch, affs, bg)
                        if return_embeddings:
                            owned = lattice.owned_box(patch)
                            if owned is not None:
                                if emb_out is None:
                                    emb_out = torch.zeros(
                                        (emb.shape[0],) + box_shape, dtype=torch.float32, device=device
                                    )
                                lo = [max(a, b) for a, b in zip(owned[0], rel_box[0])]
                                hi = [min(a, b) for a, b in zip(owned[1], rel_box[1])]
                                if all(l < h for l, h in zip(lo, hi)):
                                    src = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, patch.origin))
                                    dst = tuple(slice(l - b, h - b) for l, h, b in zip(lo, hi, rel_box[0]))
                                    emb_out[(slice(None),) + dst] = emb[(slice(None),) + src]
                else:
                    with timer("affinity"):
                        logits = _crop(out.logits[j], ctx, out_shape, in_shape).float()
                        if logits.shape[0] != len(offsets):
                            raise ValueError(
                                f"affinity net has {logits.shape[0]} channels but {len(offsets)} offsets were given"
                            )
                        if aff_buf is None:
                            aff_buf = torch.empty((len(offsets),) + out_shape, dtype=torch.float32, device=device)
                        affs = torch.sigmoid(logits, out=aff_buf)
                    with timer("blend"):
                        blender.add(patch, affs, None)
        with timer("to_host"):
            to_host = quantize_u8 if quantize else (lambda t: t.cpu().numpy())
            affs_np = to_host(blender.affs)
            bg_np = to_host(blender.background) if blender.background is not None else None
            emb_np = emb_out.cpu().numpy() if emb_out is not None else None
    if profile is not None:
        profile["total"] = profile.get("total", 0.0) + time.perf_counter() - total_t0
    abs_box = (
        tuple(b + o for b, o in zip(rel_box[0], origin)),
        tuple(e + o for e, o in zip(rel_box[1], origin)),
    )
    return BoxPrediction(
        affinities=affs_np,
        background=bg_np,
        offsets=tuple(offsets),  # type: ignore[arg-type]
        box=abs_box,  # type: ignore[arg-type]
        embeddings=emb_np,
        n_patches=len(patches),
        profile=dict(profile) if profile is not None else {},
    )


def predict_box(
    model,
    read_raw: ReadRaw,
    box,
    volume_shape,
    offsets: Sequence[Sequence[int]],
    *,
    output_patch: Sequence[int] = OUTPUT_PATCH,
    input_patch: Sequence[int] = INPUT_PATCH,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    delta_d: float = DELTA_D,
    stride: Sequence[int] | None = None,
    amp: bool | None = None,
    return_embeddings: bool = False,
    profile: dict[str, float] | None = None,
    numba_kernels: bool | None = None,
    quantize: bool = False,
) -> BoxPrediction:
    """Blended metric-graph affinities and background probability for ``box``.

    ``model(x)`` (``x``: ``(N, 1, *input_patch)`` float32 in [0, 1]) returns
    ``.embedding`` ``(N, D, ...)`` and ``.mask_logit`` ``(N, 1, ...)`` (log-odds of
    background), spatially input-sized (cropped here) or crop-sized.
    ``box``: ``(begin, end)``, 3 slices or a ``Roi``, voxels, inside ``volume_shape``
    (a shape, origin 0, or a ``Roi``: then ``box`` and ``read_raw``'s ROIs are absolute).
    ``offsets``: ``(K, 3)`` edge offsets (z, y, x).  ``stride`` defaults to half the
    crop.  ``amp``: float16 autocast for the network forward (outputs are upcast to
    float32 before Eq. 6); default on for CUDA, off on CPU.  ``profile``: a dict that
    receives seconds per phase (read, forward, affinity, blend, to_host, total).
    ``numba_kernels``: per-patch work (Eq. 6, blending) in single-threaded numba
    kernels; default on for CPU (robust to busy cores), must be off on CUDA; off on
    CPU runs the torch operations of the CUDA path.  ``quantize``: return ``affinities``
    and ``background`` as :func:`quantize_u8` bytes, quantised where they were blended
    (on a GPU that saves copying float32 back).

    Returns a :class:`BoxPrediction` with ``affinities`` ``(K, *box_shape)`` float32,
    ``background`` ``(*box_shape)`` float32 (uint8 with ``quantize``) and, with ``return_embeddings``,
    ``embeddings`` ``(D, *box_shape)`` float32 (from the nearest patch, not blended).
    """
    return _run(
        "embedding", model, read_raw, box, volume_shape, offsets,
        output_patch=output_patch, input_patch=input_patch, batch_size=batch_size, device=device,
        delta_d=delta_d, stride=stride, amp=amp, return_embeddings=return_embeddings, profile=profile,
        numba_kernels=numba_kernels, quantize=quantize,
    )


def predict_box_affinity(
    model,
    read_raw: ReadRaw,
    box,
    volume_shape,
    offsets: Sequence[Sequence[int]] | None = None,
    *,
    output_patch: Sequence[int] = OUTPUT_PATCH,
    input_patch: Sequence[int] = INPUT_PATCH,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    stride: Sequence[int] | None = None,
    amp: bool | None = None,
    profile: dict[str, float] | None = None,
    numba_kernels: bool | None = None,
    delta_d: float | None = None,
    quantize: bool = False,
) -> BoxPrediction:
    """Baseline affinity net: blended ``sigmoid(model(x).logits)`` for ``box``.

    ``offsets`` are the net's output channels in order (default: ``model.spec.offsets``
    when the model carries a spec).  Each patch contributes every edge of its crop whose
    partner is inside the volume (the net sees the context); edges leaving the volume
    are 0.  ``delta_d`` is ignored (accepted for a uniform call); the other keywords are
    those of :func:`predict_box`.  Returns a
    :class:`BoxPrediction` with ``affinities`` ``(K, *box_shape)`` float32 and
    ``background = None``.
    """
    if offsets is None:
        spec = getattr(model, "spec", None)
        offsets = getattr(spec, "offsets", None)
        if not offsets:
            raise ValueError("offsets not given and the model carries no spec.offsets")
    return _run(
        "affinity", model, read_raw, box, volume_shape, offsets,
        output_patch=output_patch, input_patch=input_patch, batch_size=batch_size, device=device,
        delta_d=DELTA_D, stride=stride, amp=amp, return_embeddings=False, profile=profile,
        numba_kernels=numba_kernels, quantize=quantize,
    )
