"""MongoDB backend (pymongo): one database per run.

Every document's ``_id`` is its natural key written as a compact JSON array
(``'["mws","0_0_1",17,42]'``); the key fields are also stored top-level for queries,
and a non-unique index on the key fields plus the schema's declared indexes are
created once per process.  Upserts go by ``_id`` (fast on every server; compound
unique indexes are slow for upserts on some servers), one unordered ``bulk_write``
per call.  ``None`` values are not stored (a missing field reads back as ``None``,
and ``{"f": None}`` matches it, like SQL ``IS NULL`` in the SQLite backend).

The ``MongoClient`` is created lazily in the process that uses the store and again
after a fork or unpickling (pymongo clients are not fork-safe), so a store object may
be handed to worker processes.  TLS and authentication options travel in the URI
untouched; :meth:`MongoStore.describe` and every error message leave the credentials
out.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from embedseg_daisy.errors import StoreError

from .base import Rows, Store, Where
from .convert import (
    check_fields,
    convert_values,
    key_id,
    normalize_key,
    normalize_rows,
    parse_order,
    parse_where,
    require_lease_fields,
)
from .convert import (
    get_collection as _coll,
)
from .schema import Collection

_EDGE_FIELDS = ("u", "v", "attr_key", "rep_key", "aff_sum", "aff_count")
_SENSITIVE_OPTION = re.compile(r"pass|secret|token|key|authmechanismproperties", re.IGNORECASE)
_WRITE_TOKEN = "_w"  # hidden field: which put() last wrote a document (replace_where)
_MONGO_OPS = {"ne": "$ne", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte", "in": "$in", "nin": "$nin"}



def _plain(value: Any) -> Any:
    """BSON-decoded value -> plain Python (``bson.Int64`` -> ``int``, recursively)."""
    t = type(value)
    if t is int or t is float or t is str or value is None or t is bool:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# Clients inherited through fork are never used or closed in the child.
_ABANDONED: list[Any] = []


# -- URIs without credentials -------------------------------------------------------------
def _split_uri(uri: str) -> tuple[str, str, str, str, str]:
    """``(scheme, userinfo, hosts, path, query)``; raises StoreError for a non-MongoDB URI."""
    m = re.match(r"^(mongodb(?:\+srv)?://)(.*)$", uri, re.IGNORECASE | re.DOTALL)
    if not m:
        scheme = uri.split("://", 1)[0] if "://" in uri else "<none>"
        raise StoreError(f"not a MongoDB URI (scheme {scheme!r}); expected mongodb:// or mongodb+srv://")
    scheme, rest = m.group(1), m.group(2)
    rest, _, query = rest.partition("?")
    userinfo, at, authority = rest.rpartition("@")
    if not at:
        userinfo, authority = "", rest
    hosts, _, path = authority.partition("/")
    return scheme, userinfo, hosts, path, query


def redact_uri(uri: str) -> str:
    """The URI without ``user:password@`` and with sensitive option values masked."""
    try:
        scheme, _, hosts, path, query = _split_uri(uri)
    except StoreError:
        return "<invalid MongoDB URI>"
    out = f"{scheme}{hosts}/{path}"
    if query:
        opts = []
        for part in query.split("&"):
            name, eq, value = part.partition("=")
            opts.append(f"{name}=***" if eq and _SENSITIVE_OPTION.search(name) else part)
        out += "?" + "&".join(opts)
    return out


def uri_hosts(uri: str) -> str:
    try:
        return _split_uri(uri)[2] or "<no host>"
    except StoreError:
        return "<invalid MongoDB URI>"


def _secrets(uri: str) -> list[str]:
    """Strings that must never appear in a message: userinfo pieces (raw and decoded)
    and sensitive option values."""
    try:
        _, userinfo, _, _, query = _split_uri(uri)
    except StoreError:
        return [uri]
    out = []
    if userinfo:
        out.append(userinfo)
        _, _, password = userinfo.partition(":")
        if password:
            out += [password, urllib.parse.unquote(password)]
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq and value and _SENSITIVE_OPTION.search(name):
            out += [value, urllib.parse.unquote(value)]
    return sorted({s for s in out if len(s) >= 1}, key=len, reverse=True)


class MongoStore(Store):
    """The run's store in one MongoDB database (see the module docstring)."""

    backend = "mongodb"

    def __init__(self, uri: str, database: str, *, connect_timeout_s: float = 5.0) -> None:
        _split_uri(uri)  # a clear error for a non-MongoDB URI, without echoing it
        if not database or re.search(r'[/\\. "$\x00]', database) or len(database) > 63:
            raise StoreError(f"invalid MongoDB database name {database!r}")
        self.uri = uri
        self.database = database
        self.connect_timeout_s = float(connect_timeout_s)
        self._client: Any = None
        self._pid: int | None = None
        self._ready: set[str] = set()
        self._lock = threading.RLock()

    # -- pickling / fork -------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "database": self.database, "connect_timeout_s": self.connect_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["database"], connect_timeout_s=state["connect_timeout_s"])

    def __repr__(self) -> str:
        return f"MongoStore({self.describe()!r})"

    def describe(self) -> str:
        return f"MongoDB {redact_uri(self.uri)} database {self.database!r}"

    # -- client -------------------------------------------------------------------------------
    def _sanitize(self, text: str) -> str:
        for s in _secrets(self.uri):
            text = text.replace(s, "***")
        return text

    def _after_fork(self) -> None:
        """In a process other than the one that created the client: park the inherited
        client (never used or closed here) and replace the lock."""
        if self._pid is not None and self._pid != os.getpid():
            if self._client is not None:
                _ABANDONED.append(self._client)
            self._client = None
            self._pid = None
            self._ready = set()
            self._lock = threading.RLock()

    def _db(self):
        pid = os.getpid()
        if self._client is not None and self._pid == pid:
            return self._client[self.database]
        self._after_fork()
        with self._lock:
            if self._client is None:
                import pymongo

                ms = max(1, int(self.connect_timeout_s * 1000))
                query = _split_uri(self.uri)[4].lower()
                kwargs: dict[str, Any] = {"appname": "embedseg-daisy"}
                if "serverselectiontimeoutms" not in query:
                    kwargs["serverSelectionTimeoutMS"] = ms
                if "connecttimeoutms" not in query:
                    kwargs["connectTimeoutMS"] = ms
                try:
                    self._client = pymongo.MongoClient(self.uri, **kwargs)
                except Exception as e:  # invalid options, unresolvable SRV record, ...
                    raise StoreError(
                        f"cannot use MongoDB URI {redact_uri(self.uri)}: {self._sanitize(str(e))}"
                    ) from None
                self._pid = pid
        return self._client[self.database]

    def _reason(self, exc: BaseException) -> str:
        text = str(exc).split(", Topology Description:")[0]
        return self._sanitize(text)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from pymongo import errors as pe

        try:
            yield
        except StoreError:
            raise
        except pe.ConnectionFailure as e:
            raise StoreError(f"cannot reach MongoDB at {uri_hosts(self.uri)}: {self._reason(e)}") from None
        except pe.BulkWriteError as e:
            errs = e.details.get("writeErrors", [])
            first = errs[0].get("errmsg", "") if errs else str(e)
            raise StoreError(
                f"MongoDB {what} failed ({len(errs)} write errors; first: {self._sanitize(first)})"
            ) from None
        except pe.OperationFailure as e:
            raise StoreError(f"MongoDB {what} failed: {self._sanitize(str(e.details or e))}") from None
        except (pe.PyMongoError, OverflowError) as e:
            raise StoreError(f"MongoDB {what} failed: {type(e).__name__}: {self._sanitize(str(e))}") from None

    def _coll(self, c: Collection):
        db = self._db()
        col = db[c.name]
        if c.name not in self._ready:
            from pymongo.errors import OperationFailure

            specs = [("key", c.key), *(("__".join(idx), idx) for idx in c.indexes)]
            with self._errors(f"create_index on {self.database}.{c.name}"):
                for name, fields in specs:
                    try:
                        col.create_index([(f, 1) for f in fields], name=name)
                    except OperationFailure as e:
                        if e.code not in (85, 86):  # same index under another name / options
                            raise
            self._ready.add(c.name)
        return col

    # -- lifecycle --------------------------------------------------------------------------------
    def ping(self) -> None:
        """One ``ping`` command; any failure (unreachable, TLS, authentication) raises
        ``StoreError("cannot reach MongoDB at <hosts>: <reason>")`` within about
        ``connect_timeout_s``, without credentials."""
        from pymongo import errors as pe

        try:
            self._db().client.admin.command("ping")
        except pe.PyMongoError as e:
            raise StoreError(f"cannot reach MongoDB at {uri_hosts(self.uri)}: {self._reason(e)}") from None

    def close(self) -> None:
        self._after_fork()
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._pid = None
            self._ready = set()

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _filter(c: Collection, where: Where | None) -> dict[str, Any]:
        per_field: dict[str, dict[str, Any]] = {}
        ands: list[dict[str, Any]] = []
        for field, op, val in parse_where(c, where):
            ops = per_field.setdefault(field, {})
            mop = "$eq" if op == "eq" else _MONGO_OPS[op]
            if mop in ops:  # the same operator twice on one field: AND them
                ands.append({field: {mop: val}})
            else:
                ops[mop] = val
        out: dict[str, Any] = {
            f: (ops["$eq"] if list(ops) == ["$eq"] else ops) for f, ops in per_field.items()
        }
        if ands:
            return {"$and": [out, *ands]}
        return out

    @staticmethod
    def _set_unset(values: Mapping[str, Any]) -> dict[str, Any]:
        upd: dict[str, Any] = {}
        sets = {f: v for f, v in values.items() if v is not None}
        unsets = {f: "" for f, v in values.items() if v is None}
        if sets:
            upd["$set"] = sets
        if unsets:
            upd["$unset"] = unsets
        return upd

    # -- rows ------------------------------------------------------------------------------------------
    def put(self, collection: str, rows: Rows, *, replace_where: Where | None = None) -> int:
        """Upsert rows by ``_id`` (a row is replaced as a whole).  With
        ``replace_where``, matching documents that this call did not write are deleted
        right after the upsert (no transaction: a reader may briefly see both sets)."""
        from pymongo import ReplaceOne

        c = _coll(collection)
        batch = normalize_rows(c, rows)
        rw = None if replace_where is None else self._filter(c, replace_where)
        token = uuid.uuid4().hex if rw is not None else None
        ids = [key_id(k) for k in batch.keys()]
        cols = [(f, batch.columns[f]) for f in batch.fields]
        ops = []
        for i, _id in enumerate(ids):
            doc: dict[str, Any] = {"_id": _id}
            for f, col in cols:
                v = col[i]
                if v is not None:
                    doc[f] = v
            if token is not None:
                doc[_WRITE_TOKEN] = token
            ops.append(ReplaceOne({"_id": _id}, doc, upsert=True))
        with self._errors(f"put into {self.database}.{c.name}"):
            col = self._coll(c)
            if ops:
                col.bulk_write(ops, ordered=False)
            if rw is not None:
                col.delete_many({"$and": [rw, {_WRITE_TOKEN: {"$ne": token}}]})
        return batch.n

    def _cursor(self, c, where, names, order_by, limit):
        col = self._coll(c)
        projection = {"_id": 0, **{f: 1 for f in names}}
        cur = col.find(self._filter(c, where), projection)
        order = parse_order(c, order_by)
        if order:
            cur = cur.sort([(f, 1 if asc else -1) for f, asc in order])
        if limit is not None:
            cur = cur.limit(int(limit))
        return cur

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
        if limit is not None and int(limit) <= 0:
            parse_where(c, where)
            return []
        with self._errors(f"find in {self.database}.{c.name}"):
            docs = list(self._cursor(c, where, names, order_by, limit))
        return [{f: _plain(d.get(f)) for f in names} for d in docs]

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
        out: dict[str, list[Any]] = {f: [] for f in names}
        with self._errors(f"find in {self.database}.{c.name}"):
            for d in self._cursor(c, where, names, order_by, None):
                for f in names:
                    out[f].append(_plain(d.get(f)))
        return out

    def count(self, collection: str, where: Where | None = None) -> int:
        c = _coll(collection)
        filt = self._filter(c, where)
        with self._errors(f"count in {self.database}.{c.name}"):
            return int(self._coll(c).count_documents(filt))

    def delete(self, collection: str, where: Where) -> int:
        c = _coll(collection)
        filt = self._filter(c, where)
        with self._errors(f"delete in {self.database}.{c.name}"):
            return int(self._coll(c).delete_many(filt).deleted_count)

    def update(self, collection: str, where: Where, values: Mapping[str, Any]) -> int:
        """Set ``values`` (``None`` clears a field) on the matching rows; key fields
        cannot be updated.  Returns the number of matching rows."""
        c = _coll(collection)
        vals = convert_values(c, values)
        filt = self._filter(c, where)
        if not vals:
            return self.count(collection, where)
        with self._errors(f"update in {self.database}.{c.name}"):
            return int(self._coll(c).update_many(filt, self._set_unset(vals)).matched_count)

    # -- aggregation ----------------------------------------------------------------------------------
    def aggregate_edges(self, collection: str, where: Where | None = None) -> dict[str, list[Any]]:
        """Edge contributions grouped by ``(u, v)``, sorted by ``(u, v)``."""
        c = _coll(collection)
        missing = [f for f in _EDGE_FIELDS if f not in c.fields]
        if missing:
            raise StoreError(f"collection {c.name!r} holds no edge contributions (lacks {missing})")
        pipeline = [
            {"$match": self._filter(c, where)},
            {
                "$group": {
                    "_id": {"u": "$u", "v": "$v"},
                    "attr_key": {"$max": "$attr_key"},
                    "rep_key": {"$max": "$rep_key"},
                    "aff_sum": {"$sum": "$aff_sum"},
                    "aff_count": {"$sum": "$aff_count"},
                }
            },
            {"$sort": {"_id.u": 1, "_id.v": 1}},
        ]
        out: dict[str, list[Any]] = {f: [] for f in _EDGE_FIELDS}
        with self._errors(f"aggregate_edges in {self.database}.{c.name}"):
            for d in self._coll(c).aggregate(pipeline, allowDiskUse=True):
                out["u"].append(_plain(d["_id"].get("u")))
                out["v"].append(_plain(d["_id"].get("v")))
                out["attr_key"].append(_plain(d.get("attr_key")))
                out["rep_key"].append(_plain(d.get("rep_key")))
                out["aff_sum"].append(float(d.get("aff_sum") or 0.0))
                out["aff_count"].append(int(d.get("aff_count") or 0))
        return out

    def count_by(self, collection: str, field: str, where: Where | None = None) -> dict[Any, int]:
        c = _coll(collection)
        check_fields(c, [field])
        if c.fields[field] == "json":
            raise StoreError(f"collection {c.name!r}: cannot count by json field {field!r}")
        pipeline = [
            {"$match": self._filter(c, where)},
            {"$group": {"_id": f"${field}", "n": {"$sum": 1}}},
        ]
        with self._errors(f"count_by in {self.database}.{c.name}"):
            return {_plain(d["_id"]): int(d["n"]) for d in self._coll(c).aggregate(pipeline)}

    # -- leases ---------------------------------------------------------------------------------------
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
        lease expired, one atomic ``find_one_and_update`` per row."""
        import time

        from pymongo import ReturnDocument

        c = _coll(collection)
        require_lease_fields(c)
        if limit is None or int(limit) < 1:
            return []
        now = time.time() if now is None else float(now)
        claimable = {
            "$or": [
                {"status": "pending"},
                {"status": "leased", "lease_expires": {"$lt": now}},
                {"status": "leased", "lease_expires": None},
            ]
        }
        base = self._filter(c, where)
        filt = {"$and": [base, claimable]} if base else claimable
        update = {
            "$set": {"status": "leased", "lease_owner": str(owner), "lease_expires": now + float(lease_seconds)},
            "$inc": {"attempts": 1},
        }
        names = list(c.fields)
        projection = {"_id": 0, **{f: 1 for f in names}}
        out = []
        with self._errors(f"lease in {self.database}.{c.name}"):
            col = self._coll(c)
            for _ in range(int(limit)):
                d = col.find_one_and_update(
                    filt,
                    update,
                    projection=projection,
                    sort=[(k, 1) for k in c.key],
                    return_document=ReturnDocument.AFTER,
                )
                if d is None:
                    break
                out.append({f: _plain(d.get(f)) for f in names})
        return out

    def complete_lease(
        self, collection: str, key: Mapping[str, Any], *, owner: str, values: Mapping[str, Any]
    ) -> bool:
        """Set status ``decided`` plus ``values`` (which may override ``status``) if
        ``owner`` still holds the row's lease."""
        c = _coll(collection)
        require_lease_fields(c)
        k = normalize_key(c, key)
        vals = {"status": "decided", **convert_values(c, values)}
        filt = {"_id": key_id(k), "status": "leased", "lease_owner": str(owner)}
        with self._errors(f"complete_lease in {self.database}.{c.name}"):
            return self._coll(c).update_one(filt, self._set_unset(vals)).matched_count == 1
