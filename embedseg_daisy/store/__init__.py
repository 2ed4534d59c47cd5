"""The run's store: SQLite by default (one file beside the output), MongoDB for clusters.

Create one store per process with :func:`open_store`; pymongo clients are not
fork-safe and SQLite connections must not cross processes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import Rows, Store, Where
from .schema import COLLECTIONS, Collection, collection

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig

__all__ = ["COLLECTIONS", "Collection", "Rows", "Store", "Where", "collection", "open_store", "mongo_uri"]


def mongo_uri(cfg: "RunConfig") -> str:
    """The MongoDB URI from the config's secret or its environment variable."""
    if cfg.store.uri is not None:
        return cfg.store.uri.get_secret_value()
    uri = os.environ.get(cfg.store.uri_env)
    if not uri:
        raise ConfigError(
            f"store.backend is 'mongodb' but neither store.uri nor the environment variable "
            f"{cfg.store.uri_env} holds a MongoDB URI"
        )
    return uri


def open_store(cfg: "RunConfig") -> Store:
    """Open the store a run config names (no network round trip; call ``ping``)."""
    if cfg.store.backend == "sqlite":
        from .sqlite import SQLiteStore

        path = cfg.store_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return SQLiteStore(path)
    from .mongo import MongoStore

    database = cfg.store.database or f"embedseg_{cfg.name}".replace(".", "_")
    return MongoStore(mongo_uri(cfg), database, connect_timeout_s=cfg.store.timeout_s)
