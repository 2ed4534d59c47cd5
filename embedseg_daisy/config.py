"""Run configuration: one pydantic model tree, validated strictly.

Unknown keys and impossible values are rejected with a message naming the field.
Sizes are in voxels ``(z, y, x)`` unless a name says ``_nm``.  Relative paths are
resolved against the current working directory.

``python -m embedseg_daisy.config --schema`` prints the JSON schema;
``python -m embedseg_daisy.config check CONFIG`` validates a file.

Fields marked ``affects_results=False`` (workers, launchers, timeouts, the store,
devices, batch sizes) may change between a run and its resume; changing any other
field changes :func:`results_hash` and a resume is refused unless forced.  A field
added by a newer version must default to the old behaviour: a run started before the
upgrade then resumes unforced (its stored config, read with the new defaults, affects
results as before; see ``pipeline.driver.check_run``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .offsets import PAPER_ATTRACTIVE, PAPER_REPULSIVE

_RUNTIME = {"affects_results": False}

PositiveVec3 = tuple[
    Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]
]
NonNegVec3 = tuple[
    Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]
]
Offset = tuple[int, int, int]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]

#: The stages of a run, in pipeline order.
STAGES = (
    "predict",
    "fragments",
    "fragment_edges",
    "agglomerate",
    "relabel",
    "contacts",
    "candidates",
    "mea",
    "relabel_mea",
)
BASELINE_STAGES = (
    "baseline_predict",
    "baseline_fragments",
    "baseline_fragment_edges",
    "baseline_agglomerate",
    "baseline_relabel",
    "baseline_contacts",
    "baseline_candidates",
    "baseline_mea",
    "baseline_relabel_mea",
)
StageName = Literal[STAGES + BASELINE_STAGES]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# -- workers ------------------------------------------------------------------------


class LauncherConfig(Strict):
    """How a stage's workers are started.  ``local`` runs subprocesses on this
    machine; ``docker`` runs ``docker run`` of ``image`` per worker (blocking), with
    ``DAISY_CONTEXT`` passed in and the container named
    ``embedseg-<run>-<stage>-<worker>`` so it can be swept; ``slurm`` runs
    ``srun`` (or ``sbatch --wait``) per worker."""

    kind: Literal["local", "docker", "slurm"] = "local"
    image: str | None = Field(None, description="docker image (docker launcher)")
    docker_args: list[str] = Field(default_factory=list, description="extra `docker run` arguments")
    slurm_mode: Literal["srun", "sbatch"] = "srun"
    slurm_args: list[str] = Field(default_factory=list, description="extra srun/sbatch arguments")
    python: str = Field("python", description="python executable on the worker node / in the image")
    gpus: list[str] | None = Field(
        None,
        description="GPU ids leased to this stage's workers, one per worker at a time "
        "(CUDA_VISIBLE_DEVICES / docker --gpus device=ID). None: no GPU assignment.",
    )
    config_path_in_worker: str | None = Field(
        None,
        description="path of the config file as the worker sees it (container mounts); "
        "default: the same path",
    )

    @model_validator(mode="after")
    def _image_for_docker(self):
        if self.kind == "docker" and not self.image:
            raise ValueError("launcher.image is required when launcher.kind is 'docker'")
        return self


class WorkersConfig(Strict):
    workers: int = Field(1, ge=1, json_schema_extra=_RUNTIME)
    timeout_s: float = Field(
        600.0, gt=0, description="per-block timeout (daisy preempts a stuck block)", json_schema_extra=_RUNTIME
    )
    max_retries: int = Field(2, ge=0, json_schema_extra=_RUNTIME)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig, json_schema_extra=_RUNTIME)


# -- data -----------------------------------------------------------------------------


class SyntheticInput(Strict):
    """Generate the input volume with ``embedseg_daisy.synth`` if the container does
    not exist yet (demo runs)."""

    shape: PositiveVec3 = (32, 256, 256)
    seed: int = 0
    missing_sections: int = Field(0, ge=0)
    slips: int = Field(0, ge=0)


class InputConfig(Strict):
    container: str = Field(..., description="zarr container holding the raw volume")
    raw: str = Field("raw", description="raw dataset (uint8, z y x)")
    labels: str | None = Field(
        None, description="optional ground-truth dataset (uint64/uint32, 0 = background) for evaluation"
    )
    voxel_size_nm: PositiveVec3 = Field((29, 12, 12), description="expected voxel size, nm, z y x")
    roi_offset: NonNegVec3 | None = Field(None, description="process only this sub-volume: offset in voxels")
    roi_shape: PositiveVec3 | None = Field(None, description="sub-volume shape in voxels")
    synthetic: SyntheticInput | None = None

    @model_validator(mode="after")
    def _roi_pair(self):
        if (self.roi_offset is None) != (self.roi_shape is None):
            raise ValueError("input.roi_offset and input.roi_shape must be given together")
        return self


class OutputConfig(Strict):
    container: str = Field(
        ...,
        description="zarr container for every output array (moving it does not change results)",
        json_schema_extra=_RUNTIME,
    )


class OffsetsConfig(Strict):
    """Metric-graph edges, voxels (z, y, x).  Attractive edges (nearest neighbours by
    default) have priority a in the Mutex Watershed, repulsive ones 1 − a."""

    attractive: list[Offset] = Field(default_factory=lambda: [list(o) for o in PAPER_ATTRACTIVE])
    repulsive: list[Offset] = Field(default_factory=lambda: [list(o) for o in PAPER_REPULSIVE])

    @field_validator("attractive", "repulsive", mode="before")
    @classmethod
    def _shape(cls, value, info):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of [z, y, x] offsets, found {type(value).__name__}")
        for i, off in enumerate(value):
            if not isinstance(off, (list, tuple)) or len(off) != 3:
                raise ValueError(f"entry {i} must be [z, y, x] (3 integers), found {off!r}")
            if any(isinstance(v, bool) or not isinstance(v, int) for v in off):
                raise ValueError(f"entry {i} must hold integers, found {off!r}")
            if all(v == 0 for v in off):
                raise ValueError(f"entry {i} is the zero offset, which is not an edge")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if not self.attractive:
            raise ValueError("offsets.attractive must hold at least one offset")
        nearest = {(-1, 0, 0), (0, -1, 0), (0, 0, -1)}
        missing = nearest - {tuple(o) for o in self.attractive}
        if missing:
            raise ValueError(
                "offsets.attractive must contain the three nearest-neighbour offsets "
                f"(-1,0,0), (0,-1,0), (0,0,-1) (contacts and mean affinity use them); missing {sorted(missing)}"
            )
        seen: set[tuple[int, int, int]] = set()
        for off in list(self.attractive) + list(self.repulsive):
            t = tuple(off)
            if t in seen or tuple(-v for v in t) in seen:
                raise ValueError(f"offset {list(t)} appears twice (an offset and its negative are the same edge)")
            seen.add(t)
        return self

    @property
    def all(self) -> list[tuple[int, int, int]]:
        return [tuple(o) for o in self.attractive] + [tuple(o) for o in self.repulsive]

    @property
    def attractive_mask(self) -> list[bool]:
        return [True] * len(self.attractive) + [False] * len(self.repulsive)

    def nearest_channels(self) -> list[int]:
        """Channels of the offsets (-1,0,0), (0,-1,0), (0,0,-1), in z, y, x order."""
        index = {tuple(o): i for i, o in enumerate(self.all)}
        return [index[(-1, 0, 0)], index[(0, -1, 0)], index[(0, 0, -1)]]


# -- stages -------------------------------------------------------------------------------


class PredictConfig(WorkersConfig):
    checkpoint: str = Field(..., description="embedding-net checkpoint (.pt) written by embedseg_daisy.train")
    block_shape_vox: PositiveVec3 = Field((32, 384, 384), description="write block, voxels")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=_RUNTIME)
    batch_size: int = Field(2, ge=1, json_schema_extra=_RUNTIME)
    write_embeddings: bool = Field(
        False,
        description="also write each block's embeddings (from the patch centred nearest each voxel) for viewing",
    )


class SegmentConfig(WorkersConfig):
    block_shape_vox: PositiveVec3 = Field((32, 256, 256))
    theta_mask: Fraction = Field(
        0.6,
        description="foreground restriction: a voxel is background when its predicted "
        "background probability is >= theta_mask; every edge with a background endpoint is removed",
    )
    implementation: Literal["lean", "mwatershed"] = Field(
        "lean",
        description="lean: our exact blockwise MWS (block-size invariant); "
        "mwatershed: the reference library per block with context (not exactly invariant)",
    )
    context_vox: NonNegVec3 = Field(
        (4, 16, 16),
        description="context around each block. lean: the MWS region is the block plus this "
        "context (fewer, larger fragments; the result is exact either way); mwatershed and the "
        "baseline watershed: context seen before cropping to the block",
    )


class AgglomerateConfig(WorkersConfig):
    fanout: PositiveVec3 = Field(
        (2, 2, 2), description="blocks per region per axis at each level of the hierarchy"
    )
    exact_region_vox: int | None = Field(
        2**24,
        ge=0,
        description="largest region (voxels) agglomerated with the exact rules: the result is the "
        "whole-volume Mutex Watershed whatever the block size, but an exact region's memory grows with its "
        "volume. Larger regions, except the last, decide locally (a plain graph MWS over the region; only "
        "clusters with an attractive edge leaving it stay open), so memory follows region surfaces; "
        "approximate, see docs/design.md. null: exact at every level",
    )
    last_level_tile_blocks: PositiveVec3 | None = Field(
        None,
        description="split the last level into tiles of this many segment blocks per axis (z, y, x): "
        "each tile runs the graph MWS on the cross-region edges its blocks own, in parallel, and one "
        "connected-components step over their merges (~18 bytes per merged cluster) replaces the "
        "whole-volume graph, whose memory follows the volume's cross-section. Used when the level below "
        "the last decides locally (regions above exact_region_vox); "
        "approximate (a tile does not see mutexes outside it). null: one last region",
    )


class RelabelConfig(WorkersConfig):
    pass


class ContactsConfig(WorkersConfig):
    block_shape_vox: PositiveVec3 = Field((32, 256, 256))
    shards: int = Field(4, ge=1, description="segment-pair shards for stitching contacts")
    gap_vox: int = Field(
        2,
        ge=0,
        le=8,
        description="segments separated by at most this many background voxels in-plane count as "
        "touching (a self-contact across a thin membrane is a contact); edges through background "
        "carry affinity 0 (the foreground-restricted metric graph), so such contacts score S = 0",
    )
    theta_self_touch: Fraction = Field(0.25, description="candidate if best contact score S > theta")
    min_segment_size_vox: int = Field(
        150,
        ge=0,
        description="both segments of a candidate must have at least this many voxels: a Mutex Watershed "
        "leaves thousands of one-to-few-voxel segments along membranes, and each one wedged between two "
        "contacts of a neighbour would otherwise be a candidate costing a network forward in MEA "
        "(150 = the baseline's dust size at 12x12x29 nm, Fig. S10; 0 disables)",
    )


class MEAConfig(WorkersConfig):
    theta_d: float = Field(1.5, gt=0, description="merge if L1 distance of mean embeddings < theta_d")
    focal_window_vox: PositiveVec3 = Field((5, 32, 32))
    lease_s: float = Field(300.0, gt=0, json_schema_extra=_RUNTIME)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=_RUNTIME)
    enabled: bool = True


class WatershedConfig(Strict):
    """Fig. S10, 12 nm: T_min 1%, T_max 99%, T_size (150, 1%), T_dust 150."""

    t_min: Fraction = 0.01
    t_max: Fraction = 0.99
    size_threshold: int = Field(150, ge=0)
    size_affinity: Fraction = 0.01
    dust: int = Field(150, ge=0)


class BaselineConfig(Strict):
    enabled: bool = False
    checkpoint: str | None = Field(None, description="affinity-net checkpoint")
    watershed: WatershedConfig = Field(default_factory=WatershedConfig)
    maa_threshold: Fraction = Field(0.5, description="merge while mean affinity >= threshold")
    thresholds: list[Fraction] = Field(
        default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8], description="for merge-split curves"
    )

    @model_validator(mode="after")
    def _needs_checkpoint(self):
        if self.enabled and not self.checkpoint:
            raise ValueError("baseline.checkpoint is required when baseline.enabled is true")
        return self


class EvaluateConfig(Strict):
    log_base: Literal["e", "2"] = Field("e", description="VI in nats (e) or bits (2)")
    plot: str | None = Field(None, description="merge-split plot PNG path")


class StoreConfig(Strict):
    backend: Literal["sqlite", "mongodb"] = "sqlite"
    path: str | None = Field(None, description="SQLite file; default <output container>.store.sqlite")
    uri: SecretStr | None = Field(
        None, description="MongoDB URI (secret; prefer uri_env). TLS/auth options pass through."
    )
    uri_env: str = Field("EMBEDSEG_MONGODB_URI", description="environment variable holding the URI")
    database: str | None = Field(None, description="MongoDB database; default embedseg_<run name>")
    timeout_s: float = Field(5.0, gt=0)


class RunConfig(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    input: InputConfig
    output: OutputConfig
    offsets: OffsetsConfig = Field(default_factory=OffsetsConfig)
    predict: PredictConfig
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    agglomerate: AgglomerateConfig = Field(default_factory=AgglomerateConfig)
    relabel: RelabelConfig = Field(default_factory=RelabelConfig)
    contacts: ContactsConfig = Field(default_factory=ContactsConfig)
    mea: MEAConfig = Field(default_factory=MEAConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    store: StoreConfig = Field(default_factory=StoreConfig, json_schema_extra=_RUNTIME)
    stages: list[StageName] | None = Field(  # type: ignore[valid-type]
        None,
        description="stages to run, default: every stage (baseline ones when baseline.enabled)",
        json_schema_extra=_RUNTIME,
    )

    @property
    def selected_stages(self) -> list[str]:
        if self.stages is not None:
            return [s for s in STAGES + BASELINE_STAGES if s in self.stages]
        stages = list(STAGES)
        if not self.mea.enabled:
            stages = [s for s in stages if s not in ("mea", "relabel_mea")]
        if self.baseline.enabled:
            extra = list(BASELINE_STAGES)
            if not self.mea.enabled:
                extra = [s for s in extra if s not in ("baseline_mea", "baseline_relabel_mea")]
            stages += extra
        return stages

    def store_path(self) -> Path:
        if self.store.path:
            return Path(self.store.path)
        return Path(str(Path(self.output.container)).rstrip("/") + ".store.sqlite")


# -- loading ----------------------------------------------------------------------------------


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field (not part of the configuration schema)"
    elif first["type"] == "missing":
        msg = "required field is missing"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: field '{loc}': {msg}{more}"


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return parse_config(data, str(path))


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as JSON-able data, secrets masked."""
    return json.loads(cfg.model_dump_json())


def _strip_runtime(model: BaseModel) -> Any:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("affects_results") is False:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[name] = _strip_runtime(value)
        else:
            out[name] = json.loads(json.dumps(value, default=str))
    return out


def results_hash(cfg: RunConfig) -> str:
    """Hash of every field that can change results (not workers, launchers, store...)."""
    return digest(_strip_runtime(cfg))


def digest(data: Any) -> str:
    """Short, order-independent hash of JSON-able ``data`` (the run's hashes are these)."""
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_hash(cfg: RunConfig) -> str:
    return digest(config_dict(cfg))


def results_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of result-affecting fields that differ between two resolved configs."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += results_diff(a, b, name + ".")
        elif a != b:
            diffs.append(name)
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedseg_daisy.config", description=__doc__.split("\n")[0])
    parser.add_argument("--schema", action="store_true", help="print the JSON schema of a run config")
    sub = parser.add_subparsers(dest="cmd")
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("config")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(RunConfig.model_json_schema(), indent=2))
        return 0
    if args.cmd == "check":
        try:
            cfg = load_config(args.config)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{args.config}: valid (results hash {results_hash(cfg)}); stages: {', '.join(cfg.selected_stages)}")
        return 0
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
