"""RSUNet shapes/heads, presets, oneDNN CPU route, checkpoints."""

import json

import pytest
import torch

from embedseg_daisy.errors import CheckpointError
from embedseg_daisy.nn import (
    BASELINE_OFFSETS,
    AffinityOutput,
    EmbeddingOutput,
    ModelSpec,
    build_model,
    count_parameters,
    crop_center,
    fast_inference,
    get_preset,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    use_onednn,
)
from embedseg_daisy.nn.cpu import OneDNNConv3dFunction
from embedseg_daisy.offsets import BASELINE_LONG_RANGE, BASELINE_NEAREST


def _small(kind="embedding", **kw):
    kw.setdefault("widths", (4, 8))
    kw.setdefault("input_shape", (4, 16, 16))
    kw.setdefault("output_crop", (2, 8, 8))
    return get_preset("tiny", kind, **kw)


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_presets_geometry(preset):
    for kind in ("embedding", "affinity"):
        s = get_preset(preset, kind)
        assert s.input_shape == (20, 128, 128) and s.output_crop == (16, 96, 96)
        assert s.crop_margin == (2, 16, 16)
        assert len(s.widths) == s.depth + 1
    assert get_preset(preset, "embedding").out_channels == 25
    aff = get_preset(preset, "affinity")
    assert aff.out_channels == 12
    assert aff.offsets == tuple(BASELINE_NEAREST) + tuple(BASELINE_LONG_RANGE) == BASELINE_OFFSETS


def test_tiny_preset_is_small():
    s = get_preset("tiny")
    assert s.widths == (16, 32, 64) and s.depth == 2
    assert count_parameters(build_model(s)) * 4 < 10e6


def test_spec_validation():
    with pytest.raises(ValueError, match="depth"):
        ModelSpec(kind="embedding", widths=(4, 8, 16), depth=1)
    with pytest.raises(ValueError, match="offsets"):
        ModelSpec(kind="affinity", widths=(4, 8), depth=1)
    with pytest.raises(ValueError, match="multiples"):
        get_preset("paper", input_shape=(20, 120, 120), output_crop=(16, 96, 96))
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge")
    s = get_preset("tiny", widths=(4, 8, 16, 32))
    assert s.depth == 3
    assert ModelSpec.from_json(s.to_json()) == s


# ------------------------------------------------------------------ network


@pytest.mark.parametrize("preset,shape", [("tiny", (4, 16, 16)), ("paper", (4, 32, 32))])
def test_output_shapes_both_kinds(preset, shape):
    x = torch.rand(2, 1, *shape)
    emb = build_model(get_preset(preset, "embedding"))
    with torch.no_grad():
        out = emb(x)
    assert isinstance(out, EmbeddingOutput)
    assert out.embedding.shape == (2, 24, *shape)
    assert out.mask_logit.shape == (2, 1, *shape)
    aff = build_model(get_preset(preset, "affinity"))
    with torch.no_grad():
        out = aff(x)
    assert isinstance(out, AffinityOutput)
    assert out.logits.shape == (2, 12, *shape)


def test_full_size_tiny_forward_and_crop():
    model = fast_inference(build_model(get_preset("tiny", "embedding")))
    x = torch.rand(1, 1, 20, 128, 128)
    with torch.inference_mode():
        out = model(x)
    assert out.embedding.shape == (1, 24, 20, 128, 128)
    assert crop_center(out.embedding, (16, 96, 96)).shape == (1, 24, 16, 96, 96)
    assert torch.isfinite(out.embedding).all()


def test_embedding_scale_initialised_at_point_one():
    model = build_model(_small())
    assert isinstance(model.embedding_scale, torch.nn.Parameter)
    assert model.embedding_scale.item() == pytest.approx(0.1)
    x = torch.rand(1, 1, 4, 16, 16)
    with torch.no_grad():
        a = model(x).embedding
        model.embedding_scale.fill_(0.2)
        b = model(x).embedding
    assert torch.allclose(b, 2 * a, atol=1e-6)
    assert not hasattr(build_model(_small("affinity")), "embedding_scale")


def test_bad_input_shape_rejected():
    model = build_model(_small())
    with pytest.raises(ValueError, match="multiples"):
        model(torch.rand(1, 1, 4, 15, 16))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.rand(1, 2, 4, 16, 16))


def test_architecture_elements():
    model = build_model(get_preset("tiny"))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    sizes = {tuple(m.kernel_size) for m in convs}
    assert sizes == {(3, 3, 3), (1, 1, 1)}  # 3x3x3 everywhere, 1x1x1 after each resize
    assert sum(isinstance(m, torch.nn.InstanceNorm3d) for m in model.modules()) > 0
    assert model.pool.kernel_size == (1, 2, 2)
    # residual module: entry conv + 3 residual convs
    assert len(model.down[0].convs) == 3


def test_onednn_route_matches_default():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny", widths=(4, 8, 16), input_shape=(4, 16, 16), output_crop=(2, 8, 8)))
    x = torch.rand(1, 1, 4, 16, 16)
    with torch.no_grad():
        ref = model(x)
    fast_inference(model)
    with torch.inference_mode():
        fast = model(x)
    assert torch.allclose(ref.embedding, fast.embedding, atol=1e-5)
    assert torch.allclose(ref.mask_logit, fast.mask_logit, atol=1e-5)
    use_onednn(model, False)
    assert not any(getattr(m, "onednn", False) for m in model.modules())


@pytest.mark.parametrize(
    "shape,k,bias", [((1, 4, 5, 8, 8), 3, True), ((1, 6, 3, 8, 8), 1, False), ((2, 3, 3, 6, 6), 3, True)]
)
def test_onednn_function_gradients(shape, k, bias):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(5, shape[1], k, k, k, requires_grad=True)
    b = torch.randn(5, requires_grad=True) if bias else None
    pad = (k // 2,) * 3
    y = OneDNNConv3dFunction.apply(x, w, b, pad)
    y2 = torch.nn.functional.conv3d(x, w, b, padding=pad)
    assert torch.allclose(y, y2, atol=1e-4)
    g = torch.randn_like(y)
    inputs = [x, w] + ([b] if bias else [])
    for a, c in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(y2, inputs, g)):
        assert torch.allclose(a, c, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    for kind in ("embedding", "affinity"):
        model = build_model(_small(kind))
        with torch.no_grad():
            model.down[0].entry_norm.weight.mul_(1.5)  # not the initial state
        path = save_checkpoint(tmp_path / f"{kind}.pt", model, step=7, extra={"note": "x"})
        loaded, spec = load_checkpoint(path, expected_kind=kind)
        assert spec == model.spec
        assert not loaded.training
        x = torch.rand(1, 1, 4, 16, 16)
        model.eval()
        with torch.no_grad():
            for a, b in zip(model(x), loaded(x)):
                assert torch.equal(a, b)
        payload = read_checkpoint(path)
        assert payload["step"] == 7 and payload["extra"] == {"note": "x"}


def test_half_checkpoint_loads_as_float32(tmp_path):
    model = build_model(get_preset("tiny"))
    full = save_checkpoint(tmp_path / "f.pt", model)
    half = save_checkpoint(tmp_path / "h.pt", model, half=True)
    assert full.stat().st_size < 10e6
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 1, 20, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x).embedding, loaded(x).embedding, atol=5e-2)


def test_checkpoint_with_optimizer(tmp_path):
    model = build_model(_small())
    opt = torch.optim.Adam(model.parameters(), amsgrad=True)
    model(torch.rand(1, 1, 4, 16, 16)).embedding.sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "s.pt", model, optimizer=opt, step=1)
    payload = read_checkpoint(path)
    opt2 = torch.optim.Adam(build_model(_small()).parameters(), amsgrad=True)
    opt2.load_state_dict(payload["optimizer"])


def _one_line_error(path, **kw):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_checkpoint(tmp_path):
    assert "not found" in _one_line_error(tmp_path / "nope.pt")


def test_corrupt_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    assert "not a readable checkpoint" in _one_line_error(junk)
    good = save_checkpoint(tmp_path / "good.pt", build_model(_small()))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "not a readable checkpoint" in _one_line_error(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert "not an embedseg-daisy checkpoint" in _one_line_error(foreign)


def test_wrong_kind_and_offsets(tmp_path):
    path = save_checkpoint(tmp_path / "e.pt", build_model(_small()))
    msg = _one_line_error(path, expected_kind="affinity")
    assert "'embedding'" in msg and "'affinity'" in msg
    aff = save_checkpoint(tmp_path / "a.pt", build_model(_small("affinity")))
    load_checkpoint(aff, expected_kind="affinity", expected_offsets=BASELINE_OFFSETS)
    assert "offsets" in _one_line_error(aff, expected_offsets=BASELINE_OFFSETS[:3])


def test_mismatched_shapes(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model(_small()))
    payload = torch.load(path, weights_only=True)
    spec = json.loads(payload["spec"])
    spec["widths"] = [4, 12]
    payload["spec"] = json.dumps(spec)
    torch.save(payload, path)
    msg = _one_line_error(path)
    assert "weights do not match" in msg and "shape mismatch" in msg


# ------------------------------------------------------------------ growing a net by one scale


def _trained_like(spec, seed=0):
    """A net whose weights are random but not at their initial values (norm affines too)."""
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_grown_net_starts_as_the_trained_net():
    from embedseg_daisy.nn.grow import grow_one_scale

    spec = _small(widths=(4, 8), input_shape=(4, 32, 32), output_crop=(2, 16, 16))
    model = _trained_like(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    x = torch.rand(1, 1, 4, 32, 32)
    grown = grow_one_scale(model, x)
    assert grown.spec.widths == (4, 8, 8) and grown.spec.depth == 2
    assert grown.spec.training["grown_from"]["widths"] == [4, 8]
    with torch.inference_mode():
        want, got = model(x), grown(x)
        # exact on the calibration patch (statistics measured there) ...
        torch.testing.assert_close(got.embedding, want.embedding, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.mask_logit, want.mask_logit, atol=1e-5, rtol=1e-4)
        # ... and the new coarsest scale really is in the path: a non-zero projection changes it
        grown.up[0].project.weight.normal_()
        assert (grown(x).embedding - want.embedding).abs().max() > 1e-3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the trained net was modified"


def test_grown_net_new_scale_receives_gradient():
    from embedseg_daisy.nn.grow import grow_one_scale

    spec = _small(widths=(4, 8), input_shape=(4, 32, 32), output_crop=(2, 16, 16))
    grown = grow_one_scale(_trained_like(spec), torch.rand(2, 1, 4, 32, 32)).train()
    out = grown(torch.rand(2, 1, 4, 32, 32))
    (out.embedding.square().mean() + out.mask_logit.mean()).backward()
    # the zero-initialised projection is where the new context enters: it must learn
    assert grown.up[0].project.weight.grad.abs().sum() > 0
    assert grown.up[0].module.convs[-1].weight.grad.abs().sum() > 0


def test_grow_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    import numpy as np

    from embedseg_daisy.nn.grow import main

    spec = _small(widths=(4, 8), input_shape=(4, 32, 32), output_crop=(2, 16, 16))
    src = save_checkpoint(tmp_path / "trained.pt", _trained_like(spec), spec)
    vol = tmp_path / "vol.npz"
    np.savez(vol, raw=np.random.default_rng(0).integers(0, 256, (6, 40, 40), dtype=np.uint8))
    out = tmp_path / "grown.pt"
    assert main([str(src), str(out), "--calibrate", str(vol), "--patches", "2"]) == 0
    model, grown_spec = load_checkpoint(out, expected_kind="embedding")
    assert grown_spec.widths == (4, 8, 8) and grown_spec.depth == 2
    # same geometry, so a training config can name it as its init_checkpoint
    assert grown_spec.model_dump(exclude={"training"}) == get_preset(
        "tiny", widths=(4, 8, 8), input_shape=(4, 32, 32), output_crop=(2, 16, 16)
    ).model_dump(exclude={"training"})
    mtime = out.stat().st_mtime_ns
    with pytest.raises(SystemExit):
        main([str(src), str(out), "--calibrate", str(vol)])
    assert out.stat().st_mtime_ns == mtime and "not overwriting" in capsys.readouterr().err
    assert main([str(src), str(tmp_path / "g2.pt"), "--calibrate", str(vol), "--raw", "image"]) == 2
    assert "vol.npz: no array named 'image' (has ['raw'])" in capsys.readouterr().err
    assert main([str(src), str(tmp_path / "g2.pt"), "--calibrate", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: no such volume" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.pt"), str(tmp_path / "g2.pt"), "--calibrate", str(vol)]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "g2.pt").exists()


def test_grow_cli_refuses_a_net_whose_patch_cannot_take_another_scale(tmp_path, capsys):
    import numpy as np

    from embedseg_daisy.nn.grow import main

    spec = _small(widths=(4, 8), input_shape=(4, 18, 18), output_crop=(2, 8, 8))
    src = save_checkpoint(tmp_path / "trained.pt", _trained_like(spec), spec)
    vol = tmp_path / "vol.npz"
    np.savez(vol, raw=np.zeros((6, 40, 40), np.uint8))  # valid: the net is what is refused
    assert main([str(src), str(tmp_path / "g.pt"), "--calibrate", str(vol)]) == 2
    assert "trained.pt: input y, x (18, 18) are not multiples of 4" in capsys.readouterr().err
    assert not (tmp_path / "g.pt").exists()
