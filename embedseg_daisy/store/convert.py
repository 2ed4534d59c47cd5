"""Value conversion shared by the store backends.

Rows arrive as a list of dicts or column-wise as a dict of equal-length sequences
(numpy arrays welcome).  :func:`normalize_rows` turns either form into plain Python
columns typed by the collection's schema:

* ``int``   -> Python ``int`` in the signed 64-bit range (BSON has no unsigned 64-bit
  type; ids must stay below 2**63).  numpy integers, numpy bools and integral floats
  are accepted; anything else, or a value outside the range, raises
  :class:`StoreValueError` naming the collection, field, row and value.
* ``float`` -> Python ``float``.
* ``str``   -> Python ``str`` (no implicit ``str()`` of numbers: that hides bugs).
* ``json``  -> nested lists / dicts (string keys) of Python scalars; numpy arrays and
  scalars and tuples are converted, ints are range-checked like ``int`` fields.

``None`` means "no value" for any non-key field.  Key fields must have a value.
Rows that repeat a natural key within one batch collapse to the last one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedseg_daisy.errors import StoreError

from .schema import Collection
from .schema import collection as schema_collection

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

LEASE_FIELDS = ("status", "lease_owner", "lease_expires", "attempts")


class StoreValueError(StoreError, ValueError):
    """A value cannot be stored (wrong type, or an int outside the signed 64-bit range)."""


def _where(coll: str, field: str, row: int | None) -> str:
    return f"collection {coll!r}, field {field!r}" + ("" if row is None else f", row {row}")


def _range_error(coll: str, field: str, row: int | None, value: Any) -> StoreValueError:
    return StoreValueError(
        f"{_where(coll, field, row)}: value {value} does not fit a signed 64-bit integer "
        f"(ids must stay below 2**63 = {2**63}; BSON has no unsigned 64-bit type); "
        "nothing was written"
    )


def _type_error(coll: str, field: str, row: int | None, value: Any, expected: str) -> StoreValueError:
    return StoreValueError(
        f"{_where(coll, field, row)}: expected {expected}, got {type(value).__name__} {value!r}; "
        "nothing was written"
    )


# -- scalars ------------------------------------------------------------------------
def to_int(value: Any, coll: str = "?", field: str = "?", row: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        v = int(value)
    elif isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f) or not f.is_integer():
            raise _type_error(coll, field, row, value, "an integer")
        v = int(f)
    else:
        raise _type_error(coll, field, row, value, "an integer")
    if v < INT64_MIN or v > INT64_MAX:
        raise _range_error(coll, field, row, v)
    return v


def to_float(value: Any, coll: str = "?", field: str = "?", row: int | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return float(value)
    raise _type_error(coll, field, row, value, "a number")


def to_str(value: Any, coll: str = "?", field: str = "?", row: int | None = None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # includes numpy.str_
        return str(value)
    raise _type_error(coll, field, row, value, "a string")


def _check_int_array(arr: np.ndarray, coll: str, field: str, row: int | None) -> None:
    if arr.size == 0:
        return
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8:
        bad = np.flatnonzero(arr.reshape(-1) > np.uint64(INT64_MAX))
        if bad.size:
            r = row
            if r is None:
                r = int(bad[0]) // max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))
            raise _range_error(coll, field, r, int(arr.reshape(-1)[bad[0]]))


def to_json(value: Any, coll: str = "?", field: str = "?", row: int | None = None) -> Any:
    """Convert a JSON-like value to plain Python (lists, str-keyed dicts, scalars)."""
    if value is None or isinstance(value, (str, bool)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if v < INT64_MIN or v > INT64_MAX:
            raise _range_error(coll, field, row, v)
        return v
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            _check_int_array(value, coll, field, row)
            return value.tolist()
        return [to_json(v, coll, field, row) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_json(v, coll, field, row) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _type_error(coll, field, row, k, "string keys in a json object")
            out[str(k)] = to_json(v, coll, field, row)
        return out
    raise _type_error(coll, field, row, value, "a JSON value (list, dict, number, string)")


_SCALAR = {"int": to_int, "float": to_float, "str": to_str, "json": to_json}


def convert_value(c: Collection, field: str, value: Any, row: int | None = None) -> Any:
    ftype = field_type(c, field)
    return _SCALAR[ftype](value, c.name, field, row)


def field_type(c: Collection, field: str) -> str:
    try:
        return c.fields[field]
    except KeyError:
        raise StoreValueError(
            f"collection {c.name!r} has no field {field!r}; fields: {sorted(c.fields)}"
        ) from None


# -- columns --------------------------------------------------------------------------
def convert_column(c: Collection, field: str, values: Any) -> list[Any]:
    """Convert one column (list or numpy array) to a list of Python values."""
    ftype = field_type(c, field)
    coll = c.name
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if ftype == "json":
            if values.ndim >= 2 and kind in "biuf":
                _check_int_array(values, coll, field, None)
                return values.tolist()
            return [to_json(v, coll, field, i) for i, v in enumerate(values)]
        if values.ndim != 1:
            raise StoreValueError(
                f"collection {coll!r}, field {field!r}: expected a 1-D column, got shape {values.shape}"
            )
        if ftype == "int":
            if kind in "bi":
                return values.astype(np.int64, copy=False).tolist()
            if kind == "u":
                _check_int_array(values, coll, field, None)
                return values.astype(np.int64).tolist()
            return [to_int(v, coll, field, i) for i, v in enumerate(values.tolist())]
        if ftype == "float" and kind in "biuf":
            return values.astype(np.float64, copy=False).tolist()
        if ftype == "str" and kind == "U":
            return values.tolist()
        values = values.tolist()
    fn = _SCALAR[ftype]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise StoreValueError(
            f"collection {coll!r}, field {field!r}: column-wise rows need a sequence per field, "
            f"got {type(values).__name__}"
        )
    return [fn(v, coll, field, i) for i, v in enumerate(values)]


@dataclass
class Batch:
    """Rows of one collection as typed Python columns, unique on the natural key."""

    collection: Collection
    fields: list[str]  # fields present, in schema order
    columns: dict[str, list[Any]]
    n: int

    def keys(self) -> list[tuple]:
        return list(zip(*(self.columns[k] for k in self.collection.key))) if self.n else []

    def column(self, field: str) -> list[Any]:
        col = self.columns.get(field)
        return col if col is not None else [None] * self.n

    def rows(self) -> list[dict[str, Any]]:
        cols = [self.columns[f] for f in self.fields]
        return [dict(zip(self.fields, vals)) for vals in zip(*cols)]


def normalize_rows(c: Collection, rows: Any) -> Batch:
    """Rows (list of dicts or dict of columns) -> :class:`Batch`; raises
    :class:`StoreValueError` before anything is written."""
    raw: dict[str, Any]
    if isinstance(rows, Mapping):
        raw = dict(rows)
        n = None
        for f, col in raw.items():
            field_type(c, f)
            try:
                length = len(col)
            except TypeError:
                raise StoreValueError(
                    f"collection {c.name!r}, field {f!r}: column-wise rows need a sequence per "
                    f"field, got {type(col).__name__}"
                ) from None
            if n is None:
                n = length
            elif length != n:
                lengths = {k: len(v) for k, v in raw.items()}
                raise StoreValueError(
                    f"collection {c.name!r}: columns have different lengths {lengths}"
                )
        n = n or 0
    else:
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
            raise StoreValueError(
                f"collection {c.name!r}: rows must be a list of dicts or a dict of columns, "
                f"got {type(rows).__name__}"
            )
        rows = list(rows)
        present: set[str] = set()
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise StoreValueError(
                    f"collection {c.name!r}: row {i} is a {type(r).__name__}, expected a dict"
                )
            present.update(r.keys())
        for f in present:
            field_type(c, f)
        raw = {f: [r.get(f) for r in rows] for f in present}
        n = len(rows)
    fields = [f for f in c.fields if f in raw]
    columns = {f: convert_column(c, f, raw[f]) for f in fields}
    for k in c.key:
        col = columns.get(k)
        if n and col is None:
            raise StoreValueError(f"collection {c.name!r}: rows lack the key field {k!r} (key {c.key})")
        if col is not None:
            for i, v in enumerate(col):
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    raise StoreValueError(
                        f"collection {c.name!r}, field {k!r}, row {i}: key fields need a value"
                    )
                if isinstance(v, float) and v == 0.0:
                    col[i] = 0.0  # -0.0 and 0.0 are one key
    batch = Batch(collection=c, fields=fields, columns=columns, n=n)
    if n > 1:
        keys = batch.keys()
        last = {k: i for i, k in enumerate(keys)}
        if len(last) < n:
            keep = sorted(last.values())
            batch.columns = {f: [col[i] for i in keep] for f, col in columns.items()}
            batch.n = len(keep)
    return batch


def normalize_key(c: Collection, key: Mapping[str, Any]) -> tuple:
    """A complete natural key given as a mapping -> tuple of typed values."""
    missing = [k for k in c.key if k not in key]
    extra = [k for k in key if k not in c.key]
    if missing or extra:
        raise StoreValueError(
            f"collection {c.name!r}: a key needs exactly the fields {c.key}; "
            f"missing {missing}, unexpected {extra}"
        )
    out = []
    for k in c.key:
        v = convert_value(c, k, key[k])
        if v is None:
            raise StoreValueError(f"collection {c.name!r}, field {k!r}: key fields need a value")
        if isinstance(v, float) and v == 0.0:
            v = 0.0
        out.append(v)
    return tuple(out)


def convert_values(c: Collection, values: Mapping[str, Any], *, allow_key: bool = False) -> dict:
    """Typed values for ``update``-like operations (key fields cannot change)."""
    out = {}
    for f, v in values.items():
        if not allow_key and f in c.key:
            raise StoreValueError(
                f"collection {c.name!r}: cannot update key field {f!r} (key {c.key}); "
                "delete and put the row instead"
            )
        out[f] = convert_value(c, f, v)
    return out


def require_lease_fields(c: Collection) -> None:
    missing = [f for f in LEASE_FIELDS if f not in c.fields]
    if missing:
        raise StoreError(f"collection {c.name!r} cannot be leased: it lacks the fields {missing}")


# -- filters ---------------------------------------------------------------------------
RANGE_OPS = ("gt", "gte", "lt", "lte")
OPS = ("in", "nin", "ne", "eq", *RANGE_OPS)


def _filter_scalar(c: Collection, field: str, value: Any) -> Any:
    """A filter value: numpy -> Python; ints range-checked; numbers may be compared
    across int / float (a range bound 2.5 on an int field is fine)."""
    ftype = field_type(c, field)
    if ftype == "json":
        raise StoreValueError(f"collection {c.name!r}: cannot filter on json field {field!r}")
    if value is None:
        return None
    if ftype in ("int", "float") and isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return float(value)
    return convert_value(c, field, value)


def parse_where(c: Collection, where: Mapping[str, Any] | None) -> list[tuple[str, str, Any]]:
    """``where`` -> list of ``(field, op, value)``, op in :data:`OPS`; values converted."""
    out: list[tuple[str, str, Any]] = []
    if not where:
        return out
    if not isinstance(where, Mapping):
        raise StoreValueError(f"collection {c.name!r}: a filter must be a dict, got {type(where).__name__}")
    for field, cond in where.items():
        if field_type(c, field) == "json":
            raise StoreValueError(f"collection {c.name!r}: cannot filter on json field {field!r}")
        if isinstance(cond, Mapping):
            if not cond:
                raise StoreValueError(f"collection {c.name!r}, field {field!r}: empty condition")
            for op, val in cond.items():
                if op not in OPS:
                    raise StoreValueError(
                        f"collection {c.name!r}, field {field!r}: unknown filter operator {op!r}; "
                        f"use one of {OPS}"
                    )
                if op in ("in", "nin"):
                    if isinstance(val, (str, bytes, Mapping)) or not isinstance(val, Iterable):
                        raise StoreValueError(
                            f"collection {c.name!r}, field {field!r}: {op!r} needs a list of values"
                        )
                    vals = val.tolist() if isinstance(val, np.ndarray) else list(val)
                    out.append((field, op, [_filter_scalar(c, field, v) for v in vals]))
                else:
                    if op in RANGE_OPS and val is None:
                        raise StoreValueError(
                            f"collection {c.name!r}, field {field!r}: {op!r} needs a value, got None"
                        )
                    out.append((field, op, _filter_scalar(c, field, val)))
        elif isinstance(cond, (list, tuple, set, np.ndarray)):
            raise StoreValueError(
                f"collection {c.name!r}, field {field!r}: a list is ambiguous in a filter; "
                "write {'in': [...]} for membership"
            )
        else:
            out.append((field, "eq", _filter_scalar(c, field, cond)))
    return out


def check_fields(c: Collection, fields: Iterable[str] | None) -> list[str]:
    if fields is None:
        return list(c.fields)
    if isinstance(fields, str):
        fields = [fields]
    fields = list(fields)
    if not fields:
        raise StoreValueError(f"collection {c.name!r}: `fields` must name at least one field")
    for f in fields:
        field_type(c, f)
    return fields


def parse_order(c: Collection, order_by: Iterable[str] | None) -> list[tuple[str, bool]]:
    """``["a", "-b"]`` -> ``[("a", True), ("b", False)]`` (True = ascending)."""
    if not order_by:
        return []
    if isinstance(order_by, str):
        order_by = [order_by]
    out = []
    for spec in order_by:
        asc = not spec.startswith("-")
        name = spec.lstrip("-+")
        field_type(c, name)
        out.append((name, asc))
    return out


def json_dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def json_loads(text: Any) -> Any:
    return None if text is None else json.loads(text)


def key_id(key: tuple) -> str:
    """A string ``_id`` for a natural key: the key values as a compact JSON array
    (injective for str / int / float keys once they are typed by the schema)."""
    return json.dumps(list(key), separators=(",", ":"))


def get_collection(name: str) -> Collection:
    """The schema of collection ``name``; unknown names raise :class:`StoreValueError`."""
    try:
        return schema_collection(name)
    except KeyError as e:
        raise StoreValueError(e.args[0] if e.args else f"unknown store collection {name!r}") from None
