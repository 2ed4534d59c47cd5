"""The store interface every backend implements.

The store is the authority on what a run has done: block completion, fragments,
graph edges, contacts, candidates and decisions.  A stage writes its arrays first
and marks the block done last, so a block marked done always has its data.

Filters (``where``) are small dicts understood by both backends::

    {"stage": "predict"}                       # equality
    {"block": {"in": ["0_0_0", "0_0_1"]}}      # membership
    {"id": {"gte": 10, "lt": 20}}              # ranges (gt, gte, lt, lte)
    {"status": {"ne": "done"}}                 # inequality

Rows go in and come out as lists of dicts, or column-wise as dicts of equal-length
sequences (numpy arrays are accepted; numpy scalars are converted, since BSON has no
unsigned 64-bit type and ids must stay below 2**63).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Rows = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
Where = Mapping[str, Any]


def numeric_dtype(collection: str, field: str) -> np.dtype:
    """numpy dtype of a numeric field (``int`` -> int64, ``float`` -> float64)."""
    from .schema import COLLECTIONS

    kind = COLLECTIONS[collection].fields.get(field)
    if kind not in ("int", "float"):
        raise ValueError(f"{collection}.{field} is {kind!r}, not a numeric field")
    return np.dtype(np.int64 if kind == "int" else np.float64)


class Store(abc.ABC):
    """A run's persistent record.  Safe to use from several processes at once;
    create one instance per process (pymongo clients are not fork-safe)."""

    backend: str = "abstract"

    # -- lifecycle -------------------------------------------------------------
    @abc.abstractmethod
    def ping(self) -> None:
        """Raise :class:`~embedseg_daisy.errors.StoreError` if the store is unreachable."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the store lives, without credentials (safe to print)."""

    # -- generic rows ------------------------------------------------------------
    @abc.abstractmethod
    def put(self, collection: str, rows: Rows, *, replace_where: Where | None = None) -> int:
        """Upsert rows on the collection's natural key, in one batch.

        With ``replace_where``, rows matching it that are not in ``rows`` are deleted
        first, so a re-run block that produces a different row set leaves no stale
        rows.  Returns the number of rows written.
        """

    @abc.abstractmethod
    def find(
        self,
        collection: str,
        where: Where | None = None,
        *,
        fields: Sequence[str] | None = None,
        order_by: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows matching ``where`` as dicts."""

    def find_columns(
        self,
        collection: str,
        where: Where | None = None,
        *,
        fields: Sequence[str],
        order_by: Sequence[str] | None = None,
    ) -> dict[str, list[Any]]:
        """Rows matching ``where`` column-wise (cheaper for large reads)."""
        rows = self.find(collection, where, fields=fields, order_by=order_by)
        return {f: [r.get(f) for r in rows] for f in fields}

    def find_arrays(self, collection: str, where: Where | None = None, *, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric fields of the rows matching ``where`` as numpy arrays (int fields as
        int64, float fields as float64).  For reads of millions of rows (fragment-graph
        edges): a backend may stream them so the peak is the arrays, not one Python
        object per value."""
        cols = self.find_columns(collection, where, fields=fields)
        return {f: np.asarray(cols[f], dtype=numeric_dtype(collection, f)) for f in fields}

    @abc.abstractmethod
    def count(self, collection: str, where: Where | None = None) -> int: ...

    @abc.abstractmethod
    def delete(self, collection: str, where: Where) -> int:
        """Delete rows matching ``where``; returns how many."""

    @abc.abstractmethod
    def update(self, collection: str, where: Where, values: Mapping[str, Any]) -> int:
        """Set ``values`` on every row matching ``where``; returns how many matched."""

    # -- aggregation ---------------------------------------------------------------
    @abc.abstractmethod
    def aggregate_edges(self, collection: str, where: Where | None = None) -> dict[str, list[Any]]:
        """Edge contributions grouped by ``(u, v)``: max ``attr_key``/``rep_key``, summed
        ``aff_sum``/``aff_count``.  Column-wise result with keys
        ``u, v, attr_key, rep_key, aff_sum, aff_count``."""

    @abc.abstractmethod
    def count_by(self, collection: str, field: str, where: Where | None = None) -> dict[Any, int]:
        """Number of rows per distinct value of ``field``."""

    # -- leases (work that is not a block grid) -----------------------------------
    @abc.abstractmethod
    def lease(
        self,
        collection: str,
        where: Where,
        *,
        owner: str,
        lease_seconds: float,
        limit: int = 1,
        now: float | None = None,
    ) -> list[dict[str, Any]]:
        """Atomically claim up to ``limit`` rows matching ``where`` whose status is
        ``pending``, or ``leased`` with an expired lease; set status ``leased``, owner
        and expiry, increment ``attempts``.  Two processes never get the same row while
        its lease is valid."""

    @abc.abstractmethod
    def complete_lease(
        self, collection: str, key: Mapping[str, Any], *, owner: str, values: Mapping[str, Any]
    ) -> bool:
        """Record the outcome of a leased row (status ``decided`` plus ``values``) only if
        ``owner`` still holds the lease.  Returns False (and writes nothing) when the
        lease was lost, so every row is decided exactly once."""

    # -- blocks (convenience over the "blocks" collection) --------------------------
    def mark_block_done(self, stage: str, block: str, **info: Any) -> None:
        self.put("blocks", [{"stage": stage, "block": block, "status": "done", **info}])

    def mark_block_failed(self, stage: str, block: str, **info: Any) -> None:
        self.put("blocks", [{"stage": stage, "block": block, "status": "failed", **info}])

    def done_blocks(self, stage: str) -> set[str]:
        rows = self.find("blocks", {"stage": stage, "status": "done"}, fields=["block"])
        return {r["block"] for r in rows}

    def reset_blocks(self, stage: str, blocks: Sequence[str] | None = None) -> int:
        where: dict[str, Any] = {"stage": stage}
        if blocks is not None:
            where["block"] = {"in": list(blocks)}
        return self.delete("blocks", where)
