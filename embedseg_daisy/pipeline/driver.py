"""The scheduler side of a run: validate, register, plan, and run daisy phases.

Block completion lives in the store.  Every daisy task gets a ``skip_mask`` built
from the store's done blocks (grid indices from write-ROI offsets), so a killed run
re-run with the same command skips what is done and redoes the rest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import RunConfig, config_dict, config_hash, results_diff, results_hash
from ..errors import InputError, RunConflictError, StoreError
from ..geometry import parse_block_key
from ..store import Store, open_store
from ..volumes import check_finite, check_input, claim_output, open_volume
from .launchers import WorkerLauncher
from .progress import ProgressObserver
from .registry import stages_for
from .stage import RunContext, Stage

log = logging.getLogger("embedseg_daisy.run")

#: stages run in phases; stages inside a phase are chained block-wise by daisy
PHASES: tuple[tuple[str, ...], ...] = (
    ("predict", "fragments", "fragment_edges", "agglomerate", "relabel", "contacts"),
    ("candidates",),
    ("mea",),
    ("relabel_mea",),
)


@dataclass
class RunOutcome:
    ok: bool
    failed: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def ensure_input(cfg: RunConfig) -> None:
    """Generate the synthetic input the config asks for, if it does not exist yet."""
    syn = cfg.input.synthetic
    if syn is None or Path(cfg.input.container, cfg.input.raw).exists():
        return
    from ..synth import generate_volume, write_volume

    log.info("generating synthetic input %s (shape %s, seed %d)", cfg.input.container, syn.shape, syn.seed)
    volume = generate_volume(
        tuple(syn.shape),
        syn.seed,
        missing_sections=syn.missing_sections,
        slips=syn.slips,
        voxel_size=tuple(cfg.input.voxel_size_nm),
    )
    write_volume(cfg.input.container, volume, voxel_size=tuple(cfg.input.voxel_size_nm))


def validate_inputs(run: RunContext) -> None:
    """Fail early, before anything is written, on inputs that cannot work."""
    cfg = run.cfg
    raw = open_volume(cfg.input.container, cfg.input.raw)
    check_input(raw, name="raw", dtypes=("uint8", "float32"), voxel_size=run.voxel_size)
    if cfg.input.roi_offset is not None and not raw.roi.contains(run.volume_roi):
        raise InputError(
            f"input.roi_offset/roi_shape {run.volume_roi} (voxels) is not inside the raw dataset ROI {raw.roi}"
        )
    if cfg.input.labels:
        labels = open_volume(cfg.input.container, cfg.input.labels)
        check_input(labels, name="labels", dtypes=("uint64", "uint32", "int64", "int32"), voxel_size=run.voxel_size)
    stages = set(cfg.selected_stages)
    if stages & {"predict", "mea", "baseline_predict", "baseline_mea"}:
        check_finite(raw, run.volume_roi, name="raw")  # float raws only; the nets read raw
    if stages & {"predict", "mea"}:
        _check_checkpoint(cfg.predict.checkpoint, "embedding")
    if stages & {"baseline_predict"}:
        _check_checkpoint(cfg.baseline.checkpoint or "", "affinity")


def _check_checkpoint(path: str, kind: str) -> None:
    from ..nn.checkpoint import load_checkpoint

    load_checkpoint(path, device="cpu", expected_kind=kind)


def check_run(store: Store, cfg: RunConfig, *, force: bool = False) -> tuple[list[dict], bool]:
    """Refuse a store that holds another run, or a resume with changed results.

    Returns the stored run rows and whether the output container's marker may be
    re-claimed under the new results hash.  That is allowed with ``force``, and also when
    the stored config, read with this version's defaults, affects results exactly as
    the new one does.  Then the hashes differ only because this version added fields
    (every new field defaults to the old behaviour), and a run started before an upgrade
    resumes without ``--force``.
    """
    rhash = results_hash(cfg)
    resolved = config_dict(cfg)
    existing = store.find("runs")
    if not existing:
        return existing, force
    held = existing[0]
    if held["run_id"] != cfg.name:
        raise RunConflictError(
            f"store {store.describe()} holds run '{held['run_id']}', not '{cfg.name}'; "
            "use another store path/database for a different run"
        )
    if held["results_hash"] == rhash or force:
        return existing, force
    changed = results_diff(_results_part(held["config"]), _results_part(resolved))
    if changed:
        raise RunConflictError(
            f"run '{cfg.name}' was started with a different configuration; changed fields that "
            f"affect results: {', '.join(changed)}. Re-run with --force to continue "
            "anyway (finished blocks keep their old results), or use a new output path."
        )
    return existing, True


def register_run(store: Store, cfg: RunConfig, existing: list[dict]) -> None:
    """Record the run's resolved config and hashes in the store."""
    now = time.time()
    store.put(
        "runs",
        [
            {
                "run_id": cfg.name,
                "config": config_dict(cfg),
                "config_hash": config_hash(cfg),
                "results_hash": results_hash(cfg),
                "created": existing[0]["created"] if existing else now,
                "updated": now,
                "version": _version(),
            }
        ],
    )


def _results_part(resolved: dict) -> dict:
    """The result-affecting part of a resolved config (the same filter results_hash uses)."""
    from ..config import _strip_runtime, parse_config

    try:
        return _strip_runtime(parse_config(resolved, "stored run config"))
    except Exception:  # a config from an older version: compare everything
        return resolved


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("embedseg-daisy")
    except Exception:
        return "dev"


def plan(run: RunContext, names: list[str] | None = None) -> list[list[Stage]]:
    """Stage objects per phase for the selected stages."""
    selected = names or run.cfg.selected_stages
    phases: list[list[Stage]] = []
    for phase in PHASES:
        stages: list[Stage] = []
        for prefix in ("", "baseline_"):
            for base in phase:
                name = prefix + base
                if name in selected:
                    stages.extend(stages_for(run, name))
        if stages:
            phases.append(stages)
    return phases


def skip_mask(stage: Stage, store: Store) -> np.ndarray:
    mask = np.zeros(stage.grid_shape, dtype=np.uint8)
    for key in store.done_blocks(stage.stage_id):
        index = parse_block_key(key)
        if all(0 <= i < n for i, n in zip(index, stage.grid_shape)):
            mask[index] = 1
    return mask


def make_task(stage: Stage, run: RunContext, store: Store, mask: np.ndarray | None = None):
    import daisy.v2 as daisy

    total, read, write = stage.task_rois()
    workers = stage.workers
    launcher = WorkerLauncher(
        config_path=str(Path(run.config_path).resolve()) if run.config_path else "",
        stage_id=stage.stage_id,
        run_name=run.cfg.name,
        run_dir=str(run.run_dir),
        launcher=workers.launcher,
        gpu=stage.gpu,
    )
    task = daisy.Task(
        stage.stage_id,
        total,
        read,
        write,
        process_function=launcher,
        read_write_conflict=False,
        fit="shrink",
        max_workers=workers.workers,
        max_retries=workers.max_retries,
        timeout=workers.timeout_s,
        skip_mask=skip_mask(stage, store) if mask is None else mask,
    )
    if tuple(task.block_grid_shape) != tuple(stage.grid_shape):
        raise RuntimeError(
            f"daisy's block grid {tuple(task.block_grid_shape)} for {stage.stage_id} differs from ours "
            f"{stage.grid_shape}; skip masks would be misaligned"
        )
    return task


def record_plan(store: Store, stages: list[Stage]) -> None:
    now = time.time()
    store.put(
        "stages",
        [
            {
                "stage": s.stage_id,
                "total_blocks": s.total_blocks,
                "block_shape": list(s.block_shape),
                "roi_offset": list(s.write_total_roi.offset),
                "roi_shape": list(s.write_total_roi.shape),
                "kind": s.kind,
                "updated": now,
            }
            for s in stages
        ],
    )


def run_phases(run: RunContext, store: Store, phases: list[list[Stage]], *, progress: bool = True) -> RunOutcome:
    import daisy.v2 as daisy
    from daisy import logging as daisy_logging

    daisy_logging.set_log_basedir(str(run.run_dir / "daisy_logs"))
    outcome = RunOutcome(ok=True)
    for stages in phases:
        for stage in stages:
            stage.prepare()
        observer = ProgressObserver(run.run_dir / "progress.jsonl", bars=progress)
        masks = {s.stage_id: skip_mask(s, store) for s in stages}
        pipeline = None
        by_graph: dict[str, list[Stage]] = {}
        for s in stages:
            by_graph.setdefault(getattr(s, "graph", "mws"), []).append(s)
        for chain in by_graph.values():
            # A resumed run skips the finished head of each chain altogether: daisy would
            # start (and load models in) workers only to find no block.  A finished stage
            # after an unfinished one stays, so block dependencies remain transitive.
            while chain and masks[chain[0].stage_id].all():
                observer.record_done_before(chain.pop(0))
            if not chain:
                continue
            part = make_task(chain[0], run, store, masks[chain[0].stage_id])
            for t in chain[1:]:
                part = part + make_task(t, run, store, masks[t.stage_id])
            pipeline = part if pipeline is None else pipeline | part
        if pipeline is None:
            continue
        states = daisy.run_blockwise(pipeline, progress=observer, return_states=True, summary=progress)
        for task_id, state in states.items():
            if state.completed_count < state.total_block_count:
                missing = state.total_block_count - state.completed_count
                outcome.ok = False
                outcome.failed[task_id] = missing
                reason = state.last_worker_error or state.abandon_reason or ""
                try:
                    failed_rows = store.find("blocks", {"stage": task_id, "status": "failed"}, fields=["block", "error"])
                except StoreError as err:  # the store may be what failed: still report daisy's view
                    failed_rows = []
                    reason = reason or str(err)
                detail = "; ".join(f"{r['block']}: {r['error']}" for r in failed_rows[:3])
                outcome.messages.append(
                    f"{task_id}: {missing} of {state.total_block_count} blocks not done"
                    + (f" ({detail})" if detail else "")
                    + (f" [{reason.splitlines()[0]}]" if reason and not detail else "")
                )
        if not outcome.ok:
            break
    return outcome


def dry_run(run: RunContext, phases: list[list[Stage]], store: Store | None) -> str:
    lines = [f"run '{run.cfg.name}': volume {run.volume_roi} (voxels), voxel size {run.voxel_size} nm"]
    for i, stages in enumerate(phases, 1):
        lines.append(f"phase {i}:")
        for s in stages:
            done = len(store.done_blocks(s.stage_id)) if store is not None else 0
            lines.append(f"  {s.describe()}; done {done}; context {s.context}")
    return "\n".join(lines)


def execute(config_path: str, cfg: RunConfig, *, force: bool = False, dry: bool = False, progress: bool = True) -> RunOutcome:
    if dry:
        run = RunContext(cfg, config_path)
        validate_inputs(run)
        phases = plan(run)
        store = None
        if cfg.store.backend == "mongodb" or cfg.store_path().exists():
            store = open_store(cfg)
            store.ping()
        print(dry_run(run, phases, store))
        return RunOutcome(ok=True)
    ensure_input(cfg)
    run = RunContext(cfg, config_path)
    validate_inputs(run)
    phases = plan(run)
    store = open_store(cfg)
    store.ping()
    try:
        existing, reclaim = check_run(store, cfg, force=force)
        claim_output(cfg.output.container, cfg.name, results_hash(cfg), force=reclaim)
        register_run(store, cfg, existing)
        record_plan(store, [s for phase in phases for s in phase])
        return run_phases(run, store, phases, progress=progress)
    finally:
        store.close()


def progress_summary(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
