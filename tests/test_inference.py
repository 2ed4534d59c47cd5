"""Blended inference: block-size invariance, dense reference, oracle objects, real sizes.

The networks here are small stand-ins with the interface of ``embedseg_daisy.nn``
(``.embedding`` / ``.mask_logit`` or ``.logits``, input-sized outputs)."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate, Roi
from torch import nn

from embedseg_daisy.blending import blend_log_space, bump_logits, get_lattice
from embedseg_daisy.inference import (
    BoxPrediction,
    array_reader,
    predict_box,
    predict_box_affinity,
    quantize_u8,
    quantize_u8_torch,
)
from embedseg_daisy.metric_graph import metric_affinities_np
from embedseg_daisy.offsets import BASELINE_LONG_RANGE, BASELINE_NEAREST, PAPER_ATTRACTIVE, PAPER_REPULSIVE

from test_metric_graph import check_oracle_affinities, oracle_embedding, oracle_labels

PAPER_OFFSETS = PAPER_ATTRACTIVE + PAPER_REPULSIVE


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The stand-in nets and patches are tiny: one intra-op thread is as fast, and it
    avoids OpenMP barrier stalls (10x slower runs) when the shared cores are busy."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
BASELINE_OFFSETS = BASELINE_NEAREST + BASELINE_LONG_RANGE
SMALL = dict(output_patch=(4, 16, 16), input_patch=(6, 24, 24))


class EmbeddingOutput(NamedTuple):
    embedding: torch.Tensor
    mask_logit: torch.Tensor


class AffinityOutput(NamedTuple):
    logits: torch.Tensor


class ConvEmbeddingNet(nn.Module):
    """Two 3x3x3 convolutions with instance norm (patch statistics, like the RSUNet)."""

    def __init__(self, dim: int = 24, width: int = 8, scale: float = 0.15, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv3d(1, width, 3, padding=1)
        self.norm = nn.InstanceNorm3d(width, affine=True)
        self.c2 = nn.Conv3d(width, dim + 1, 3, padding=1)
        self.dim, self.scale = dim, scale

    def forward(self, x):
        h = self.c2(torch.relu(self.norm(self.c1(x))))
        return EmbeddingOutput(self.scale * h[:, : self.dim], h[:, self.dim :])


class ConvAffinityNet(nn.Module):
    def __init__(self, channels: int, width: int = 8, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv3d(1, width, 3, padding=1)
        self.c2 = nn.Conv3d(width, channels, 3, padding=1)

    def forward(self, x):
        return AffinityOutput(self.c2(torch.relu(self.c1(4 * x - 2))))


class OracleEmbeddingNet(nn.Module):
    """Maps the intensity level ``round(levels * x)`` (a label) to a fixed embedding; the
    mask logit is +20 for label 0 (background) and -20 otherwise."""

    def __init__(self, table: np.ndarray, levels: int):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))
        self.levels = levels

    def forward(self, x):
        idx = torch.round(x[:, 0] * self.levels).long().clamp(0, self.table.shape[0] - 1)
        emb = self.table[idx].permute(0, 4, 1, 2, 3)
        mask = torch.where(idx == 0, 20.0, -20.0)[:, None]
        return EmbeddingOutput(emb, mask)


class Recording(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.net(x)


def random_raw(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def stitched(fn, shape, block, **kw) -> BoxPrediction:
    """Run ``fn`` blockwise over the volume and stitch the pieces."""
    parts = []
    for begin in itertools.product(*(range(0, n, b) for n, b in zip(shape, block))):
        end = tuple(min(b + s, n) for b, s, n in zip(begin, block, shape))
        parts.append(((begin, end), fn(box=(begin, end), **kw)))
    first = parts[0][1]
    affs = np.full((first.affinities.shape[0],) + tuple(shape), np.nan, np.float32)
    bg = np.full(shape, np.nan, np.float32) if first.background is not None else None
    emb = None
    if first.embeddings is not None:
        emb = np.full((first.embeddings.shape[0],) + tuple(shape), np.nan, np.float32)
    for (b, e), p in parts:
        sl = tuple(slice(x, y) for x, y in zip(b, e))
        affs[(slice(None),) + sl] = p.affinities
        if bg is not None:
            bg[sl] = p.background
        if emb is not None:
            emb[(slice(None),) + sl] = p.embeddings
    return BoxPrediction(
        affinities=affs, background=bg, offsets=first.offsets, box=((0, 0, 0), tuple(shape)), embeddings=emb
    )


def assert_invariant(whole: BoxPrediction, blocks: BoxPrediction) -> None:
    pairs = [(whole.affinities, blocks.affinities)]
    if whole.background is not None:
        pairs.append((whole.background, blocks.background))
    for a, b in pairs:
        assert not np.isnan(b).any()
        assert np.abs(a - b).max() <= 1e-6
        assert np.array_equal(quantize_u8(a), quantize_u8(b))
        assert np.array_equal(a, b)  # in fact bit-identical (fixed order, fixed shapes)
    if whole.embeddings is not None:
        assert np.array_equal(whole.embeddings, blocks.embeddings)


# ------------------------------------------------------------------------- tests
@pytest.mark.parametrize("numba_kernels", [True, False], ids=["numba", "torch-ops"])
def test_block_size_invariance_embedding_net(numba_kernels):
    shape = (12, 40, 40)
    raw = random_raw(shape)
    net = ConvEmbeddingNet().eval()
    read = array_reader(raw)
    kw = dict(
        model=net, read_raw=read, volume_shape=shape, offsets=PAPER_OFFSETS, return_embeddings=True,
        numba_kernels=numba_kernels, **SMALL,
    )
    whole = predict_box(box=((0, 0, 0), shape), **kw)
    assert whole.affinities.shape == (12,) + shape and whole.affinities.dtype == np.float32
    assert whole.background.shape == shape and whole.background.dtype == np.float32
    assert whole.embeddings.shape == (24,) + shape
    assert whole.n_patches == len(get_lattice(shape, SMALL["output_patch"]))
    # the test is only meaningful if the values are not all 0 / 1
    mid = (whole.affinities > 0.05) & (whole.affinities < 0.95)
    assert mid.mean() > 0.3
    for block in [(5, 13, 11), (7, 23, 29), (4, 16, 16)]:
        assert_invariant(whole, stitched(predict_box, shape, block, **kw))


def test_block_size_invariance_two_threads():
    """The production setting (2 intra-op threads) on a small volume."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        shape = (8, 24, 24)
        net = ConvEmbeddingNet(dim=8, width=4).eval()
        read = array_reader(random_raw(shape, seed=9))
        kw = dict(model=net, read_raw=read, volume_shape=shape, offsets=PAPER_OFFSETS, **SMALL)
        whole = predict_box(box=((0, 0, 0), shape), **kw)
        assert_invariant(whole, stitched(predict_box, shape, (5, 13, 11), **kw))
    finally:
        torch.set_num_threads(old)


def dense_reference(net, raw, offsets, out_shape, in_shape, *, partner_in_crop=True):
    """Straight from the definition: every lattice patch separately, dense float64 logits
    (-inf where the patch gives no weight), log-space blend per channel."""
    shape = raw.shape
    lat = get_lattice(shape, out_shape)
    read = array_reader(raw)
    base = bump_logits(out_shape)
    K = len(offsets)
    n = len(lat)
    values = np.zeros((n, K) + shape)
    logits = np.full((n, K) + shape, -np.inf)
    bg_values = np.zeros((n,) + shape)
    bg_logits = np.full((n,) + shape, -np.inf)
    for k, p in enumerate(lat.patches()):
        ib, _ = p.input_box(out_shape, in_shape)
        x = torch.from_numpy(read((ib, tuple(b + s for b, s in zip(ib, in_shape)))))[None, None]
        with torch.no_grad():
            out = net(torch.cat([x, torch.zeros_like(x)]))
        c = [(i - o) // 2 for i, o in zip(in_shape, out_shape)]
        crop = tuple(slice(ci, ci + o) for ci, o in zip(c, out_shape))
        if hasattr(out, "embedding"):
            emb = out.embedding[0][(slice(None),) + crop].double().numpy()
            affs, valid = metric_affinities_np(emb, offsets)
            bg = torch.sigmoid(out.mask_logit[0, 0][crop].double()).numpy()
        else:
            affs = torch.sigmoid(out.logits[0][(slice(None),) + crop].double()).numpy()
            valid = np.ones(affs.shape, bool)
            bg = None
        for idx in itertools.product(*(range(o) for o in out_shape)):
            v = tuple(o + i for o, i in zip(p.origin, idx))
            if not all(0 <= a < m for a, m in zip(v, shape)):
                continue
            if bg is not None:
                bg_values[(k,) + v] = bg[idx]
                bg_logits[(k,) + v] = base[idx]
            for c_, off in enumerate(offsets):
                q = tuple(a + d for a, d in zip(v, off))
                if not all(0 <= a < m for a, m in zip(q, shape)):
                    continue
                if partner_in_crop and not valid[(c_,) + idx]:
                    continue
                values[(k, c_) + v] = affs[(c_,) + idx]
                logits[(k, c_) + v] = base[idx]
    affs = np.stack([blend_log_space(values[:, c], logits[:, c]) for c in range(K)])
    bg = blend_log_space(bg_values, bg_logits) if hasattr(out, "embedding") else None
    return affs, bg


@pytest.mark.parametrize("numba_kernels", [True, False], ids=["numba", "torch-ops"])
def test_embedding_net_matches_dense_reference(numba_kernels):
    shape = (7, 21, 19)
    out_shape, in_shape = (4, 12, 12), (6, 18, 18)
    raw = random_raw(shape, seed=5)
    net = ConvEmbeddingNet(dim=6, width=4, scale=0.4).eval()
    ref_affs, ref_bg = dense_reference(net, raw, PAPER_OFFSETS, out_shape, in_shape)
    geo = dict(output_patch=out_shape, input_patch=in_shape, numba_kernels=numba_kernels)
    got = predict_box(net, array_reader(raw), ((0, 0, 0), shape), shape, PAPER_OFFSETS, **geo)
    assert 0.05 < got.affinities.mean() < 0.95
    np.testing.assert_allclose(got.affinities, ref_affs, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got.background, ref_bg, rtol=0, atol=2e-6)
    # a box in the middle gives the same values
    part = predict_box(net, array_reader(raw), ((2, 5, 3), (5, 17, 16)), shape, PAPER_OFFSETS, **geo)
    assert np.array_equal(part.affinities, got.affinities[:, 2:5, 5:17, 3:16])


@pytest.mark.parametrize("numba_kernels", [True, False], ids=["numba", "torch-ops"])
def test_affinity_net_matches_dense_reference_and_is_block_invariant(numba_kernels):
    shape = (7, 21, 19)
    out_shape, in_shape = (4, 12, 12), (6, 18, 18)
    offsets = [(0, 0, -1), (0, -1, 0), (-1, 0, 0), (0, 0, -8), (-3, 0, 0), (0, 2, 0)]
    raw = random_raw(shape, seed=6)
    net = ConvAffinityNet(len(offsets), width=4).eval()
    ref_affs, _ = dense_reference(net, raw, offsets, out_shape, in_shape, partner_in_crop=False)
    kw = dict(
        model=net, read_raw=array_reader(raw), volume_shape=shape, offsets=offsets,
        output_patch=out_shape, input_patch=in_shape, numba_kernels=numba_kernels,
    )
    whole = predict_box_affinity(box=((0, 0, 0), shape), **kw)
    assert whole.background is None
    np.testing.assert_allclose(whole.affinities, ref_affs, rtol=0, atol=2e-6)
    assert np.all(whole.affinities[3][:, :, :8] == 0)  # (0, 0, -8) leaves the volume at x < 8
    assert np.all(whole.affinities[5][:, -2:, :] == 0)
    for block in [(3, 8, 8), (5, 10, 7)]:
        assert_invariant(whole, stitched(predict_box_affinity, shape, block, **kw))


def test_affinity_net_baseline_offsets_and_spec_default():
    shape = (12, 40, 40)
    raw = random_raw(shape, seed=7)
    net = ConvAffinityNet(12).eval()

    class Spec:
        offsets = BASELINE_OFFSETS

    net.spec = Spec()
    kw = dict(model=net, read_raw=array_reader(raw), volume_shape=shape, **SMALL)
    whole = predict_box_affinity(box=((0, 0, 0), shape), **kw)  # offsets from model.spec
    assert whole.offsets == tuple(BASELINE_OFFSETS)
    assert np.all(whole.affinities[BASELINE_OFFSETS.index((0, 0, -12))][:, :, :12] == 0)
    assert whole.affinities[BASELINE_OFFSETS.index((0, 0, -12))][:, :, 12:].min() > 0
    assert_invariant(whole, stitched(predict_box_affinity, shape, (6, 20, 21), **kw))
    with pytest.raises(ValueError, match="channels"):
        predict_box_affinity(box=((0, 0, 0), shape), offsets=PAPER_OFFSETS[:5], **kw)
    del net.spec
    with pytest.raises(ValueError, match="offsets"):
        predict_box_affinity(box=((0, 0, 0), shape), **kw)


def test_oracle_offsets_through_predict_box():
    labels = oracle_labels((12, 40, 40), seed=2)
    levels = 1024
    assert labels.max() < levels
    emb = oracle_embedding(labels)
    table = np.zeros((int(labels.max()) + 1, emb.shape[0]), np.float32)
    table[labels.ravel()] = emb.reshape(emb.shape[0], -1).T
    table[0] = 7.0  # background: arbitrary
    raw = (labels / levels).astype(np.float32)  # intensity encodes the label
    net = OracleEmbeddingNet(table, levels)
    kw = dict(model=net, read_raw=array_reader(raw), volume_shape=labels.shape, offsets=PAPER_OFFSETS, **SMALL)
    whole = predict_box(box=((0, 0, 0), labels.shape), **kw)
    check_oracle_affinities(labels, whole.affinities, PAPER_OFFSETS, atol=1e-6)
    np.testing.assert_allclose(whole.background[labels == 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(whole.background[labels > 0], 0.0, atol=1e-6)
    assert_invariant(whole, stitched(predict_box, labels.shape, (5, 13, 11), **kw))


def test_real_patch_size_tiny_net():
    shape = (24, 150, 140)
    raw = random_raw(shape, seed=3)
    net = ConvEmbeddingNet(dim=4, width=2, scale=0.3).eval()
    kw = dict(model=net, read_raw=array_reader(raw), volume_shape=shape, offsets=PAPER_OFFSETS)
    whole = predict_box(box=((0, 0, 0), shape), **kw)  # defaults: (16, 96, 96) / (20, 128, 128)
    assert whole.n_patches == 2 * 3 * 2
    assert np.all(np.isfinite(whole.affinities)) and np.all(np.isfinite(whole.background))
    assert whole.affinities.min() >= 0 and whole.affinities.max() <= 1 + 1e-6
    # the volume corner is covered only by the border of one crop (naive weight exp(-2000) = 0)
    assert whole.background[0, 0, 0] > 0
    assert_invariant(whole, stitched(predict_box, shape, (24, 75, 70), **kw))
    assert_invariant(whole, stitched(predict_box, shape, (13, 150, 140), **kw))


def test_batches_have_fixed_size_and_padding():
    shape = (12, 40, 40)
    raw = random_raw(shape)
    net = Recording(ConvEmbeddingNet(dim=4, width=4).eval())
    pred = predict_box(net, array_reader(raw), ((0, 0, 0), shape), shape, PAPER_OFFSETS, batch_size=3, **SMALL)
    assert pred.n_patches == 80 and len(net.inputs) == 27
    assert all(x.shape == (3, 1, 6, 24, 24) for x in net.inputs)
    assert torch.all(net.inputs[-1][2:] == 0) and net.inputs[-1][1].abs().sum() > 0  # 80 = 26 * 3 + 2


def test_roi_frame_and_reader_coordinates():
    shape = (12, 40, 40)
    origin = (100, 200, 300)
    raw = random_raw(shape, seed=4)
    net = ConvEmbeddingNet(dim=6, width=4).eval()
    rel = predict_box(net, array_reader(raw), ((2, 3, 4), (9, 30, 33)), shape, PAPER_OFFSETS, **SMALL)
    seen = []
    base_reader = array_reader(raw, origin)

    def reader(roi):
        assert isinstance(roi, Roi)
        seen.append(roi)
        return base_reader(roi)

    volume = Roi(Coordinate(origin), Coordinate(shape))
    box = Roi(Coordinate(102, 203, 304), Coordinate(7, 27, 29))
    absolute = predict_box(net, reader, box, volume, PAPER_OFFSETS, **SMALL)
    assert absolute.box == ((102, 203, 304), (109, 230, 333))
    assert np.array_equal(absolute.affinities, rel.affinities)
    assert np.array_equal(absolute.background, rel.background)
    assert all(r.shape == Coordinate(6, 24, 24) for r in seen)
    assert min(r.begin[0] for r in seen) == 99  # context before the volume start
    with pytest.raises(ValueError, match="inside"):
        predict_box(net, reader, Roi(Coordinate(0, 0, 0), Coordinate(5, 5, 5)), volume, PAPER_OFFSETS, **SMALL)


def test_embeddings_come_from_nearest_patch_unblended():
    shape = (12, 40, 40)
    raw = random_raw(shape, seed=8)
    net = ConvEmbeddingNet(dim=5, width=4).eval()
    box = ((0, 0, 0), shape)
    pred = predict_box(net, array_reader(raw), box, shape, PAPER_OFFSETS, return_embeddings=True, **SMALL)
    lat = get_lattice(shape, SMALL["output_patch"])
    read = array_reader(raw)
    for p in lat.patches():
        owned = lat.owned_box(p)
        if owned is None:
            continue
        ib, ie = p.input_box(SMALL["output_patch"], SMALL["input_patch"])
        x = torch.from_numpy(read((ib, ie)))[None, None]
        with torch.no_grad():
            emb = net(torch.cat([x, torch.zeros_like(x)])).embedding[0, :, 1:5, 4:20, 4:20].numpy()
        (b, e) = owned
        src = tuple(slice(lo - o, hi - o) for lo, hi, o in zip(b, e, p.origin))
        dst = tuple(slice(lo, hi) for lo, hi in zip(b, e))
        np.testing.assert_allclose(pred.embeddings[(slice(None),) + dst], emb[(slice(None),) + src], rtol=0, atol=1e-6)


def test_numba_and_torch_paths_agree():
    shape = (12, 40, 40)
    net = ConvEmbeddingNet(dim=8, width=4).eval()
    kw = dict(read_raw=array_reader(random_raw(shape, seed=11)), box=((0, 0, 0), shape), volume_shape=shape,
              offsets=PAPER_OFFSETS, **SMALL)
    a = predict_box(net, numba_kernels=True, **kw)
    b = predict_box(net, numba_kernels=False, **kw)
    np.testing.assert_allclose(a.affinities, b.affinities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.background, b.background, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="numba"):
        predict_box(net, numba_kernels=True, **{**kw, "device": "meta"})


def test_quantize_u8():
    a = np.array([0.0, 1.0, 0.5, 1 / 255, 0.49 / 255, 0.51 / 255, -0.1, 1.2, 1.0000001], np.float32)
    assert quantize_u8(a).tolist() == [0, 255, 128, 1, 0, 1, 0, 255, 255]
    assert quantize_u8(torch.tensor([0.25])).dtype == np.uint8


def test_quantize_on_device_rounds_like_numpy():
    # the GPU path quantises in torch; every k/255 and exact tie (k + 0.5)/255 must agree
    k = np.arange(256, dtype=np.float32)
    rng = np.random.default_rng(0)
    a = np.concatenate([k / 255, (k + 0.5) / 255, rng.random(10000, dtype=np.float32), [-1.0, 2.0, np.float32(1.0000001)]])
    a = a.astype(np.float32)
    assert np.array_equal(quantize_u8_torch(torch.from_numpy(a)).numpy(), quantize_u8(a))


def test_predict_box_quantize_equals_quantized_floats():
    shape = (6, 24, 24)
    raw = random_raw(shape)
    kw = dict(model=ConvEmbeddingNet().eval(), read_raw=array_reader(raw), box=((0, 0, 0), shape),
              volume_shape=shape, offsets=PAPER_OFFSETS, **SMALL)
    for numba_kernels in (True, False):
        floats = predict_box(numba_kernels=numba_kernels, **kw)
        q = predict_box(numba_kernels=numba_kernels, quantize=True, **kw)
        assert q.affinities.dtype == np.uint8 and q.background.dtype == np.uint8
        assert np.array_equal(q.affinities, quantize_u8(floats.affinities))
        assert np.array_equal(q.background, quantize_u8(floats.background))


def test_array_reader_mirrors():
    raw = np.arange(5, dtype=np.uint8).reshape(1, 1, 5)
    read = array_reader(raw)
    got = read(((0, 0, -3), (1, 1, 8)))[0, 0] * 255
    np.testing.assert_allclose(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1])
    assert read(((0, 0, 0), (1, 1, 5))).dtype == np.float32


def test_model_on_other_device_rejected():
    net = ConvEmbeddingNet(dim=4, width=2)
    with pytest.raises((ValueError, RuntimeError, AssertionError)):
        shape = (4, 16, 16)
        predict_box(
            net, array_reader(random_raw(shape)), ((0, 0, 0), shape), shape, PAPER_OFFSETS, device="meta", **SMALL
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_block_size_invariance_cuda():
    shape = (12, 40, 40)
    raw = random_raw(shape)
    net = ConvEmbeddingNet().eval().cuda()
    kw = dict(model=net, read_raw=array_reader(raw), volume_shape=shape, offsets=PAPER_OFFSETS, device="cuda", **SMALL)
    whole = predict_box(box=((0, 0, 0), shape), **kw)
    for block in [(5, 13, 11), (7, 23, 29)]:
        assert_invariant(whole, stitched(predict_box, shape, block, **kw))
    q = predict_box(box=((0, 0, 0), shape), quantize=True, **kw)
    assert np.array_equal(q.affinities, quantize_u8(whole.affinities))  # quantised on the GPU, same bytes
    cpu = predict_box(box=((0, 0, 0), shape), **{**kw, "model": ConvEmbeddingNet().eval(), "device": "cpu"})
    assert np.abs(cpu.affinities - whole.affinities).max() < 0.05  # float16 autocast on CUDA
