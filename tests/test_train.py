"""Training data, config, loop (CPU smoke + resume), CLI, and a CUDA step (gpu mark)."""

import json

import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate
from funlib.persistence import prepare_ds
from scipy.spatial import cKDTree

from embedseg_daisy.errors import ConfigError, InputError
from embedseg_daisy.nn import load_checkpoint, read_checkpoint
from embedseg_daisy.train import main
from embedseg_daisy.training.augment import AugmentConfig
from embedseg_daisy.training.config import load_train_config, parse_train_config
from embedseg_daisy.training.data import PatchSampler, open_volume
from embedseg_daisy.training.loop import train

SMALL_MODEL = {"widths": [8, 16], "input_shape": [4, 32, 32], "output_crop": [2, 24, 24]}


def write_toy_volume(path, shape=(8, 48, 48), seed=0, n_cells=40):
    """Random Voronoi partition (anisotropic, 29 vs 12 nm) with dark boundaries."""
    rng = np.random.default_rng(seed)
    scale = np.array([29 / 12, 1.0, 1.0])
    seeds = rng.uniform(0, 1, (n_cells, 3)) * np.array(shape) * scale
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    _, idx = cKDTree(seeds).query(grid * scale)
    labels = (idx + 1).reshape(shape).astype(np.uint64) * np.uint64(1_000_003)  # large ids
    edge = np.zeros(shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    labels[edge] = 0
    raw = np.clip(0.7 + 0.08 * rng.standard_normal(shape), 0, 1)
    raw[edge] = 0.15
    raw = (raw * 255).astype(np.uint8)
    for name, arr in (("raw", raw), ("labels", labels)):
        ds = prepare_ds(
            f"{path}/{name}", shape=arr.shape, offset=Coordinate(0, 0, 0),
            voxel_size=Coordinate(29, 12, 12), dtype=arr.dtype, mode="w",
        )
        ds[ds.roi] = arr
    return raw, labels


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    d = tmp_path_factory.mktemp("vols")
    write_toy_volume(d / "train.zarr", seed=0)
    write_toy_volume(d / "val.zarr", seed=1)
    return d


def _cfg(volumes, out_dir, kind="embedding", **kw):
    data = dict(
        kind=kind,
        train=[{"path": str(volumes / "train.zarr")}],
        validation=[{"path": str(volumes / "val.zarr")}],
        out_dir=str(out_dir),
        steps=30,
        log_every=1,
        val_every=10,
        val_patches=2,
        checkpoint_every=10,
        batch_size=2,
        num_threads=1,
        progress=False,
        model=SMALL_MODEL,
    )
    data.update(kw)
    return parse_train_config(data)


def _train_losses(out_dir):
    recs = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["total"] for r in recs if r["split"] == "train"], recs


# ------------------------------------------------------------------ data


def test_open_volume_and_sampler(volumes):
    vol = open_volume(volumes / "train.zarr")
    assert vol.raw.dtype == np.float32 and 0 <= vol.raw.min() and vol.raw.max() <= 1
    assert vol.labels.dtype == np.uint64 and vol.voxel_size == (29, 12, 12)
    s = PatchSampler([vol], (4, 32, 32), (2, 24, 24), AugmentConfig())
    b = s.batch(np.random.default_rng(0), 3)
    assert b.raw.shape == (3, 1, 4, 32, 32) and b.raw.dtype == torch.float32
    assert b.labels.shape == b.parts.shape == (3, 2, 24, 24)
    assert b.labels.dtype == b.parts.dtype == torch.int64
    assert b.myelin is None
    b2 = s.batch(np.random.default_rng(0), 3)
    assert torch.equal(b.raw, b2.raw) and torch.equal(b.parts, b2.parts)


def test_sampler_targets_are_cropped_and_kernelled(volumes):
    vol = open_volume(volumes / "train.zarr")
    s = PatchSampler([vol], (4, 32, 32), (2, 24, 24), None)
    rng = np.random.default_rng(3)
    p = s.sample_patch(rng, augmented=False)
    labels, parts, _ = s.targets(p)
    # No two different ids are in-plane neighbours after the Fig. S4 kernel.
    a, b = labels[:, :, 1:], labels[:, :, :-1]
    assert not ((a != b) & (a > 0) & (b > 0)).any()
    a, b = labels[:, 1:], labels[:, :-1]
    assert not ((a != b) & (a > 0) & (b > 0)).any()
    assert parts.max() >= labels.max() > 0


def test_volume_errors(tmp_path, volumes):
    with pytest.raises(InputError, match="cannot open"):
        open_volume(tmp_path / "nothing.zarr")
    vol = open_volume(volumes / "train.zarr")
    with pytest.raises(InputError, match="smaller than the input patch"):
        PatchSampler([vol], (20, 128, 128), (16, 96, 96))


# ------------------------------------------------------------------ config


def test_config_rejects_unknown_fields_and_names_them(tmp_path, volumes):
    good = json.loads(_cfg(volumes, tmp_path / "o").model_dump_json())
    bad = dict(good, learning_rate=1)
    bad["loss"] = dict(good["loss"], delta_d=-1)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    msg = str(info.value)
    assert "learning_rate: unknown field" in msg and "loss.delta_d" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="model: invalid model spec"):
        parse_train_config(dict(good, model={"widths": [4, 8], "depth": 3}))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_train_config(path)
    spec = _cfg(volumes, tmp_path / "o", kind="affinity").model_spec()
    assert spec.kind == "affinity" and spec.widths == (8, 16) and len(spec.offsets) == 12



def test_shipped_training_configs_validate():
    """Every ``configs/train_*.json`` parses and builds its net, and a fine-tune's
    ``init_checkpoint`` is a shipped checkpoint of that same net (else training would
    stop at its first line) or, under ``runs/``, one the README says how to make."""
    from pathlib import Path

    from embedseg_daisy.nn.rsunet import build_model, count_parameters

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    paths = sorted((root / "configs").glob("train_*.json"))
    assert len(paths) >= 8
    for path in paths:
        cfg = load_train_config(path)
        spec = cfg.model_spec()
        assert count_parameters(build_model(spec)) > 0, path
        if cfg.init_checkpoint is not None and cfg.init_checkpoint.parts[0] == "runs":
            # a generated starting point (e.g. a net grown by one scale): documented, not shipped
            assert str(cfg.init_checkpoint) in readme, f"{path}: README does not say how to make {cfg.init_checkpoint}"
            continue
        if cfg.init_checkpoint is not None:
            _, shipped = load_checkpoint(root / cfg.init_checkpoint, expected_kind=cfg.kind)
            assert shipped.model_dump(exclude={"training"}) == spec.model_dump(exclude={"training"}), path


# ------------------------------------------------------------------ training


def test_embedding_training_loss_falls(tmp_path, volumes):
    out = tmp_path / "emb"
    res = train(_cfg(volumes, out, export=str(tmp_path / "ship" / "embedding.pt")))
    assert res.step == 30
    losses, recs = _train_losses(out)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert sum(r["split"] == "val" for r in recs) == 3
    for name in ("latest.pt", "model.pt", "best.pt", "loss.png", "train.log", "config.json"):
        assert (out / name).exists(), name
    log = (out / "train.log").read_text().splitlines()
    assert any("step 30/30 total" in line and "internal" in line for line in log)
    model, spec = load_checkpoint(out / "model.pt", expected_kind="embedding")
    assert spec.training["step"] == 30 and spec.widths == (8, 16)
    assert (out / "model.pt").stat().st_size < 10e6
    # the exported file is the best validation checkpoint
    assert (tmp_path / "ship" / "embedding.pt").read_bytes() == (out / "best.pt").read_bytes()


def test_affinity_training_loss_falls(tmp_path, volumes):
    out = tmp_path / "aff"
    train(_cfg(volumes, out, kind="affinity", steps=20, validation=[], val_every=0))
    losses, _ = _train_losses(out)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    _, spec = load_checkpoint(out / "model.pt", expected_kind="affinity")
    assert len(spec.offsets) == 12
    assert not (out / "best.pt").exists()


def test_resume_continues_from_saved_step(tmp_path, volumes):
    straight = tmp_path / "straight"
    train(_cfg(volumes, straight, steps=10, checkpoint_every=6, val_every=0))
    split = tmp_path / "split"
    cfg = _cfg(volumes, split, steps=10, checkpoint_every=6, val_every=0)
    train(cfg, steps=6)
    assert read_checkpoint(split / "latest.pt")["step"] == 6
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)
    res = train(cfg, resume=True)
    assert res.step == 10
    assert "resumed from" in (split / "train.log").read_text()
    losses, _ = _train_losses(split)
    assert len(losses) == 10  # 6 before + 4 after, no duplicates
    # model + optimizer + sampler RNG restored: same weights as an uninterrupted run
    a = read_checkpoint(straight / "latest.pt")["state_dict"]
    b = read_checkpoint(split / "latest.pt")["state_dict"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # resuming a finished run does nothing more
    assert train(cfg, resume=True).step == 10


def test_accumulated_batches_make_the_same_update_as_one_batch(tmp_path, volumes):
    # the sampler draws patches one by one from one RNG, and the loss is a mean over
    # samples: two accumulated batches of 1 are one batch of 2, up to float rounding
    # eps >> sqrt(v) makes Adam's step proportional to the gradient, so a sum where a
    # mean belongs (twice the gradient) would show
    opt = {"lr": 1e-2, "eps": 1.0}
    one = tmp_path / "one"
    train(_cfg(volumes, one, steps=3, batch_size=2, val_every=0, optimizer=opt))
    acc = tmp_path / "acc"
    train(_cfg(volumes, acc, steps=3, batch_size=1, accumulate=2, val_every=0, optimizer=opt))
    a = read_checkpoint(one / "latest.pt")["state_dict"]
    b = read_checkpoint(acc / "latest.pt")["state_dict"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    la, _ = _train_losses(one)
    lb, _ = _train_losses(acc)
    assert lb == pytest.approx(la, rel=1e-4)
    assert "batch 1 x 2 accumulated" in (acc / "train.log").read_text()
    # and differs from a single batch of 1 (the test can fail)
    single = tmp_path / "single"
    train(_cfg(volumes, single, steps=3, batch_size=1, val_every=0, optimizer=opt))
    c = read_checkpoint(single / "latest.pt")["state_dict"]
    assert any(not torch.allclose(a[k], c[k], atol=1e-5) for k in a)


def test_init_checkpoint_starts_from_its_weights(tmp_path, volumes):
    first = tmp_path / "first"
    train(_cfg(volumes, first, steps=4, val_every=0))
    # zero steps of training would be the weights themselves: compare the first loss
    tuned = tmp_path / "tuned"
    train(_cfg(volumes, tuned, steps=4, val_every=0, init_checkpoint=str(first / "model.pt")))
    fresh = tmp_path / "fresh"
    train(_cfg(volumes, fresh, steps=4, val_every=0))
    assert "initialised from" in (tuned / "train.log").read_text()
    first_losses, _ = _train_losses(first)
    tuned_losses, _ = _train_losses(tuned)
    fresh_losses, _ = _train_losses(fresh)
    # same seed and data: a fresh run repeats the first run's start, a tuned one does not
    assert fresh_losses[0] == pytest.approx(first_losses[0])
    assert tuned_losses[0] != pytest.approx(first_losses[0])
    assert tuned_losses[0] < first_losses[0]
    # a checkpoint of another model is refused with both models named
    other = tmp_path / "other"
    train(_cfg(volumes, other, kind="affinity", steps=2, validation=[], val_every=0))
    with pytest.raises(ConfigError, match="init_checkpoint .*differs"):
        train(_cfg(volumes, tmp_path / "bad", steps=2, val_every=0, init_checkpoint=str(other / "model.pt")))


def test_cli(tmp_path, volumes, capsys):
    cfg = json.loads(_cfg(volumes, tmp_path / "cli", steps=3).model_dump_json())
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    assert main([str(path), "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 2
    assert main([str(path), "--resume", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    cfg["bogus"] = 1
    path.write_text(json.dumps(cfg))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "bogus: unknown field" in err and err.count("\n") == 1


def _conv_output_dtypes():
    """Record the dtype of every Conv3d output during a run (a global forward hook)."""
    seen: list[torch.dtype] = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv3d):
            seen.append(output.dtype)

    return seen, torch.nn.modules.module.register_module_forward_hook(hook)


def test_cpu_amp_trains_in_bfloat16_and_the_loss_falls(tmp_path, volumes, monkeypatch):
    # Emulated bfloat16 is slow but correct: pretend this CPU is native so the
    # autocast path itself is tested on any machine.
    monkeypatch.setattr("embedseg_daisy.training.loop.cpu_bf16_native", lambda: True)
    seen, handle = _conv_output_dtypes()
    try:
        out = tmp_path / "bf16"
        res = train(_cfg(volumes, out, steps=20, val_every=10, cpu_amp=True))
    finally:
        handle.remove()
    assert set(seen) == {torch.bfloat16}  # the oneDNN route stood aside for autocast
    losses, recs = _train_losses(out)
    assert res.step == 20 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert all(np.isfinite(r["total"]) for r in recs)
    assert "amp torch.bfloat16" in (out / "train.log").read_text()
    # the saved weights stay float32 and load for float32 inference
    sd = read_checkpoint(out / "model.pt")["state_dict"]
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())


def test_cpu_amp_without_native_bfloat16_warns_and_stays_float32(tmp_path, volumes, monkeypatch):
    monkeypatch.setattr("embedseg_daisy.training.loop.cpu_bf16_native", lambda: False)
    seen, handle = _conv_output_dtypes()
    try:
        out = tmp_path / "fp32"
        with pytest.warns(UserWarning, match="no native bfloat16"):
            train(_cfg(volumes, out, steps=2, val_every=0, cpu_amp=True))
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.float32}
    assert "amp False" in (out / "train.log").read_text()


def test_cpu_runs_ignore_the_cuda_amp_flag(tmp_path, volumes, monkeypatch):
    # ``amp`` (default True) is CUDA's: CPU configs written before cpu_amp keep float32,
    # even on a CPU with native bfloat16
    monkeypatch.setattr("embedseg_daisy.training.loop.cpu_bf16_native", lambda: True)
    seen, handle = _conv_output_dtypes()
    try:
        out = tmp_path / "plain"
        train(_cfg(volumes, out, steps=1, val_every=0, amp=True, device="cpu"))
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.float32}
    assert "amp False" in (out / "train.log").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_training_and_inference_step(tmp_path, volumes):
    out = tmp_path / "cuda"
    res = train(_cfg(volumes, out, steps=4, device="cuda", val_every=2, checkpoint_every=2))
    assert res.step == 4 and np.isfinite(res.last_train["total"])
    model, spec = load_checkpoint(out / "model.pt", device="cuda", expected_kind="embedding")
    x = torch.rand(2, 1, *spec.input_shape, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
    assert y.embedding.shape == (2, 24, *spec.input_shape) and y.embedding.is_cuda
    assert torch.isfinite(y.embedding.float()).all()
    res = train(_cfg(volumes, tmp_path / "cuda16", kind="affinity", steps=2, device="cuda", amp_dtype="float16"))
    assert np.isfinite(res.last_train["total"])
