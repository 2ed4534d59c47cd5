"""Shared helpers for the benchmark scripts (not a benchmark itself).

* machine facts (cores, load average, whether training jobs share the machine);
* results: ``benchmarks/results/<name>.json`` plus one line appended to ``BENCHMARKS.md``;
* memory: the process's own peak RSS (``VmHWM``, resettable through
  ``/proc/self/clear_refs``) and a sampler that follows a process tree and records,
  per daisy task, the peak RSS and CPU time of its worker processes (worker processes
  carry ``DAISY_CONTEXT`` in their environment, which names the task);
* oracle data: synthetic ground truth, affinities and background mask derived from it
  (``embedseg_daisy.mws.synthetic.label_affinities``, the same recipe as
  ``tests/pipeline_helpers.oracle_outputs``), generated slab-wise so 10^8 voxels fit in
  memory, cached under ``benchmarks/work/data``;
* run configs for ``python -m embedseg_daisy.run`` on that data: the output container
  gets symbolic links to the cached ``affinities``/``mask`` datasets, so every run
  starts fresh without copying gigabytes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
WORK = BENCH / "work"
DATA = WORK / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VOXEL_SIZE = (29, 12, 12)


# ----------------------------------------------------------------------------- machine
def training_jobs() -> list[str]:
    """Command lines of running ``embedseg_daisy.train`` jobs (they compete for cores)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "embedseg_daisy.train" in cmd and "pgrep" not in cmd:
            out.append(cmd.strip())
    return out


def machine() -> dict:
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "training_jobs_running": len(training_jobs()),
    }
    try:
        import daisy

        info["daisy"] = getattr(daisy, "__version__", "?")
    except Exception:  # pragma: no cover
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def command_line() -> str:
    rel = os.path.relpath(sys.argv[0], ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0]
    return " ".join(["python", rel, *sys.argv[1:]])


def save(name: str, report: dict, headline: str, *, out: str | None = None) -> Path:
    """Write the JSON report and append a line to BENCHMARKS.md."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    m = report.get("machine") or machine()
    load_end = [round(v, 2) for v in os.getloadavg()]
    line = (
        f"| {m['date_utc']} | `{report.get('command', command_line())}` | {m['cpus']} cores, "
        f"load {m['loadavg'][0]:.1f}->{load_end[0]:.1f}"
        f"{', training running' if m.get('training_jobs_running') else ''} | {headline} | "
        f"[{path.name}](benchmarks/results/{path.name}) |\n"
    )
    md = ROOT / "BENCHMARKS.md"
    if not md.exists():
        md.write_text(_BENCHMARKS_HEADER)
    with open(md, "a") as f:
        f.write(line)
    print(f"wrote {path}; appended a line to BENCHMARKS.md")
    return path


_BENCHMARKS_HEADER = """# Benchmarks

Every script in `benchmarks/` prints its results, writes them as JSON to
`benchmarks/results/<name>.json` and appends one line here (exact command, machine, load,
headline numbers).  Medians over the stated repeats; ratios are measured in the same run.
The machine is a shared 2-core VM: the load average at start and end is part of every line,
and lines measured while training jobs ran say so.

## Log

| date (UTC) | command | machine | headline | result |
|---|---|---|---|---|
"""


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


# ------------------------------------------------------------------------------ memory
def status_kib(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def children_maxrss_kib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _proc_children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _daisy_task(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"DAISY_CONTEXT="):
            ctx = item.split(b"=", 1)[1].decode(errors="replace")
            for part in ctx.split(":"):
                if part.startswith("task_id="):
                    return part[len("task_id="):]
            return ctx
    return None


_CLK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK  # utime + stime


class TreeSampler:
    """Follow the process tree under ``root_pid`` every ``interval_s`` seconds.

    Per process: the latest ``VmHWM`` (peak RSS so far, so sampling misses only growth in
    the last interval before exit) and CPU seconds; per daisy task (from the worker's
    ``DAISY_CONTEXT``): the largest worker peak, the number of worker processes and their
    summed CPU seconds (at the last sample)."""

    def __init__(self, root_pid: int, interval_s: float = 0.2):
        self.root = root_pid
        self.interval = interval_s
        self.procs: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        stack, seen = [self.root], set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            stack += _proc_children(pid)
            try:
                hwm = status_kib("VmHWM", pid)
            except (OSError, KeyError):
                continue
            rec = self.procs.get(pid)
            if rec is None:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    cmd = ""
                rec = self.procs[pid] = {"task": _daisy_task(pid), "cmd": cmd[:200], "peak_kib": 0, "cpu_s": 0.0}
            rec["peak_kib"] = max(rec["peak_kib"], hwm)
            cpu = _cpu_s(pid)
            if cpu is not None:
                rec["cpu_s"] = cpu

    def by_task(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for rec in self.procs.values():
            # daisy's spawn wrapper and the worker itself both carry the context: the
            # worker is the `daisy._subprocess_worker` process
            if rec["task"] is None or "_subprocess_worker" not in rec["cmd"]:
                continue
            t = out.setdefault(rec["task"], {"workers": 0, "peak_worker_rss_mib": 0.0, "worker_cpu_s": 0.0})
            t["workers"] += 1
            t["peak_worker_rss_mib"] = max(t["peak_worker_rss_mib"], rec["peak_kib"] / 1024)
            t["worker_cpu_s"] += rec["cpu_s"]
        return out

    def driver_peak_mib(self) -> float:
        rec = self.procs.get(self.root)
        return rec["peak_kib"] / 1024 if rec else 0.0


# --------------------------------------------------------------------------- oracle data
def reach(offsets) -> tuple[int, int, int]:
    return tuple(max(abs(int(o[a])) for o in offsets) for a in range(3))


def make_labels(shape, seed: int, kind: str = "synth") -> tuple[np.ndarray, np.ndarray | None]:
    """Ground truth and raw: the synthetic EM generator's (``synth``), or a Voronoi
    partition with one-voxel boundaries and no raw (``voronoi``, cheaper)."""
    if kind == "synth":
        from embedseg_daisy.synth import generate_volume

        vol = generate_volume(tuple(shape), seed, voxel_size=VOXEL_SIZE)
        return vol.labels, vol.raw
    from embedseg_daisy.mws.synthetic import voronoi_labels

    rng = np.random.default_rng(seed)
    return voronoi_labels(tuple(shape), max(8, int(np.prod(shape)) // 20000), rng), None


def oracle_slab(labels: np.ndarray, z0: int, z1: int, offsets, noise: float, seed: int, affinities: str = "embedding"):
    """Affinities (uint8, (K, z1-z0, Y, X)) and background mask for sections [z0, z1).

    ``label``: ~1 inside an object, ~0 across, plus independent Gaussian noise per edge
    (``label_affinities``, the recipe of the pipeline tests): a stress case -- the edge
    order is random inside objects, so regions freeze many small fragments at their faces.
    ``embedding``: Eq. 6 on synthetic embeddings with spatially smooth noise (std
    ``noise``, correlation 2 voxels; ``embedding_affinities``), like a network's output.
    Both are computed on the slab plus a margin (offset reach, plus the smoothing
    support), so a slab's affinities do not depend on how the volume is cut."""
    from embedseg_daisy.mws.synthetic import label_affinities

    rz = reach(offsets)[0] + (8 if affinities == "embedding" else 0)
    a, b = max(0, z0 - rz), min(labels.shape[0], z1 + rz)
    rng = np.random.default_rng([seed, z0])
    if affinities == "label":
        affs = label_affinities(labels[a:b], offsets, rng, noise=noise)[:, z0 - a : z1 - a]
    else:
        # the same vector per object id in every slab: draw them from the seed alone
        affs = _embedding_affinities_fixed(labels[a:b], offsets, rng, noise, seed)[:, z0 - a : z1 - a]
    lab = labels[z0:z1]
    background = (lab == 0).astype(np.float32)
    background = np.clip(background + rng.normal(0, 0.1, lab.shape).astype(np.float32) * np.sign(0.5 - background), 0, 1)
    return np.ascontiguousarray(affs), np.rint(background * 255).astype(np.uint8)


def _embedding_affinities_fixed(labels, offsets, rng, sigma, seed, dim=6):
    """``embedding_affinities`` with object vectors that depend only on (seed, id), so
    slabs of one volume agree on every object's vector."""
    from embedseg_daisy.mws.synthetic import embedding_affinities

    vec = np.random.default_rng([seed, 999]).uniform(-3.0, 3.0, size=(int(labels.max()) + 1, dim))
    return embedding_affinities(labels, offsets, rng, dim=dim, sigma=sigma, object_vectors=vec)


def oracle_data(shape, *, seed: int = 1, noise: float = 0.1, kind: str = "synth", affinities: str = "embedding",
                chunk=(16, 128, 128), verbose=True) -> Path:
    """A cached directory with ``input.zarr`` (raw, labels) and ``oracle.zarr``
    (affinities with the paper's 12 offsets, mask), all chunked ``chunk``."""
    from funlib.geometry import Roi

    from embedseg_daisy.offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE
    from embedseg_daisy.volumes import prepare_volume

    shape = tuple(int(s) for s in shape)
    chunk = tuple(min(c, s) for c, s in zip(chunk, shape))
    name = f"{kind}-{affinities}-{'x'.join(map(str, shape))}-s{seed}-n{noise}-c{'x'.join(map(str, chunk))}"
    out = DATA / name
    if (out / "done").exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    offsets = list(PAPER_ATTRACTIVE) + list(PAPER_REPULSIVE)
    labels, raw_data = make_labels(shape, seed, kind)
    t_labels = time.perf_counter() - t0
    roi = Roi((0, 0, 0), shape)
    inp = str(out / "input.zarr")
    raw = prepare_volume(inp, "raw", roi=roi, voxel_size=VOXEL_SIZE, dtype=np.uint8, chunk_shape=chunk)
    lab = prepare_volume(inp, "labels", roi=roi, voxel_size=VOXEL_SIZE, dtype=np.uint64, chunk_shape=chunk)
    orc = str(out / "oracle.zarr")
    aff = prepare_volume(orc, "affinities", roi=roi, voxel_size=VOXEL_SIZE, dtype=np.uint8, chunk_shape=chunk,
                         channels=len(offsets), attrs={"offsets": [list(o) for o in offsets]})
    msk = prepare_volume(orc, "mask", roi=roi, voxel_size=VOXEL_SIZE, dtype=np.uint8, chunk_shape=chunk)
    for z0 in range(0, shape[0], chunk[0]):
        z1 = min(shape[0], z0 + chunk[0])
        slab = Roi((z0, 0, 0), (z1 - z0, shape[1], shape[2]))
        a, m = oracle_slab(labels, z0, z1, offsets, noise, seed, affinities)
        aff.write(slab, a)
        msk.write(slab, m)
        lab.write(slab, labels[z0:z1])
        # raw is not read by the segmentation stages (MEA reads it)
        raw.write(slab, raw_data[z0:z1] if raw_data is not None else np.full((z1 - z0,) + shape[1:], 128, np.uint8))
    meta = {"shape": shape, "seed": seed, "noise": noise, "kind": kind, "affinities": affinities, "chunk": chunk,
            "objects": int(len(np.unique(labels)) - 1), "seconds_labels": t_labels,
            "seconds_total": time.perf_counter() - t0}
    (out / "meta.json").write_text(json.dumps(meta))
    del raw_data
    (out / "done").write_text("")
    if verbose:
        print(f"oracle data {shape} ({np.prod(shape) / 1e6:.1f} Mvox, {meta['objects']} objects) "
              f"in {meta['seconds_total']:.0f} s -> {out}", flush=True)
    return out


def load_oracle_arrays(data: Path):
    """(affinities uint8 (K, Z, Y, X), foreground bool, labels) of a cached data dir."""
    from embedseg_daisy.stages.fragments import foreground_from_mask
    from embedseg_daisy.volumes import open_volume

    a = open_volume(str(data / "oracle.zarr"), "affinities")
    m = open_volume(str(data / "oracle.zarr"), "mask")
    affs = a.read(a.roi)
    fg = foreground_from_mask(m.read(m.roi), 0.6)
    return affs, fg


def run_config(data: Path, run_dir: Path, name: str, *, block, stages, workers=1, fanout=(2, 2, 2),
               contacts_block=None, extra: dict | None = None, store: dict | None = None) -> Path:
    """Write a run config for ``data`` into ``run_dir`` (created fresh) and give its
    output container links to the oracle affinities and mask."""
    from embedseg_daisy.config import load_config, results_hash
    from embedseg_daisy.volumes import claim_output

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cfg = {
        "name": name,
        "input": {"container": str(data / "input.zarr"), "labels": "labels", "voxel_size_nm": list(VOXEL_SIZE)},
        "output": {"container": str(run_dir / "output.zarr")},
        "predict": {"checkpoint": str(run_dir / "unused.pt"), "block_shape_vox": list(block), "workers": workers},
        "segment": {"block_shape_vox": list(block), "workers": workers},
        "agglomerate": {"workers": workers, "fanout": list(fanout)},
        "relabel": {"workers": workers},
        "contacts": {"block_shape_vox": list(contacts_block or block), "workers": workers, "shards": max(2, workers)},
        "mea": {"workers": 1},
        "stages": list(stages),
    }
    if store:
        cfg["store"] = store
    for dotted, value in (extra or {}).items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = run_dir / "config.json"
    path.write_text(json.dumps(cfg, indent=1))
    parsed = load_config(path)
    claim_output(parsed.output.container, parsed.name, results_hash(parsed))
    if "predict" not in stages:
        for ds in ("affinities", "mask"):
            os.symlink(data / "oracle.zarr" / ds, run_dir / "output.zarr" / ds)
    return path


def run_pipeline(config: Path, *, timeout_s: float | None = None, interval_s: float = 0.2, extra_args=()) -> dict:
    """``python -m embedseg_daisy.run CONFIG`` in a subprocess, with its process tree
    sampled; returns wall time, summed CPU of the whole tree (RUSAGE_CHILDREN delta),
    per-task worker peaks and the per-block records of the store."""
    import resource

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    epoch0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "embedseg_daisy.run", str(config), "--no-progress", *extra_args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid, interval_s) as sampler:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f"run timed out after {timeout_s} s: {err[-2000:]}")
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    return {
        "wall_s": wall,
        "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "max_child_rss_mib": r1.ru_maxrss / 1024,
        "tasks": sampler.by_task(),
        "driver_peak_rss_mib": sampler.driver_peak_mib(),
        "started_epoch": epoch0,
    }


def block_records(config: Path, t0: float | None = None) -> dict[str, dict]:
    """Per stage: block count, summed and median block duration, and (with the run's
    start time ``t0``) when its first block started and its last block ended."""
    from embedseg_daisy.config import load_config
    from embedseg_daisy.store import open_store

    cfg = load_config(config)
    store = open_store(cfg)
    try:
        rows = store.find("blocks", {"status": "done"}, fields=["stage", "duration", "started"])
    finally:
        store.close()
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r["stage"], {"blocks": 0, "durations": [], "first_start": r["started"], "last_end": 0.0})
        s["blocks"] += 1
        s["durations"].append(float(r["duration"] or 0.0))
        s["first_start"] = min(s["first_start"], r["started"])
        s["last_end"] = max(s["last_end"], r["started"] + float(r["duration"] or 0.0))
    for s in out.values():
        d = s.pop("durations")
        s["block_seconds_sum"] = float(np.sum(d))
        s["block_seconds_median"] = float(np.median(d))
        s["block_seconds_max"] = float(np.max(d))
        first, last = s.pop("first_start"), s.pop("last_end")
        s["span_s"] = last - first
        if t0 is not None:
            s["first_block_start_s"] = first - t0
            s["last_block_end_s"] = last - t0
    return out


def vi_nats(a, b) -> dict:
    from embedseg_daisy.evaluation.metrics import variation_of_information

    v = variation_of_information(np.asarray(a), np.asarray(b))
    return {"split": float(v.split), "merge": float(v.merge), "total": float(v.split + v.merge)}


# ------------------------------------------------------------------ stages in a process
def stage_ids(config: Path, names) -> list[str]:
    """Stage ids, in pipeline order, that the configured stage names expand to."""
    from embedseg_daisy.config import load_config
    from embedseg_daisy.pipeline.registry import stages_for
    from embedseg_daisy.pipeline.stage import RunContext

    run = RunContext(load_config(config), str(config))
    return [s.stage_id for n in names for s in stages_for(run, n)]


def run_stage_serial(config: Path, stage_id: str, *, worker_store_calls: bool = True, warmup: bool = True) -> dict:
    """Run every block of one stage in this process, like one daisy worker would.

    The real stage object (``build_stage``), ``prepare`` (driver side) and ``setup``
    (once per worker), then per block: the worker loop's store calls (attempt lookup,
    "running" row, done mark) around ``stage.process``.  Peak memory is ``VmHWM`` reset
    after setup (what one worker holds beyond its imports and setup) and per block."""
    from embedseg_daisy.config import load_config
    from embedseg_daisy.pipeline.registry import build_stage
    from embedseg_daisy.pipeline.stage import RunContext
    from embedseg_daisy.store import open_store

    cfg = load_config(config)
    run = RunContext(cfg, str(config))
    stage = build_stage(run, stage_id)
    stage.prepare()
    t = time.perf_counter()
    stage.setup()
    setup_s = time.perf_counter() - t
    store = open_store(cfg) if worker_store_calls else None
    import itertools

    indices = list(itertools.product(*(range(n) for n in stage.grid_shape)))
    warm_s = 0.0
    if warmup and indices:
        # one untimed pass over the first block (blocks are idempotent): numba caches,
        # lazy imports, zarr/codec set-up -- a once-per-worker cost, reported separately
        t = time.perf_counter()
        stage.process(stage.block_at(indices[0]))
        warm_s = time.perf_counter() - t
    reset = reset_peak()
    rss0 = status_kib("VmRSS")
    blocks = []
    c0, w0 = time.process_time(), time.perf_counter()
    for idx in indices:
        info = stage.block_at(idx)
        reset_peak()
        rss_b = status_kib("VmRSS")
        cb, wb = time.process_time(), time.perf_counter()
        if store is not None:
            store.find("blocks", {"stage": stage_id, "block": info.key}, fields=["attempt"])
            store.put("blocks", [{"stage": stage_id, "block": info.key, "status": "running", "started": time.time(), "attempt": 1}])
        stage.process(info)
        if store is not None:
            store.mark_block_done(stage_id, info.key, duration=time.perf_counter() - wb, attempt=1)
        blocks.append({
            "key": info.key,
            "voxels": int(np.prod(info.write_roi.shape)),
            "wall_s": time.perf_counter() - wb,
            "cpu_s": time.process_time() - cb,
            "peak_over_rss_mib": (status_kib("VmHWM") - rss_b) / 1024,
            "peak_rss_mib": status_kib("VmHWM") / 1024,
        })
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "stage": stage_id,
        "blocks": len(blocks),
        "block_shape": list(stage.block_shape),
        "setup_s": setup_s,
        "warmup_first_block_s": warm_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_after_setup_mib": rss0 / 1024,
        "peak_rss_mib": max(b["peak_rss_mib"] for b in blocks) if blocks else rss0 / 1024,
        "peak_block_over_rss_mib": max(b["peak_over_rss_mib"] for b in blocks) if blocks else 0.0,
        "block_wall_s_median": float(np.median([b["wall_s"] for b in blocks])) if blocks else 0.0,
        "block_wall_s_max": float(np.max([b["wall_s"] for b in blocks])) if blocks else 0.0,
        "peak_reset": reset,
    }


def child(argv: list[str], *, timeout_s: float | None = None) -> dict:
    """Run ``python <argv>`` in a fresh interpreter and parse the JSON on its last stdout line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {argv} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def segmented_run(data: Path, run_dir: Path, name: str, *, block, workers: int = 2, stages=None, extra=None) -> Path:
    """A run whose segmentation stages are done (on oracle affinities), for benchmarks of
    later stages; reused when ``run_dir`` already holds a finished one for this data."""
    stages = list(stages or ["fragments", "fragment_edges", "agglomerate", "relabel"])
    marker = run_dir / "segmented.json"
    want = {"data": str(data), "block": list(block), "stages": stages, "extra": extra or {}}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return run_dir / "config.json"
    config = run_config(data, run_dir, name, block=block, stages=stages, workers=workers, extra=extra)
    r = run_pipeline(config)
    print(f"  prepared {stages} on {data.name} in {r['wall_s']:.0f} s", flush=True)
    marker.write_text(json.dumps(want))
    return config


def set_stages(config: Path, stages) -> None:
    """Change the ``stages`` of a run config (a runtime field: a resume accepts it)."""
    cfg = json.loads(config.read_text())
    cfg["stages"] = list(stages)
    config.write_text(json.dumps(cfg, indent=1))


def stage_summary(runs: list[dict], nvox: int) -> dict:
    cpu = median([r["cpu_s"] for r in runs])
    return {
        "blocks": runs[0]["blocks"],
        "block_shape": runs[0]["block_shape"],
        "cpu_s": cpu,
        "cpu_s_runs": [r["cpu_s"] for r in runs],
        "wall_s": median([r["wall_s"] for r in runs]),
        "voxels_per_cpu_s": nvox / cpu if cpu else None,
        "block_wall_s_median": median([r["block_wall_s_median"] for r in runs]),
        "warmup_first_block_s": median([r["warmup_first_block_s"] for r in runs]),
        "setup_s": median([r["setup_s"] for r in runs]),
        "rss_after_setup_mib": median([r["rss_after_setup_mib"] for r in runs]),
        "peak_rss_mib": median([r["peak_rss_mib"] for r in runs]),
        "peak_over_setup_mib": median([r["peak_rss_mib"] - r["rss_after_setup_mib"] for r in runs]),
        "peak_block_over_rss_mib": median([r["peak_block_over_rss_mib"] for r in runs]),
    }


def store_report(config: Path) -> dict:
    """Rows and bytes (table + its indexes, SQLite ``dbstat``) per collection."""
    import sqlite3

    from embedseg_daisy.config import load_config

    cfg = load_config(config)
    path = cfg.store_path()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_schema where type='table'")]
        sizes = dict(conn.execute("select name, sum(pgsize) from dbstat group by name").fetchall())
        idx = conn.execute("select name, tbl_name from sqlite_schema where type='index'").fetchall()
        out = {}
        for t in tables:
            n = conn.execute(f'select count(*) from "{t}"').fetchone()[0]
            b = sizes.get(t, 0) + sum(sizes.get(i, 0) for i, tn in idx if tn == t)
            if n:
                out[t] = {"rows": int(n), "bytes": int(b), "bytes_per_row": b / n}
        return out
    finally:
        conn.close()
