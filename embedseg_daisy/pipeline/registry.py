"""Stage names → stage objects.  Stages import lazily so CPU workers never import torch."""

from __future__ import annotations

import importlib
import re

from ..errors import NotImplementedStageError
from .stage import RunContext, Stage

#: config stage name -> "module:function" returning the list of Stage objects
_FACTORIES: dict[str, str] = {
    "predict": "embedseg_daisy.stages.predict:stages",
    "fragments": "embedseg_daisy.stages.fragments:stages",
    "fragment_edges": "embedseg_daisy.stages.fragment_edges:stages",
    "agglomerate": "embedseg_daisy.stages.agglomerate:stages",
    "relabel": "embedseg_daisy.stages.relabel:stages",
    "contacts": "embedseg_daisy.stages.contacts:stages",
    "candidates": "embedseg_daisy.stages.candidates:stages",
    "mea": "embedseg_daisy.stages.mea:stages",
    "relabel_mea": "embedseg_daisy.stages.relabel:mea_stages",
}


def _base_name(name: str) -> tuple[str, str]:
    """("baseline_fragments") -> ("fragments", "baseline"); ("fragments") -> ("fragments", "mws")."""
    if name.startswith("baseline_"):
        return name[len("baseline_") :], "baseline"
    return name, "mws"


def stages_for(run: RunContext, name: str) -> list[Stage]:
    """All stage objects a configured stage name expands to (e.g. one per agglomeration level)."""
    base, graph = _base_name(name)
    target = _FACTORIES.get(base)
    if target is None:
        raise NotImplementedStageError(f"stage '{name}' is not implemented")
    module_name, func = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise NotImplementedStageError(f"stage '{name}' is not implemented yet ({module_name} is missing)") from None
        raise
    return list(getattr(module, func)(run, graph))


def build_stage(run: RunContext, stage_id: str) -> Stage:
    """The stage object with a given id (as used for daisy tasks and store records)."""
    name = re.sub(r"_L\d+(_tiles)?$", "", stage_id)
    for stage in stages_for(run, name):
        if stage.stage_id == stage_id:
            return stage
    raise NotImplementedStageError(f"no stage with id '{stage_id}' in this run")
