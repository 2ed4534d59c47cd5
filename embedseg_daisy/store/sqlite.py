"""SQLite backend: one file per run, the default store.

Tables come from :data:`~embedseg_daisy.store.schema.COLLECTIONS` (typed columns,
``json`` fields as JSON text, the natural key as the ``PRIMARY KEY`` of a
``WITHOUT ROWID`` table, the declared indexes).  The file runs in WAL mode so readers
never block the writer; several worker processes may write at once: every write is
one ``BEGIN IMMEDIATE`` transaction, SQLite's busy timeout waits for the lock, and a
``database is locked`` that still escapes is retried with backoff.

The connection is opened lazily in the process that uses the store and reopened after
a fork or unpickling (the pid is checked on every call), so a store object may be
handed to worker processes.  One connection per process, shared by its threads under
a lock.

WAL needs shared memory between the processes that open the file: keep the file on a
local filesystem (not NFS / SMB).  Multi-node runs use the MongoDB backend.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from embedseg_daisy.errors import StoreError

from .base import Rows, Store, Where, numeric_dtype
from .convert import (
    check_fields,
    get_collection as _coll,
    convert_values,
    json_dumps,
    json_loads,
    normalize_key,
    normalize_rows,
    parse_order,
    parse_where,
    require_lease_fields,
)
from .schema import COLLECTIONS, Collection


_SQL_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT", "json": "TEXT"}
_EDGE_FIELDS = ("u", "v", "attr_key", "rep_key", "aff_sum", "aff_count")
#: ``in`` lists longer than this are passed as one JSON parameter (``json_each``)
_MAX_INLINE_IN = 256

# Connections inherited through fork are never closed in the child (closing could
# checkpoint or unlink the parent's WAL); they are parked here instead.
_ABANDONED: list[sqlite3.Connection] = []


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return True
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _ddl(c: Collection) -> list[str]:
    cols = []
    for f, t in c.fields.items():
        cols.append(f"{_q(f)} {_SQL_TYPES[t]}" + (" NOT NULL" if f in c.key else ""))
    pk = ", ".join(_q(k) for k in c.key)
    out = [f"CREATE TABLE IF NOT EXISTS {_q(c.name)} ({', '.join(cols)}, PRIMARY KEY ({pk})) WITHOUT ROWID"]
    for idx in c.indexes:
        name = "__".join((c.name, *idx))
        out.append(f"CREATE INDEX IF NOT EXISTS {_q(name)} ON {_q(c.name)} ({', '.join(_q(f) for f in idx)})")
    return out


def _where_sql(conds: list[tuple[str, str, Any]]) -> tuple[list[str], list[Any]]:
    """Parsed filter -> SQL clauses (ANDed) and parameters.

    NULL handling follows MongoDB's: ``{"f": None}`` matches missing values,
    ``ne`` / ``nin`` match rows where the field is missing."""
    clauses: list[str] = []
    params: list[Any] = []
    for field, op, val in conds:
        col = _q(field)
        if op == "eq":
            if val is None:
                clauses.append(f"{col} IS NULL")
            else:
                clauses.append(f"{col} = ?")
                params.append(val)
        elif op == "ne":
            if val is None:
                clauses.append(f"{col} IS NOT NULL")
            else:
                clauses.append(f"{col} IS NOT ?")
                params.append(val)
        elif op in ("in", "nin"):
            has_null = any(v is None for v in val)
            vals = [v for v in val if v is not None]
            if not vals:
                member = "0"
            elif len(vals) <= _MAX_INLINE_IN:
                member = f"{col} IN ({', '.join('?' * len(vals))})"
                params.extend(vals)
            else:
                member = f"{col} IN (SELECT value FROM json_each(?))"
                params.append(json_dumps(vals))
            if op == "in":
                clauses.append(f"({member} OR {col} IS NULL)" if has_null else member)
            else:
                if has_null:
                    clauses.append(f"({col} IS NOT NULL AND NOT ({member}))")
                else:
                    clauses.append(f"({col} IS NULL OR NOT ({member}))")
        else:
            sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
            clauses.append(f"{col} {sym} ?")
            params.append(val)
    return clauses, params


def _where_clause(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


class SQLiteStore(Store):
    """The run's store in one SQLite file (see the module docstring)."""

    backend = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        busy_timeout_s: float = 60.0,
        lock_retry_s: float = 600.0,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.busy_timeout_s = float(busy_timeout_s)
        self.lock_retry_s = float(lock_retry_s)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()

    # -- pickling / fork -------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "busy_timeout_s": self.busy_timeout_s, "lock_retry_s": self.lock_retry_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], busy_timeout_s=state["busy_timeout_s"], lock_retry_s=state["lock_retry_s"])

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- connection --------------------------------------------------------------------
    def _after_fork(self) -> None:
        """In a process other than the one that opened the connection: park the inherited
        connection (never used or closed here) and replace the lock, which another
        thread of the parent may have held at fork time."""
        if self._pid is not None and self._pid != os.getpid():
            if self._conn is not None:
                _ABANDONED.append(self._conn)
            self._conn = None
            self._pid = None
            self._lock = threading.RLock()

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._conn is not None and self._pid == pid:
            return self._conn
        self._after_fork()
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise StoreError(f"cannot open SQLite store {self.path}: directory {parent} does not exist")
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"SQLite store {self.path}: cannot switch to WAL mode (got {mode!r}); "
                    "is the file on a network filesystem?"
                )
            conn.execute("PRAGMA synchronous=NORMAL")
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, pid
        return conn

    @staticmethod
    def _ensure_schema(conn: sqlite3.Connection) -> None:
        existing = {
            r[0]: None for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
        }
        missing_cols: list[str] = []
        need = []
        for c in COLLECTIONS.values():
            if c.name not in existing:
                need.extend(_ddl(c))
                continue
            info = conn.execute(f"PRAGMA table_info({_q(c.name)})").fetchall()
            have = {r[1] for r in info}
            key = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            if key != c.key:
                raise StoreError(
                    f"table {c.name!r} has the key {key} but this version expects {c.key}: the store "
                    "file comes from an older version; start a new output (or delete the file)"
                )
            for f, t in c.fields.items():
                if f not in have:
                    missing_cols.append(f"ALTER TABLE {_q(c.name)} ADD COLUMN {_q(f)} {_SQL_TYPES[t]}")
            for idx in c.indexes:
                if "__".join((c.name, *idx)) not in existing:
                    need.extend(_ddl(c)[1:])
                    break
        if not need and not missing_cols:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in need:
                conn.execute(stmt)
            for stmt in missing_cols:
                try:
                    conn.execute(stmt)
                except sqlite3.OperationalError as e:  # added by another process meanwhile
                    if "duplicate column" not in str(e):
                        raise
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)``, retrying while the database is locked."""
        self._after_fork()
        deadline = time.monotonic() + self.lock_retry_s
        attempt = 0
        while True:
            try:
                with self._lock:
                    return fn(self._connection())
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise StoreError(f"SQLite store {self.path}: {e}") from e
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"SQLite store {self.path} stayed locked for {self.lock_retry_s:.0f} s: {e}"
                    ) from e
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store {self.path}: {type(e).__name__}: {e}") from e
            time.sleep(min(1.0, 0.002 * 2**attempt) * (0.5 + random.random()))
            attempt += 1

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` inside one ``BEGIN IMMEDIATE`` transaction (retried as a whole)."""

        def tx(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return self._run(tx)

    # -- lifecycle -----------------------------------------------------------------------
    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def close(self) -> None:
        self._after_fork()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._pid = None

    def describe(self) -> str:
        return f"SQLite {self.path}"

    # -- rows ----------------------------------------------------------------------------
    def put(
        self,
        collection: str,
        rows: Rows,
        *,
        replace_where: Where | None = None,
    ) -> int:
        """Upsert rows on the natural key (a row is replaced as a whole: fields it does not
        give become NULL).  With ``replace_where``, the matching rows are deleted in the
        same transaction before the new rows go in, so no stale row survives and no
        reader sees a half-replaced set."""
        c = _coll(collection)
        batch = normalize_rows(c, rows)
        rw = None if replace_where is None else _where_sql(parse_where(c, replace_where))
        names = list(c.fields)
        cols = []
        for f in names:
            col = batch.column(f)
            if c.fields[f] == "json":
                col = [json_dumps(v) for v in col]
            cols.append(col)
        params = list(zip(*cols)) if batch.n else []
        nonkey = [f for f in names if f not in c.key]
        sql = (
            f"INSERT INTO {_q(c.name)} ({', '.join(_q(f) for f in names)}) "
            f"VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT ({', '.join(_q(k) for k in c.key)}) DO "
            + ("UPDATE SET " + ", ".join(f"{_q(f)} = excluded.{_q(f)}" for f in nonkey) if nonkey else "NOTHING")
        )

        def fn(conn: sqlite3.Connection) -> int:
            if rw is not None:
                clauses, wparams = rw
                conn.execute(f"DELETE FROM {_q(c.name)}{_where_clause(clauses)}", wparams)
            if params:
                conn.executemany(sql, params)
            return batch.n

        if not params and rw is None:
            return 0
        return self._write(fn)

    def _select(
        self,
        c: Collection,
        where: Where | None,
        fields: list[str],
        order_by: Sequence[str] | None,
        limit: int | None,
    ) -> list[tuple]:
        clauses, params = _where_sql(parse_where(c, where))
        order = parse_order(c, order_by)
        sql = f"SELECT {', '.join(_q(f) for f in fields)} FROM {_q(c.name)}{_where_clause(clauses)}"
        if order:
            sql += " ORDER BY " + ", ".join(f"{_q(f)} {'ASC' if asc else 'DESC'}" for f, asc in order)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._run(lambda conn: conn.execute(sql, params).fetchall())

    def find(
        self,
        collection: str,
        where: Where | None = None,
        *,
        fields: Sequence[str] | None = None,
        order_by: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        c = _coll(collection)
        names = check_fields(c, fields)
        rows = self._select(c, where, names, order_by, limit)
        json_idx = [i for i, f in enumerate(names) if c.fields[f] == "json"]
        if json_idx:
            out = []
            for r in rows:
                r = list(r)
                for i in json_idx:
                    r[i] = json_loads(r[i])
                out.append(dict(zip(names, r)))
            return out
        return [dict(zip(names, r)) for r in rows]

    def find_columns(
        self,
        collection: str,
        where: Where | None = None,
        *,
        fields: Sequence[str],
        order_by: Sequence[str] | None = None,
    ) -> dict[str, list[Any]]:
        c = _coll(collection)
        names = check_fields(c, fields)
        rows = self._select(c, where, names, order_by, None)
        cols = [list(col) for col in zip(*rows)] if rows else [[] for _ in names]
        for i, f in enumerate(names):
            if c.fields[f] == "json":
                cols[i] = [json_loads(v) for v in cols[i]]
        return dict(zip(names, cols))

    def find_arrays(self, collection: str, where: Where | None = None, *, fields: Sequence[str]) -> dict[str, np.ndarray]:
        c = _coll(collection)
        names = check_fields(c, fields)
        dtype = np.dtype([(f, numeric_dtype(collection, f)) for f in names])
        clauses, params = _where_sql(parse_where(c, where))
        sql = f"SELECT {', '.join(_q(f) for f in names)} FROM {_q(c.name)}{_where_clause(clauses)}"

        def read(conn: sqlite3.Connection) -> dict[str, np.ndarray]:
            # preallocate from a count and stream in chunks: the peak is the arrays plus
            # one chunk of Python rows (rows written meanwhile by other workers grow it)
            n = int(conn.execute(f"SELECT COUNT(*) FROM {_q(c.name)}{_where_clause(clauses)}", params).fetchone()[0])
            out = {f: np.empty(n, dtype[f]) for f in names}
            cursor = conn.execute(sql, params)
            pos = 0
            while rows := cursor.fetchmany(1 << 16):
                chunk = np.array(rows, dtype=dtype)
                end = pos + len(chunk)
                if end > len(out[names[0]]):
                    out = {f: np.resize(a, max(end, 2 * len(a))) for f, a in out.items()}
                for f in names:
                    out[f][pos:end] = chunk[f]
                pos = end
            return {f: a[:pos] for f, a in out.items()}

        return self._run(read)

    def count(self, collection: str, where: Where | None = None) -> int:
        c = _coll(collection)
        clauses, params = _where_sql(parse_where(c, where))
        sql = f"SELECT COUNT(*) FROM {_q(c.name)}{_where_clause(clauses)}"
        return int(self._run(lambda conn: conn.execute(sql, params).fetchone()[0]))

    def delete(self, collection: str, where: Where) -> int:
        c = _coll(collection)
        clauses, params = _where_sql(parse_where(c, where))
        sql = f"DELETE FROM {_q(c.name)}{_where_clause(clauses)}"
        return int(self._write(lambda conn: conn.execute(sql, params).rowcount))

    def update(self, collection: str, where: Where, values: Mapping[str, Any]) -> int:
        """Set ``values`` (``None`` clears a field) on the matching rows; key fields
        cannot be updated.  Returns the number of matching rows."""
        c = _coll(collection)
        vals = convert_values(c, values)
        clauses, params = _where_sql(parse_where(c, where))
        if not vals:
            return self.count(collection, where)
        sets = ", ".join(f"{_q(f)} = ?" for f in vals)
        set_params = [json_dumps(v) if c.fields[f] == "json" else v for f, v in vals.items()]
        sql = f"UPDATE {_q(c.name)} SET {sets}{_where_clause(clauses)}"
        return int(self._write(lambda conn: conn.execute(sql, set_params + params).rowcount))

    # -- aggregation --------------------------------------------------------------------------
    def aggregate_edges(self, collection: str, where: Where | None = None) -> dict[str, list[Any]]:
        """Edge contributions grouped by ``(u, v)``, sorted by ``(u, v)``."""
        c = _coll(collection)
        missing = [f for f in _EDGE_FIELDS if f not in c.fields]
        if missing:
            raise StoreError(f"collection {c.name!r} holds no edge contributions (lacks {missing})")
        clauses, params = _where_sql(parse_where(c, where))
        sql = (
            'SELECT "u", "v", MAX("attr_key"), MAX("rep_key"), COALESCE(SUM("aff_sum"), 0.0), '
            f'COALESCE(SUM("aff_count"), 0) FROM {_q(c.name)}{_where_clause(clauses)} '
            'GROUP BY "u", "v" ORDER BY "u", "v"'
        )
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall())
        cols = [list(col) for col in zip(*rows)] if rows else [[] for _ in _EDGE_FIELDS]
        out = dict(zip(_EDGE_FIELDS, cols))
        out["aff_sum"] = [float(x) for x in out["aff_sum"]]
        return out

    def count_by(self, collection: str, field: str, where: Where | None = None) -> dict[Any, int]:
        c = _coll(collection)
        check_fields(c, [field])
        if c.fields[field] == "json":
            raise StoreError(f"collection {c.name!r}: cannot count by json field {field!r}")
        clauses, params = _where_sql(parse_where(c, where))
        sql = f"SELECT {_q(field)}, COUNT(*) FROM {_q(c.name)}{_where_clause(clauses)} GROUP BY {_q(field)}"
        return {k: int(n) for k, n in self._run(lambda conn: conn.execute(sql, params).fetchall())}

    # -- leases ---------------------------------------------------------------------------------
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
        """Claim up to ``limit`` rows (in key order) whose status is ``pending`` or whose
        lease expired (``leased`` with ``lease_expires`` < now, or no expiry)."""
        c = _coll(collection)
        require_lease_fields(c)
        if limit is None or int(limit) < 1:
            return []
        now = time.time() if now is None else float(now)
        clauses, params = _where_sql(parse_where(c, where))
        clauses.append(
            "(\"status\" = 'pending' OR (\"status\" = 'leased' AND "
            '("lease_expires" < ? OR "lease_expires" IS NULL)))'
        )
        params.append(now)
        key = ", ".join(_q(k) for k in c.key)
        names = list(c.fields)
        sql = (
            f"UPDATE {_q(c.name)} SET \"status\" = 'leased', \"lease_owner\" = ?, "
            '"lease_expires" = ?, "attempts" = COALESCE("attempts", 0) + 1 '
            f"WHERE ({key}) IN (SELECT {key} FROM {_q(c.name)}{_where_clause(clauses)} "
            f"ORDER BY {key} LIMIT ?) RETURNING {', '.join(_q(f) for f in names)}"
        )
        all_params = [str(owner), now + float(lease_seconds), *params, int(limit)]
        rows = self._write(lambda conn: conn.execute(sql, all_params).fetchall())
        out = []
        for r in rows:
            d = dict(zip(names, r))
            for f in names:
                if c.fields[f] == "json":
                    d[f] = json_loads(d[f])
            out.append(d)
        out.sort(key=lambda d: tuple(d[k] for k in c.key))
        return out

    def complete_lease(
        self,
        collection: str,
        key: Mapping[str, Any],
        *,
        owner: str,
        values: Mapping[str, Any],
    ) -> bool:
        """Set status ``decided`` plus ``values`` (which may override ``status``) if
        ``owner`` still holds the row's lease."""
        c = _coll(collection)
        require_lease_fields(c)
        k = normalize_key(c, key)
        vals = {"status": "decided", **convert_values(c, values)}
        sets = ", ".join(f"{_q(f)} = ?" for f in vals)
        set_params = [json_dumps(v) if c.fields[f] == "json" else v for f, v in vals.items()]
        cond = " AND ".join(f"{_q(f)} = ?" for f in c.key)
        sql = (
            f"UPDATE {_q(c.name)} SET {sets} WHERE {cond} AND \"status\" = 'leased' "
            'AND "lease_owner" = ?'
        )
        params = [*set_params, *k, str(owner)]
        return self._write(lambda conn: conn.execute(sql, params).rowcount) == 1
