"""The training loop behind ``python -m embedseg_daisy.train``.

Files written to ``cfg.out_dir``:

``latest.pt``     full state for ``--resume``: float32 weights, optimizer, step, RNG
                  states (numpy sampler, torch, CUDA), GradScaler, best validation loss
``model.pt``      the current weights only (the file to ship; float16 if ``half_weights``)
``best.pt``       weights at the lowest validation loss (when validation volumes exist)
``train.log``     one plain-text line per logging step / validation / event
``metrics.jsonl`` the same numbers as JSON records (``split`` = train | val)
``loss.png``      loss curves, redrawn at every checkpoint
``config.json``   the effective configuration

With ``cfg.export`` set, the shipped weights (``best.pt`` if validation ran, else
``model.pt``) are copied there at the end.

CUDA runs use autocast (bfloat16, or float16 with a GradScaler) when ``cfg.amp``; the
losses are always computed in float32.  CPU runs use float32 with the oneDNN
convolution route (``embedseg_daisy.nn.cpu``) and ``torch.set_num_threads``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedseg_daisy.errors import CheckpointError, ConfigError
from embedseg_daisy.nn.checkpoint import read_checkpoint, save_checkpoint
from embedseg_daisy.nn.cpu import use_onednn
from embedseg_daisy.nn.presets import ModelSpec
from embedseg_daisy.nn.rsunet import build_model, count_parameters
from embedseg_daisy.training.affinity_loss import affinity_loss
from embedseg_daisy.training.config import TrainConfig
from embedseg_daisy.training.data import Batch, PatchSampler, open_volume
from embedseg_daisy.training.loss import embedding_loss
from embedseg_daisy.training.plots import plot_loss_curves

LATEST = "latest.pt"
MODEL = "model.pt"
BEST = "best.pt"


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    latest: Path
    model: Path
    best: Path | None
    last_train: dict[str, float] = field(default_factory=dict)
    best_val: float | None = None
    seconds_per_step: float | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), per oneDNN."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast_setting(cfg: TrainConfig, dev: torch.device) -> tuple[bool, torch.dtype]:
    """``(enabled, dtype)`` of autocast for this run (see ``TrainConfig.amp`` / ``cpu_amp``)."""
    if dev.type == "cpu":
        native = cfg.cpu_amp and cpu_bf16_native()
        if cfg.cpu_amp and not native:
            warnings.warn("cpu_amp: this CPU has no native bfloat16 (AVX512-BF16/AMX); training in float32")
        return native, torch.bfloat16
    dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    if cfg.amp and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return cfg.amp, dtype


def compute_loss(model, batch: Batch, cfg: TrainConfig, spec: ModelSpec):
    """Forward + loss terms of one batch (a NamedTuple whose ``total`` has the gradient)."""
    out = model(batch.raw)
    if spec.kind == "embedding":
        lc = cfg.loss
        return embedding_loss(
            out,
            batch.labels,
            parts=batch.parts,
            myelin=batch.myelin,
            delta_d=lc.delta_d,
            alpha=lc.alpha,
            beta=lc.beta,
            gamma=lc.gamma,
            background_weight=lc.background_weight,
        )
    return affinity_loss(
        out, batch.labels, spec.offsets, n_nearest=3, long_range_weight=cfg.loss.long_range_weight
    )


class _Log:
    def __init__(self, path: Path, metrics: Path, to_console: bool):
        self.path, self.metrics, self.to_console = path, metrics, to_console

    def line(self, text: str, console: bool | None = None) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(self.path, "a") as f:
            f.write(f"{stamp} {text}\n")
        if self.to_console if console is None else console:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def record(self, rec: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _fmt(terms: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in terms.items())


def _read_metrics(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= upto:
            out.append(rec)
    return out


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    steps: int | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train (or continue training) the network described by ``cfg``."""
    total_steps = int(steps if steps is not None else cfg.steps)
    dev = resolve_device(device or cfg.device)
    out_dir = Path(cfg.out_dir)
    latest_path = out_dir / LATEST
    if latest_path.exists() and not resume:
        raise ConfigError(
            f"{out_dir} already holds a training run ({LATEST}); pass --resume to continue it "
            f"or choose another out_dir"
        )
    threads_before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cfg.num_threads or available_cpus())
    else:
        torch.backends.cudnn.benchmark = True
    try:
        return _train(cfg, resume, total_steps, dev, out_dir)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, resume: bool, total_steps: int, dev: torch.device, out_dir: Path) -> TrainResult:
    latest_path, model_path, best_path = out_dir / LATEST, out_dir / MODEL, out_dir / BEST

    spec = cfg.model_spec()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # ---- data
    volumes = [open_volume(v.path, v.raw, v.labels, v.myelin) for v in cfg.train]
    sampler = PatchSampler(
        volumes, spec.input_shape, spec.output_crop, cfg.augment,
        background_kernel=cfg.loss.background_kernel, split_parts=cfg.loss.split_parts,
    )
    val_batches: list[Batch] = []
    if cfg.validation and cfg.val_every:
        val_sampler = PatchSampler(
            [open_volume(v.path, v.raw, v.labels, v.myelin) for v in cfg.validation],
            spec.input_shape, spec.output_crop, None,
            background_kernel=cfg.loss.background_kernel, split_parts=cfg.loss.split_parts,
        )
        val_batches = val_sampler.fixed_batches(cfg.val_patches, cfg.batch_size, seed=cfg.seed + 1)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the data opened fine

    # ---- model, optimiser, precision
    model = build_model(spec).to(dev)
    if dev.type == "cpu" and cfg.cpu_onednn:
        use_onednn(model)
    oc = cfg.optimizer
    opt = torch.optim.Adam(
        model.parameters(), lr=oc.lr, betas=oc.betas, eps=oc.eps, amsgrad=oc.amsgrad,
        weight_decay=oc.weight_decay,
    )
    use_amp, amp_dtype = _autocast_setting(cfg, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    log = _Log(out_dir / "train.log", out_dir / "metrics.jsonl", to_console=not cfg.progress)
    start, best_val = 0, None
    if resume and latest_path.exists():
        state = read_checkpoint(latest_path)
        saved: ModelSpec = state["spec"]
        if saved.model_dump(exclude={"training"}) != spec.model_dump(exclude={"training"}):
            raise ConfigError(
                f"{latest_path}: the checkpoint's model differs from the config's model; "
                f"resume with the config it was trained with"
            )
        model.load_state_dict(state["state_dict"])
        if state.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {latest_path}: no optimizer state to resume from")
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        extra = state.get("extra", {})
        if "numpy_rng" in extra:
            rng.bit_generator.state = json.loads(extra["numpy_rng"])
        if "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
        if dev.type == "cuda" and extra.get("cuda_rng"):
            torch.cuda.set_rng_state_all(list(extra["cuda_rng"]))
        if extra.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(extra["scaler"])
        best_val = extra.get("best_val")
        history = _read_metrics(log.metrics, start)
        log.metrics.write_text("".join(json.dumps(r) + "\n" for r in history))
        log.line(f"resumed from {latest_path} at step {start}", console=True)
    else:
        if resume:
            log.line(f"--resume: no {LATEST} in {out_dir}, starting from scratch", console=True)
        if cfg.init_checkpoint is not None:
            state = read_checkpoint(cfg.init_checkpoint)
            saved = state["spec"]
            if saved.model_dump(exclude={"training"}) != spec.model_dump(exclude={"training"}):
                raise ConfigError(
                    f"init_checkpoint {cfg.init_checkpoint}: its model ({saved.kind}, {saved.preset}, widths "
                    f"{list(saved.widths)}) differs from the config's ({spec.kind}, {spec.preset}, widths "
                    f"{list(spec.widths)})"
                )
            model.load_state_dict(state["state_dict"])
            log.line(f"initialised from {cfg.init_checkpoint}", console=True)
        log.metrics.write_text("")
        history = []
    (out_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    log.line(
        f"start: kind {spec.kind}, preset {spec.preset}, widths {list(spec.widths)}, "
        f"{count_parameters(model)} parameters, device {dev}"
        + (f" ({torch.get_num_threads()} threads)" if dev.type == "cpu" else "")
        + f", amp {use_amp and amp_dtype}"
        + f", batch {cfg.batch_size}" + (f" x {cfg.accumulate} accumulated" if cfg.accumulate > 1 else "")
        + f", steps {start}->{total_steps}, "
        f"{len(volumes)} training / {len(cfg.validation)} validation volumes"
    )

    def metadata(step: int) -> ModelSpec:
        return spec.model_copy(
            update={
                "training": {
                    "step": step,
                    "batch_size": cfg.batch_size,
                    "train_volumes": [str(v.path) for v in cfg.train],
                    "validation_volumes": [str(v.path) for v in cfg.validation],
                    "voxel_size": list(volumes[0].voxel_size or ()),
                    "best_val": best_val,
                    "loss": cfg.loss.model_dump(),
                    "optimizer": cfg.optimizer.model_dump(),
                    "seed": cfg.seed,
                    "device": str(dev),
                    "torch": torch.__version__,
                    "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            }
        )

    def save_all(step: int) -> None:
        extra = {
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "best_val": best_val,
            "config": cfg.model_dump_json(),
        }
        spec_now = metadata(step)
        save_checkpoint(latest_path, model, spec_now, opt, step=step, extra=extra)
        save_checkpoint(model_path, model, spec_now, step=step, half=cfg.half_weights)
        try:
            plot_loss_curves(history, out_dir / "loss.png", title=f"{spec.kind} ({spec.preset}) to step {step}")
        except Exception as e:  # a plot must never kill a run
            log.line(f"warning: loss plot failed: {type(e).__name__}: {e}")

    def validate(step: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            for b in val_batches:
                terms = compute_loss(model, b.to(dev), cfg, spec).as_floats()
                n = b.raw.shape[0]
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                count += n
        return {k: v / count for k, v in sums.items()}

    from tqdm import tqdm

    bar = tqdm(
        total=total_steps, initial=start, disable=not cfg.progress, dynamic_ncols=True,
        desc=f"train {spec.kind}", file=sys.stderr, mininterval=1.0,
    )
    model.train()
    last_terms: dict[str, float] = {}
    window: dict[str, float] = {}
    window_n = 0
    t_window = time.perf_counter()
    sec_per_step = None
    bad_steps = 0
    step = start
    try:
        while step < total_steps:
            opt.zero_grad(set_to_none=True)
            finite, parts_terms = True, []
            for _ in range(cfg.accumulate):
                batch = sampler.batch(rng, cfg.batch_size).to(dev)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                    terms = compute_loss(model, batch, cfg, spec)
                if not torch.isfinite(terms.total):
                    finite = False
                    break
                scaler.scale(terms.total / cfg.accumulate).backward()
                parts_terms.append(terms.as_floats())
            if not finite:
                opt.zero_grad(set_to_none=True)
                bad_steps += 1
                log.line(f"warning: step {step + 1}: non-finite loss, update skipped")
                if bad_steps >= 20:
                    raise RuntimeError("20 consecutive non-finite losses; stopping")
                step += 1
                bar.update(1)
                continue
            bad_steps = 0
            scaler.step(opt)
            scaler.update()
            step += 1
            last_terms = {k: float(np.mean([t[k] for t in parts_terms])) for k in parts_terms[0]}
            for k, v in last_terms.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in last_terms.items()}, refresh=False)

            if step % cfg.log_every == 0 or step == total_steps:
                mean = {k: v / window_n for k, v in window.items()}
                sec_per_step = (time.perf_counter() - t_window) / window_n
                rec = {"step": step, "split": "train", **mean, "s_per_step": sec_per_step}
                history.append(rec)
                log.record(rec)
                log.line(f"step {step}/{total_steps} {_fmt(mean)} | {sec_per_step:.3f} s/step")
                window, window_n, t_window = {}, 0, time.perf_counter()
            t_aside = time.perf_counter()  # validation / checkpoint time is not step time
            if val_batches and (step % cfg.val_every == 0 or step == total_steps):
                model.eval()
                val = validate(step)
                model.train()
                improved = best_val is None or val["total"] < best_val
                if improved:
                    best_val = val["total"]
                    save_checkpoint(best_path, model, metadata(step), step=step, half=cfg.half_weights)
                rec = {"step": step, "split": "val", **val}
                history.append(rec)
                log.record(rec)
                log.line(f"val step {step} {_fmt(val)}" + (" (best)" if improved else ""), console=True)
            if step % cfg.checkpoint_every == 0 and step != total_steps:
                save_all(step)
            t_window += time.perf_counter() - t_aside
    finally:
        bar.close()
    save_all(step)
    if cfg.export is not None:
        src = best_path if (val_batches and best_path.exists()) else model_path
        dst = Path(cfg.export)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        log.line(f"exported {src.name} to {dst}", console=True)
    best_txt = f", best val {best_val:.4g}" if best_val is not None else ""
    log.line(f"done at step {step}: {_fmt(last_terms)}{best_txt}", console=True)
    return TrainResult(
        step=step,
        out_dir=out_dir,
        latest=latest_path,
        model=model_path,
        best=best_path if best_path.exists() else None,
        last_train=last_terms,
        best_val=best_val,
        seconds_per_step=sec_per_step,
    )
