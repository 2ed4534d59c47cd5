"""One contract for every store backend: SQLite, mongoeco (a MongoDB wire-protocol
test stand-in, not a production store) and a real MongoDB when
``$EMBEDSEG_TEST_MONGODB_URI`` is set.  Document counts stay small: mongoeco takes
milliseconds per document."""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from store_servers import backend_store  # noqa: E402

from embedseg_daisy.errors import StoreError  # noqa: E402
from embedseg_daisy.store.mongo import MongoStore, redact_uri  # noqa: E402

#: mongoeco and real MongoDB carry the ``mongo`` marker (``-m "not mongo"`` leaves them out)
BACKENDS = [
    "sqlite",
    pytest.param("mongoeco", marks=pytest.mark.mongo),
    pytest.param("mongodb", marks=pytest.mark.mongo),
]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s, cleanup = backend_store(request.param, tmp_path)
    try:
        yield s
    finally:
        cleanup()


def _blocks(n=6):
    return [
        {
            "stage": "predict" if i % 2 == 0 else "fragments",
            "block": f"0_0_{i}",
            "status": "done" if i < 4 else "failed",
            "roi_offset": [0, 0, 8 * i],
            "roi_shape": [8, 8, 8],
            "worker": i,
            "host": "h1" if i < 3 else None,
            "duration": 0.5 * i,
            "attempt": 1,
        }
        for i in range(n)
    ]


def _edge(graph, block, u, v, a, r, s, n):
    return {"graph": graph, "block": block, "u": u, "v": v, "attr_key": a, "rep_key": r, "aff_sum": s, "aff_count": n}


def _keys(rows, *fields):
    return sorted(tuple(r[f] for f in fields) for r in rows)


# -- generic rows ------------------------------------------------------------------------
def test_put_find_every_filter_form(store):
    assert store.put("blocks", _blocks()) == 6
    assert store.count("blocks") == 6
    got = store.find("blocks", {"stage": "predict"}, order_by=["block"])
    assert [r["block"] for r in got] == ["0_0_0", "0_0_2", "0_0_4"]
    assert got[0]["roi_offset"] == [0, 0, 0] and got[0]["roi_shape"] == [8, 8, 8]
    assert got[0]["duration"] == 0.0 and isinstance(got[0]["duration"], float)
    assert got[0]["gpu"] is None  # never written -> None
    assert set(got[0]) == set(
        ["stage", "block", "status", "roi_offset", "roi_shape", "worker", "host", "gpu",
         "started", "duration", "attempt", "error"]
    )
    # membership
    got = store.find("blocks", {"block": {"in": ["0_0_1", "0_0_3", "nope"]}}, fields=["block"])
    assert sorted(r["block"] for r in got) == ["0_0_1", "0_0_3"]
    assert store.count("blocks", {"block": {"in": []}}) == 0
    # a long membership list
    many = [f"x_{i}" for i in range(600)] + ["0_0_5"]
    assert store.count("blocks", {"block": {"in": many}}) == 1
    assert store.count("blocks", {"block": {"nin": ["0_0_0", "0_0_1"]}}) == 4
    # ranges
    got = store.find("blocks", {"worker": {"gte": 2, "lt": 5}}, fields=["worker"], order_by=["worker"])
    assert [r["worker"] for r in got] == [2, 3, 4]
    assert store.count("blocks", {"worker": {"gt": 2, "lte": 4}}) == 2
    assert store.count("blocks", {"duration": {"gt": 1.2}}) == 3  # 1.5, 2.0, 2.5
    assert store.count("blocks", {"worker": {"lt": 2.5}}) == 3  # float bound on an int field
    # inequality
    assert store.count("blocks", {"status": {"ne": "done"}}) == 2
    # None: missing values, MongoDB semantics on both backends
    assert store.count("blocks", {"host": None}) == 3
    assert store.count("blocks", {"host": {"ne": None}}) == 3
    assert store.count("blocks", {"host": {"ne": "h1"}}) == 3  # includes missing hosts
    assert store.count("blocks", {"host": {"in": ["h1", None]}}) == 6
    # several conditions AND together
    assert store.count("blocks", {"stage": "predict", "status": "done", "worker": {"gte": 1}}) == 1
    # projection, ordering, limit
    got = store.find("blocks", fields=["block", "worker"], order_by=["-worker"], limit=2)
    assert got == [{"block": "0_0_5", "worker": 5}, {"block": "0_0_4", "worker": 4}]
    got = store.find("blocks", order_by=["stage", "-block"], fields=["stage", "block"])
    assert [r["block"] for r in got] == ["0_0_5", "0_0_3", "0_0_1", "0_0_4", "0_0_2", "0_0_0"]
    assert store.find("blocks", limit=0) == []
    # numpy values in filters
    assert store.count("blocks", {"worker": np.int64(3)}) == 1
    assert store.count("blocks", {"worker": {"in": np.array([1, 2], dtype=np.uint64)}}) == 2


def test_filter_errors(store):
    store.put("blocks", _blocks(2))
    with pytest.raises(StoreError, match="no field"):
        store.find("blocks", {"nope": 1})
    with pytest.raises(StoreError, match="operator"):
        store.find("blocks", {"worker": {"between": [1, 2]}})
    with pytest.raises(StoreError, match="ambiguous"):
        store.find("blocks", {"block": ["0_0_0"]})
    with pytest.raises(StoreError, match="unknown store collection"):
        store.count("nope")
    with pytest.raises(StoreError, match="no field"):
        store.put("blocks", [{"stage": "a", "block": "b", "colour": "red"}])
    with pytest.raises(StoreError, match="key field"):
        store.put("blocks", [{"stage": "a", "status": "done"}])
    with pytest.raises(StoreError, match="expected a string"):
        store.put("blocks", [{"stage": "a", "block": 7}])


def test_count_delete_update(store):
    store.put("blocks", _blocks())
    assert store.update("blocks", {"stage": "predict"}, {"host": "h9", "error": "x"}) == 3
    assert store.count("blocks", {"host": "h9"}) == 3
    assert store.update("blocks", {"block": "0_0_0"}, {"error": None}) == 1  # None clears
    assert store.find("blocks", {"block": "0_0_0"}, fields=["error"]) == [{"error": None}]
    assert store.count("blocks", {"error": None}) == 4
    assert store.update("blocks", {"block": "none"}, {"host": "x"}) == 0
    assert store.update("blocks", {"block": "0_0_1"}, {"roi_shape": [1, 2, 3]}) == 1
    assert store.find("blocks", {"block": "0_0_1"}, fields=["roi_shape"])[0]["roi_shape"] == [1, 2, 3]
    with pytest.raises(StoreError, match="key field"):
        store.update("blocks", {"block": "0_0_1"}, {"stage": "other"})
    assert store.delete("blocks", {"status": "failed"}) == 2
    assert store.count("blocks") == 4
    assert store.delete("blocks", {"worker": {"gte": 2}}) == 2
    assert store.delete("blocks", {"worker": {"gte": 2}}) == 0
    assert sorted(r["block"] for r in store.find("blocks", fields=["block"])) == ["0_0_0", "0_0_1"]


def test_upsert_is_idempotent_and_replaces_rows(store):
    rows = [_edge("mws", "0_0_0", u, u + 1, u, -1, 0.5, 1) for u in range(1, 6)]
    assert store.put("fragment_edges", rows) == 5
    assert store.put("fragment_edges", rows) == 5
    assert store.count("fragment_edges") == 5
    # a re-run with new values overwrites, and a row is replaced as a whole
    rows2 = [dict(r, attr_key=100 + r["u"]) for r in rows]
    del rows2[0]["rep_key"]
    store.put("fragment_edges", rows2)
    got = store.find("fragment_edges", order_by=["u"])
    assert len(got) == 5
    assert [r["attr_key"] for r in got] == [101, 102, 103, 104, 105]
    assert got[0]["rep_key"] is None and got[1]["rep_key"] == -1
    # the same key twice in one batch: the last one wins, one row
    twice = [_edge("mws", "0_0_9", 1, 2, 1, 1, 1.0, 1), _edge("mws", "0_0_9", 1, 2, 7, 7, 7.0, 7)]
    n = store.put("fragment_edges", twice)
    assert n == 1
    assert store.find("fragment_edges", {"block": "0_0_9"}, fields=["attr_key"]) == [{"attr_key": 7}]
    # same natural key values under another block are a different row
    store.put("fragment_edges", [_edge("mws", "0_0_1", 1, 2, 3, 3, 1.0, 1)])
    assert store.count("fragment_edges", {"u": 1, "v": 2}) == 3
    assert store.count("fragment_edges") == 7


def test_replace_where_removes_stale_rows(store):
    old = [_edge("mws", "b0", u, u + 1, 1, 1, 1.0, 1) for u in range(1, 7)]
    other = [_edge("mws", "b1", u, u + 1, 1, 1, 1.0, 1) for u in range(1, 4)]
    store.put("fragment_edges", old + other)
    new = [_edge("mws", "b0", u, u + 1, 2, 2, 2.0, 2) for u in (2, 3, 10)]
    assert store.put("fragment_edges", new, replace_where={"graph": "mws", "block": "b0"}) == 3
    got = store.find("fragment_edges", {"block": "b0"})
    assert _keys(got, "u", "v") == [(2, 3), (3, 4), (10, 11)]
    assert all(r["attr_key"] == 2 for r in got)
    assert store.count("fragment_edges", {"block": "b1"}) == 3  # untouched
    # a re-run that produces no rows leaves none
    assert store.put("fragment_edges", [], replace_where={"graph": "mws", "block": "b0"}) == 0
    assert store.count("fragment_edges", {"block": "b0"}) == 0
    assert store.count("fragment_edges") == 3
    # without replace_where an empty put is a no-op
    assert store.put("fragment_edges", []) == 0
    assert store.put("fragment_edges", {}) == 0


def test_find_arrays_streams_numeric_columns(store):
    # on SQLite more rows than one streaming chunk (65,536), so chunking is exercised;
    # the mongoeco stand-in takes milliseconds per document, so fewer there
    n = 70_000 if type(store).__name__ == "SQLiteStore" else 2_000
    u = np.arange(n, dtype=np.int64)
    store.put("fragment_edges", {
        "graph": ["mws"] * n, "block": ["0_0_0"] * (n // 2) + ["0_0_1"] * (n - n // 2),
        "u": u, "v": u + 1, "attr_key": u % 7, "rep_key": np.full(n, -1), "aff_sum": u / n, "aff_count": np.ones(n, np.int64),
    })
    got = store.find_arrays("fragment_edges", {"graph": "mws", "block": {"in": ["0_0_1"]}}, fields=["u", "v", "aff_sum"])
    assert got["u"].dtype == np.int64 and got["aff_sum"].dtype == np.float64
    order = np.argsort(got["u"])
    np.testing.assert_array_equal(got["u"][order], u[n // 2 :])
    np.testing.assert_array_equal(got["v"][order], u[n // 2 :] + 1)
    np.testing.assert_allclose(got["aff_sum"][order], u[n // 2 :] / n)
    empty = store.find_arrays("fragment_edges", {"graph": "none"}, fields=["u"])
    assert empty["u"].dtype == np.int64 and len(empty["u"]) == 0
    with pytest.raises(ValueError, match="not a numeric field"):
        store.find_arrays("fragment_edges", {"graph": "mws"}, fields=["block"])


def test_columnwise_put_and_find_columns(store):
    n = 20
    u = np.arange(1, n + 1, dtype=np.uint64)
    cols = {
        "graph": np.array(["mws"] * n),
        "block": ["0_0_0"] * n,
        "u": u,
        "v": (u + 5).astype(np.int64),
        "attr_key": np.arange(n, dtype=np.int32),
        "rep_key": np.full(n, -1, dtype=np.int64),
        "aff_sum": np.linspace(0, 1, n, dtype=np.float32),
        "aff_count": np.ones(n, dtype=np.uint8),
    }
    assert store.put("fragment_edges", cols) == n
    got = store.find_columns("fragment_edges", {"graph": "mws"}, fields=["u", "v", "aff_sum"], order_by=["u"])
    assert got["u"] == list(range(1, n + 1))
    assert got["v"] == list(range(6, n + 6))
    np.testing.assert_allclose(got["aff_sum"], np.linspace(0, 1, n, dtype=np.float32))
    assert all(type(x) is int for x in got["u"]) and all(type(x) is float for x in got["aff_sum"])
    empty = store.find_columns("fragment_edges", {"graph": "none"}, fields=["u", "v"])
    assert empty == {"u": [], "v": []}
    with pytest.raises(StoreError, match="different lengths"):
        store.put("fragment_edges", {"graph": ["a", "b"], "block": ["x"], "u": [1, 2], "v": [2, 3]})
    # 2-D numpy columns for json fields
    frag = {
        "graph": ["mws"] * 3,
        "id": np.array([5, 6, 7], dtype=np.uint64),
        "block": ["0_0_0"] * 3,
        "size": np.array([10, 20, 30]),
        "centroid": np.arange(9, dtype=np.float64).reshape(3, 3),
        "bbox": np.arange(18, dtype=np.uint64).reshape(3, 6),
    }
    store.put("fragments", frag)
    got = store.find("fragments", order_by=["id"], fields=["id", "centroid", "bbox"])
    assert got[1] == {"id": 6, "centroid": [3.0, 4.0, 5.0], "bbox": [6, 7, 8, 9, 10, 11]}


def test_json_fields_round_trip(store):
    config = {"a": [1, 2.5, "x", None, True], "nested": {"k": [[1, 2], [3]], "f": 1e-3}, "empty": {}}
    store.put(
        "runs",
        [{"run_id": "r1", "config": config, "config_hash": "abc", "created": 1.5, "version": "0.1"}],
    )
    got = store.find("runs", {"run_id": "r1"})[0]
    assert got["config"] == config
    assert got["results_hash"] is None
    store.put(
        "fragments",
        [{"graph": "g", "id": 1, "centroid": (1.5, np.float32(2.5), np.int64(3)),
          "bbox": np.array([0, 0, 0, 4, 4, 4]), "embedding_sum": np.linspace(0, 1, 24).tolist()}],
    )
    got = store.find("fragments")[0]
    assert got["centroid"] == [1.5, 2.5, 3]
    assert got["bbox"] == [0, 0, 0, 4, 4, 4]
    assert len(got["embedding_sum"]) == 24 and got["embedding_sum"][-1] == 1.0
    with pytest.raises(StoreError, match="string keys"):
        store.put("runs", [{"run_id": "r2", "config": {1: "a"}}])
    with pytest.raises(StoreError, match="json field"):
        store.find("runs", {"config": {"a": 1}})


def test_numpy_scalars_accepted(store):
    row = {
        "graph": np.str_("g"),
        "block": "b",
        "u": np.uint64(2**63 - 1),
        "v": np.int32(7),
        "attr_key": np.int64(-1),
        "rep_key": np.uint8(200),
        "aff_sum": np.float32(0.25),
        "aff_count": np.int16(3),
    }
    store.put("fragment_edges", [row])
    got = store.find("fragment_edges")[0]
    assert got == {"graph": "g", "block": "b", "u": 2**63 - 1, "v": 7, "attr_key": -1, "rep_key": 200,
                   "aff_sum": 0.25, "aff_count": 3}
    assert type(got["u"]) is int and type(got["aff_sum"]) is float
    store.put("blocks", [{"stage": "s", "block": "b", "attempt": np.bool_(True), "duration": np.int64(2)}])
    got = store.find("blocks")[0]
    assert got["attempt"] == 1 and got["duration"] == 2.0


def test_uint64_beyond_int63_rejected_and_nothing_written(store):
    big = 2**63
    cols = {
        "graph": ["g"] * 3,
        "block": ["b"] * 3,
        "u": np.array([1, 2, 3], dtype=np.uint64),
        "v": np.array([5, big, 7], dtype=np.uint64),
    }
    with pytest.raises(StoreError) as info:
        store.put("fragment_edges", cols)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "fragment_edges" in msg and "'v'" in msg and str(big) in msg and "row 1" in msg
    assert store.count("fragment_edges") == 0
    # Python ints, row-wise, in a batch with valid rows
    rows = [_edge("g", "b", 1, 2, 0, 0, 0.0, 1), _edge("g", "b", 3, 2**64 - 1, 0, 0, 0.0, 1)]
    with pytest.raises(ValueError, match=str(2**64 - 1)):
        store.put("fragment_edges", rows)
    assert store.count("fragment_edges") == 0
    # ints inside json fields too
    with pytest.raises(StoreError, match="'bbox'"):
        store.put("fragments", [{"graph": "g", "id": 1, "bbox": np.array([0, big], dtype=np.uint64)}])
    with pytest.raises(StoreError, match="'centroid'"):
        store.put("fragments", [{"graph": "g", "id": 1, "centroid": [1, big, 2]}])
    assert store.count("fragments") == 0
    with pytest.raises(StoreError, match="signed 64-bit"):
        store.put("fragment_segments", [{"graph": "g", "fragment": -(2**63) - 1, "segment": 1}])
    with pytest.raises(StoreError, match="expected an integer"):
        store.put("fragment_segments", [{"graph": "g", "fragment": 1.5, "segment": 1}])


# -- aggregation ---------------------------------------------------------------------------------
def test_aggregate_edges(store):
    rows = [
        _edge("mws", "b0", 1, 2, 10, -1, 0.5, 1),
        _edge("mws", "b1", 1, 2, 30, 5, 0.25, 2),
        _edge("mws", "b2", 1, 2, 20, 7, 1.0, 4),
        _edge("mws", "b0", 1, 3, -1, 9, 0.0, 0),
        _edge("mws", "b1", 2, 3, 4, -1, 0.75, 3),
        _edge("other", "b0", 1, 2, 99, 99, 9.0, 9),
    ]
    store.put("fragment_edges", rows)
    agg = store.aggregate_edges("fragment_edges", {"graph": "mws"})
    assert agg == {
        "u": [1, 1, 2],
        "v": [2, 3, 3],
        "attr_key": [30, -1, 4],
        "rep_key": [7, 9, -1],
        "aff_sum": [1.75, 0.0, 0.75],
        "aff_count": [7, 0, 3],
    }
    agg = store.aggregate_edges("fragment_edges", {"graph": "mws", "block": {"in": ["b0", "b2"]}})
    assert agg["attr_key"] == [20, -1] and agg["aff_count"] == [5, 0]
    assert store.aggregate_edges("fragment_edges")["attr_key"][0] == 99
    assert store.aggregate_edges("fragment_edges", {"graph": "none"}) == {
        k: [] for k in ("u", "v", "attr_key", "rep_key", "aff_sum", "aff_count")
    }
    # level edges use the same aggregation
    level_rows = [dict(r, level=1, region=r.pop("block")) for r in (dict(x) for x in rows[:3])]
    store.put("level_edges", level_rows)
    assert store.aggregate_edges("level_edges", {"level": 1})["aff_count"] == [7]
    with pytest.raises(StoreError, match="edge"):
        store.aggregate_edges("blocks")


def test_count_by(store):
    store.put("blocks", _blocks())
    assert store.count_by("blocks", "status") == {"done": 4, "failed": 2}
    assert store.count_by("blocks", "status", {"stage": "predict"}) == {"done": 2, "failed": 1}
    assert store.count_by("blocks", "host") == {"h1": 3, None: 3}
    assert store.count_by("blocks", "worker", {"worker": {"lt": 2}}) == {0: 1, 1: 1}
    assert store.count_by("blocks", "status", {"stage": "none"}) == {}


# -- leases ---------------------------------------------------------------------------------------
def _candidates(n, seg="seg"):
    return [
        {"segmentation": seg, "s1": i, "s2": i + 100, "score": 0.5, "n_contacts": 2, "status": "pending",
         "centroid": [i, i, i]}
        for i in range(1, n + 1)
    ]


def test_lease_claimants_never_share_rows(store):
    store.put("candidates", _candidates(6))
    store.put("candidates", _candidates(2, seg="other"))
    now = 1000.0
    a = store.lease("candidates", {"segmentation": "seg"}, owner="A", lease_seconds=60, limit=4, now=now)
    b = store.lease("candidates", {"segmentation": "seg"}, owner="B", lease_seconds=60, limit=4, now=now + 1)
    assert [r["s1"] for r in a] == [1, 2, 3, 4]  # key order
    assert [r["s1"] for r in b] == [5, 6]
    assert all(r["status"] == "leased" and r["lease_owner"] == "A" and r["attempts"] == 1 for r in a)
    assert a[0]["lease_expires"] == pytest.approx(now + 60)
    assert a[0]["centroid"] == [1, 1, 1]
    assert store.lease("candidates", {"segmentation": "seg"}, owner="C", lease_seconds=60, now=now + 2) == []
    assert store.lease("candidates", {"segmentation": "seg"}, owner="C", lease_seconds=60, limit=0) == []
    assert store.count("candidates", {"segmentation": "other", "status": "pending"}) == 2
    assert store.count_by("candidates", "lease_owner", {"segmentation": "seg"}) == {"A": 4, "B": 2}


def test_expired_lease_is_reclaimable_and_stale_owner_cannot_complete(store):
    store.put("candidates", _candidates(3))
    where = {"segmentation": "seg"}
    a = store.lease("candidates", where, owner="A", lease_seconds=10, limit=3, now=100.0)
    assert len(a) == 3
    # A decides the first row while its lease is valid
    key1 = {"segmentation": "seg", "s1": 1, "s2": 101}
    assert store.complete_lease("candidates", key1, owner="A", values={"merge": 1, "distance": 0.2, "decided_by": "A"})
    # the lease runs out: B reclaims the rest, not the decided row
    assert store.lease("candidates", where, owner="B", lease_seconds=10, limit=5, now=105.0) == []
    b = store.lease("candidates", where, owner="B", lease_seconds=10, limit=5, now=111.0)
    assert [r["s1"] for r in b] == [2, 3]
    assert all(r["attempts"] == 2 and r["lease_owner"] == "B" for r in b)
    # A's lease was lost: completing writes nothing
    key2 = {"segmentation": "seg", "s1": 2, "s2": 102}
    assert not store.complete_lease("candidates", key2, owner="A", values={"merge": 0, "decided_by": "A"})
    row = store.find("candidates", {"s1": 2})[0]
    assert row["status"] == "leased" and row["lease_owner"] == "B" and row["merge"] is None
    assert row["decided_by"] is None
    assert store.complete_lease("candidates", key2, owner="B", values={"merge": 0, "decided_by": "B"})
    # deciding twice: the second call finds no lease
    assert not store.complete_lease("candidates", key2, owner="B", values={"merge": 1})
    assert store.find("candidates", {"s1": 2}, fields=["merge", "status"]) == [{"merge": 0, "status": "decided"}]
    # a decided row is never leased again, even much later
    assert [r["s1"] for r in store.lease("candidates", where, owner="C", lease_seconds=10, limit=5, now=1e9)] == [3]
    assert store.count_by("candidates", "status") == {"decided": 2, "leased": 1}
    # a key that does not exist
    assert not store.complete_lease("candidates", {"segmentation": "seg", "s1": 9, "s2": 9}, owner="C", values={})
    with pytest.raises(StoreError, match="exactly the fields"):
        store.complete_lease("candidates", {"segmentation": "seg", "s1": 3}, owner="C", values={})
    with pytest.raises(StoreError, match="cannot be leased"):
        store.lease("blocks", {}, owner="A", lease_seconds=1)


def test_lease_uses_wall_clock_by_default(store):
    store.put("candidates", _candidates(2))
    t0 = time.time()
    a = store.lease("candidates", {}, owner="A", lease_seconds=0.0, limit=1)
    assert a[0]["lease_expires"] >= t0
    time.sleep(0.05)
    b = store.lease("candidates", {}, owner="B", lease_seconds=60.0, limit=2)
    assert sorted(r["s1"] for r in b) == [1, 2]  # A's zero-length lease expired


# -- blocks ---------------------------------------------------------------------------------------
def test_block_helpers(store):
    store.mark_block_done("predict", "0_0_0", worker=1, host="h", duration=np.float64(1.5), roi_offset=[0, 0, 0])
    store.mark_block_done("predict", "0_0_1")
    store.mark_block_failed("predict", "0_0_2", error="boom")
    store.mark_block_done("fragments", "0_0_0")
    assert store.done_blocks("predict") == {"0_0_0", "0_0_1"}
    assert store.done_blocks("fragments") == {"0_0_0"}
    assert store.done_blocks("agglomerate") == set()
    # a failed block that is re-run and succeeds
    store.mark_block_done("predict", "0_0_2", attempt=2)
    assert store.done_blocks("predict") == {"0_0_0", "0_0_1", "0_0_2"}
    row = store.find("blocks", {"stage": "predict", "block": "0_0_2"})[0]
    assert row["error"] is None and row["attempt"] == 2
    assert store.count("blocks") == 4
    assert store.reset_blocks("predict", ["0_0_1", "9_9_9"]) == 1
    assert store.done_blocks("predict") == {"0_0_0", "0_0_2"}
    assert store.reset_blocks("predict") == 2
    assert store.done_blocks("predict") == set()
    assert store.done_blocks("fragments") == {"0_0_0"}


def test_store_survives_pickling(store):
    store.put("blocks", _blocks(2))
    clone = pickle.loads(pickle.dumps(store))
    try:
        clone.ping()
        assert clone.count("blocks") == 2
        clone.mark_block_done("x", "y")
        assert store.done_blocks("x") == {"y"}
        assert clone.describe() == store.describe()
    finally:
        clone.close()


def test_ping_and_describe(store):
    store.ping()
    text = store.describe()
    assert store.backend in ("sqlite", "mongodb")
    assert "@" not in text


# -- MongoDB specifics (no server needed) ------------------------------------------------------
def test_ping_unreachable_mongodb_is_quick_and_hides_credentials():
    s = MongoStore("mongodb://user:secret@127.0.0.1:1/?authSource=admin", "run1", connect_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        s.ping()
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert elapsed < 5.0
    assert msg.startswith("cannot reach MongoDB at 127.0.0.1:1")
    assert "secret" not in msg and "user" not in msg
    assert "secret" not in s.describe() and "secret" not in repr(s)
    assert "127.0.0.1:1" in s.describe()
    # errors from other operations also leave credentials out
    with pytest.raises(StoreError) as info:
        s.count("blocks")
    assert "secret" not in str(info.value)
    s.close()


def test_redact_uri():
    red = redact_uri("mongodb://u:p%40ss@h1:27017,h2/db?tls=true&replicaSet=rs")
    assert red == "mongodb://h1:27017,h2/db?tls=true&replicaSet=rs"
    red = redact_uri("mongodb+srv://u:pw@cluster.example/?tlsCertificateKeyFilePassword=hunter2&authSource=admin")
    assert "hunter2" not in red and "pw" not in red and "authSource=admin" in red
    with pytest.raises(StoreError, match="not a MongoDB URI"):
        MongoStore("postgres://u:p@h/db", "x")
    with pytest.raises(StoreError, match="database name"):
        MongoStore("mongodb://h/", "a.b")


@pytest.mark.mongo
def test_mongoeco_login_options_pass_through_the_uri():
    """SCRAM credentials and options in the URI reach the server untouched; a wrong
    password fails with a StoreError that does not show it."""
    import urllib.parse

    from store_servers import MongoEcoServer, find_mongoeco_python

    py, reason = find_mongoeco_python()
    if py is None:
        pytest.skip(reason)
    password = "pa%ss/w@rd"
    with MongoEcoServer(py, users=[("alice", password)]) as server:
        hosts, _, query = server.uri.removeprefix("mongodb://").partition("/?")
        opts = f"{query}&authMechanism=SCRAM-SHA-256&authSource=admin"
        good = MongoStore(f"mongodb://alice:{urllib.parse.quote(password, safe='')}@{hosts}/?{opts}", "authdb")
        good.ping()
        good.mark_block_done("predict", "0_0_0")
        assert good.done_blocks("predict") == {"0_0_0"}
        assert "alice" not in good.describe() and "rd" not in good.describe()
        good.close()
        bad = MongoStore(f"mongodb://alice:wrongpass@{hosts}/?{opts}", "authdb", connect_timeout_s=2.0)
        with pytest.raises(StoreError) as info:
            bad.ping()
        assert "wrongpass" not in str(info.value) and "Authentication failed" in str(info.value)
        bad.close()


# -- SQLite specifics ------------------------------------------------------------------------
def test_sqlite_file_from_an_older_schema(tmp_path):
    import sqlite3

    from embedseg_daisy.store.sqlite import SQLiteStore

    # a table that lacks a newer column gets it added
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "runs" ("run_id" TEXT NOT NULL, "config" TEXT, PRIMARY KEY ("run_id")) WITHOUT ROWID')
    con.commit()
    con.close()
    s = SQLiteStore(path)
    s.put("runs", [{"run_id": "r", "config": {"a": 1}, "version": "1"}])
    assert s.find("runs", fields=["run_id", "version"]) == [{"run_id": "r", "version": "1"}]
    s.close()
    # a table whose natural key changed is refused with a clear message
    path = tmp_path / "older.sqlite"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "runs" ("name" TEXT NOT NULL, PRIMARY KEY ("name")) WITHOUT ROWID')
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="older version"):
        SQLiteStore(path).ping()
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "x.sqlite").ping()
    assert "x.sqlite" in SQLiteStore(tmp_path / "missing" / "x.sqlite").describe()
