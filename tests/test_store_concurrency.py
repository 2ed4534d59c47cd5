"""Several worker processes writing and leasing at once, on SQLite and on mongoeco
(a MongoDB wire-protocol test stand-in, not a production store; a real MongoDB too
when ``$EMBEDSEG_TEST_MONGODB_URI`` is set).

Workers are spawned processes that receive the store object pickled, so this also
checks that a store crossing a process boundary opens its own connection."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from store_servers import backend_store  # noqa: E402

N_WORKERS = 4
BLOCKS_PER_WORKER = 3
N_BLOCKS = N_WORKERS * BLOCKS_PER_WORKER
#: (pairs, pairs written by every block, candidates) per backend: mongoeco is slow
SIZES = {"sqlite": (3000, 1000, 300), "mongoeco": (40, 10, 40), "mongodb": (400, 100, 100)}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mongoeco", marks=pytest.mark.mongo),
        pytest.param("mongodb", marks=pytest.mark.mongo),
    ]
)
def store(request, tmp_path):
    s, cleanup = backend_store(request.param, tmp_path)
    s.sizes = SIZES[request.param]
    try:
        yield s
    finally:
        cleanup()


# -- deterministic edge contributions ---------------------------------------------------------
def _pairs(n_pairs):
    return [(10 + 3 * j, 10 + 3 * j + 1 + j % 7) for j in range(n_pairs)]


def _block_rows(b, n_pairs, n_shared, attempt):
    """Contributions of block ``b``: the shared pairs plus every N_BLOCKS-th other pair.
    Attempt 0 is an earlier, different run of the block with a stale extra pair."""
    rows = []
    for j, (u, v) in enumerate(_pairs(n_pairs)):
        if j < n_shared or j % N_BLOCKS == b:
            rows.append(
                {
                    "graph": "mws",
                    "block": f"0_0_{b}",
                    "u": u,
                    "v": v,
                    "attr_key": (b * 7 + j * 13) % 97 + (1000 if attempt == 0 else 0),
                    "rep_key": (b * 5 + j * 3) % 89 - 1,
                    "aff_sum": (b + j % 5) / 4.0,  # exact in binary: sums do not depend on order
                    "aff_count": b + j % 3 + (50 if attempt == 0 else 0),
                }
            )
    if attempt == 0:
        rows.append(dict(rows[0], u=10**9 + b, v=10**9 + b + 1))
    return rows


def _expected(n_pairs, n_shared):
    agg = {}
    for b in range(N_BLOCKS):
        for r in _block_rows(b, n_pairs, n_shared, attempt=1):
            k = (r["u"], r["v"])
            a = agg.get(k)
            if a is None:
                agg[k] = [r["attr_key"], r["rep_key"], r["aff_sum"], r["aff_count"]]
            else:
                a[0] = max(a[0], r["attr_key"])
                a[1] = max(a[1], r["rep_key"])
                a[2] += r["aff_sum"]
                a[3] += r["aff_count"]
    return agg


def _edge_worker(args):
    store, worker, n_pairs, n_shared = args
    store.ping()
    blocks = [worker + N_WORKERS * i for i in range(BLOCKS_PER_WORKER)]
    for attempt in (0, 1):  # an earlier run, then the re-run that replaces it
        for b in blocks:
            store.put("fragment_edges", _block_rows(b, n_pairs, n_shared, attempt),
                      replace_where={"graph": "mws", "block": f"0_0_{b}"})
    for b in blocks:  # the same rows once more, plain upsert
        store.put("fragment_edges", _block_rows(b, n_pairs, n_shared, 1))
        store.mark_block_done("fragment_edges", f"0_0_{b}", worker=worker, host=os.uname().nodename)
    store.close()
    return os.getpid()


def _lease_worker(args):
    store, owner = args
    store.ping()
    leased, decided = [], []
    while True:
        rows = store.lease("candidates", {"segmentation": "seg"}, owner=owner, lease_seconds=600, limit=2)
        if not rows:
            break
        for r in rows:
            key = {"segmentation": r["segmentation"], "s1": r["s1"], "s2": r["s2"]}
            leased.append((r["s1"], r["s2"], r["attempts"]))
            if store.complete_lease("candidates", key, owner=owner,
                                    values={"decided_by": owner, "merge": r["s1"] % 2, "distance": 0.5}):
                decided.append((r["s1"], r["s2"]))
    store.close()
    return owner, leased, decided


def _run_worker(fn, args, barrier, results):
    try:
        barrier.wait(120)  # every worker has imported and connected: now race
        results.put(("ok", fn(args)))
    except BaseException as e:  # reported to the parent
        results.put(("error", f"{type(e).__name__}: {e}"))


def _race(fn, args):
    """Run ``fn(a)`` for every ``a`` in its own spawned process, all starting together."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()
    procs = [ctx.Process(target=_run_worker, args=(fn, a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=240) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    errors = [msg for status, msg in out if status == "error"]
    assert not errors, errors
    return [value for _, value in out]


def test_concurrent_edge_writes_aggregate_exactly_once(store):
    n_pairs, n_shared, _ = store.sizes
    pids = _race(_edge_worker, [(store, w, n_pairs, n_shared) for w in range(N_WORKERS)])
    assert len(set(pids)) == N_WORKERS

    expected = _expected(n_pairs, n_shared)
    agg = store.aggregate_edges("fragment_edges", {"graph": "mws"})
    pairs = list(zip(agg["u"], agg["v"]))
    assert len(pairs) == len(set(pairs)) == len(expected)
    assert pairs == sorted(expected)
    for i, k in enumerate(pairs):
        assert [agg["attr_key"][i], agg["rep_key"][i], agg["aff_sum"][i], agg["aff_count"][i]] == expected[k], k

    rows = store.find_columns("fragment_edges", {"graph": "mws"}, fields=["block", "u", "v"])
    keys = list(zip(rows["block"], rows["u"], rows["v"]))
    want = {(r["block"], r["u"], r["v"]) for b in range(N_BLOCKS) for r in _block_rows(b, n_pairs, n_shared, 1)}
    dup = [k for k, n in Counter(keys).items() if n > 1]
    assert not dup
    assert set(keys) == want  # no stale row from the earlier run survives
    assert store.done_blocks("fragment_edges") == {f"0_0_{b}" for b in range(N_BLOCKS)}


def test_concurrent_leases_decide_every_row_once(store):
    n = store.sizes[2]
    now = time.time()
    rows = []
    for i in range(1, n + 1):
        row = {"segmentation": "seg", "s1": i, "s2": 10_000 + i, "score": 0.9, "n_contacts": 2, "status": "pending"}
        if i % 10 == 3:  # leased by a worker that died: expired, reclaimable
            row.update(status="leased", lease_owner="dead", lease_expires=now - 60, attempts=1)
        if i % 10 == 7:  # leased by a live worker: not claimable
            row.update(status="leased", lease_owner="alive", lease_expires=now + 3600, attempts=1)
        rows.append(row)
    store.put("candidates", rows)
    alive = {(r["s1"], r["s2"]) for r in rows if r.get("lease_owner") == "alive"}
    dead = {(r["s1"], r["s2"]) for r in rows if r.get("lease_owner") == "dead"}

    results = _race(_lease_worker, [(store, f"w{w}") for w in range(N_WORKERS)])

    leased = Counter((s1, s2) for _, ls, _ in results for s1, s2, _ in ls)
    assert max(leased.values()) == 1, "two workers held the same valid lease"
    decided = Counter(k for _, _, ds in results for k in ds)
    everyone = {(r["s1"], r["s2"]) for r in rows}
    assert set(decided) == everyone - alive
    assert max(decided.values()) == 1
    attempts = {(s1, s2): a for _, ls, _ in results for s1, s2, a in ls}
    assert all(attempts[k] == (2 if k in dead else 1) for k in attempts)

    by_worker = {k: owner for owner, _, ds in results for k in ds}
    final = store.find("candidates", {"segmentation": "seg"})
    assert len(final) == n
    for r in final:
        k = (r["s1"], r["s2"])
        if k in alive:
            assert r["status"] == "leased" and r["lease_owner"] == "alive" and r["decided_by"] is None
        else:
            assert r["status"] == "decided" and r["decided_by"] == by_worker[k] == r["lease_owner"]
            assert r["merge"] == r["s1"] % 2
    assert store.count_by("candidates", "status") == {"decided": n - len(alive), "leased": len(alive)}


def _fork_child(store, q):
    try:
        store.put("blocks", [{"stage": "child", "block": str(os.getpid()), "status": "done"}])
        q.put(store.count("blocks"))
    except BaseException as e:  # pragma: no cover - reported to the parent
        q.put(repr(e))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_store_used_before_fork_works_in_child_and_parent(store):
    store.mark_block_done("parent", "0")  # opens the connection / client in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fork_child, args=(store, q))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    assert got == 2, got
    assert p.exitcode == 0
    store.mark_block_done("parent", "1")  # the parent's connection still works
    assert store.count("blocks") == 3
    assert len(store.done_blocks("child")) == 1
