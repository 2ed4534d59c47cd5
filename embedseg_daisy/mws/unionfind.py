"""Union-find with mutex constraints and freezing: the engine shared by voxel and graph MWS.

State (all numba-friendly arrays; growable arrays are re-allocated by the drivers
through the ``grow_*`` functions before an operation that may need room):

``parent`` (int64, n)
    union-find forest (path halving); ``size`` (int64, n) is valid at roots.
``flags`` (uint8, n)
    at roots: ``FROZEN`` and ``OUTSIDE_MUTEX`` (region mode).
``mid`` (int64, n)
    at roots: the cluster's *mutex slot* or -1 when it has no mutex.
mutex slots
    ``slot_head`` / ``slot_cnt``: per slot a singly linked list (in a pool:
    ``pool_node`` = any voxel/node of the partner cluster, ``pool_next``) of partner
    clusters.  Entries may go stale (a partner merged with another partner); they are
    resolved through ``find`` and dropped when their list is re-keyed.
hash set
    ``ht_keys`` (uint64, power-of-two capacity, linear probing with backward-shift
    deletion) of slot pairs ``(min << 32) | max``; ``ht_vals`` (uint8) holds the
    *certain* flag of the mutex.  It holds exactly one entry per pair of current
    clusters with a mutex, so checking a mutex is O(1).  When two clusters merge, the
    slot with the shorter list is re-keyed into the other (small-to-large).
``meta`` (int64)
    scalars: hash-set count and shift, slot count and free list, pool use and free
    list.

Region rules (see ``docs/design.md`` and ``embedseg_daisy.mws.voxel``):
``handle_edge`` implements ordinary MWS for edges between unfrozen clusters and the
freezing rules for cross edges and frozen clusters.
"""

from __future__ import annotations

import numba
import numpy as np

FROZEN = np.uint8(1)
OUTSIDE_MUTEX = np.uint8(2)

EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S32 = np.uint64(32)

# meta indices
HT_COUNT = 0
HT_SHIFT = 1
SLOT_USED = 2
SLOT_FREE = 3
POOL_USED = 4
POOL_FREE = 5
N_META = 8

# cross-edge codes for handle_edge
INTERNAL = 0
CROSS_U_INSIDE = 1
CROSS_V_INSIDE = 2


@numba.njit(cache=True)
def new_state(n, ht_cap=1024, slot_cap=1024, pool_cap=2048):
    parent = np.arange(n, dtype=np.int64)
    size = np.ones(n, dtype=np.int64)
    flags = np.zeros(n, dtype=np.uint8)
    mid = np.full(n, -1, dtype=np.int64)
    ht_keys = np.full(ht_cap, EMPTY, dtype=np.uint64)
    ht_vals = np.zeros(ht_cap, dtype=np.uint8)
    meta = np.zeros(N_META, dtype=np.int64)
    logcap = 0
    while (1 << logcap) < ht_cap:
        logcap += 1
    meta[HT_SHIFT] = 64 - logcap
    meta[SLOT_FREE] = -1
    meta[POOL_FREE] = -1
    slot_head = np.full(slot_cap, -1, dtype=np.int64)
    slot_cnt = np.zeros(slot_cap, dtype=np.int64)
    pool_node = np.empty(pool_cap, dtype=np.int64)
    pool_next = np.empty(pool_cap, dtype=np.int64)
    return parent, size, flags, mid, ht_keys, ht_vals, meta, slot_head, slot_cnt, pool_node, pool_next


@numba.njit(cache=True, inline="always")
def find(parent, x):
    while True:
        p = parent[x]
        if p == x:
            return x
        gp = parent[p]
        parent[x] = gp
        x = gp


# ---------------------------------------------------------------- hash set


@numba.njit(cache=True, inline="always")
def pair_key(a, b):
    if a < b:
        return (np.uint64(a) << _S32) | np.uint64(b)
    return (np.uint64(b) << _S32) | np.uint64(a)


@numba.njit(cache=True, inline="always")
def _home(key, shift):
    return np.int64((key * _GOLD) >> np.uint64(shift))


@numba.njit(cache=True, inline="always")
def ht_lookup(ht_keys, meta, key):
    mask = ht_keys.size - 1
    i = _home(key, meta[HT_SHIFT])
    while True:
        k = ht_keys[i]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & mask


@numba.njit(cache=True, inline="always")
def ht_insert(ht_keys, ht_vals, meta, key, val):
    """Insert a key known to be absent (capacity must allow it)."""
    mask = ht_keys.size - 1
    i = _home(key, meta[HT_SHIFT])
    while ht_keys[i] != EMPTY:
        i = (i + 1) & mask
    ht_keys[i] = key
    ht_vals[i] = val
    meta[HT_COUNT] += 1


@numba.njit(cache=True)
def ht_delete(ht_keys, ht_vals, meta, i):
    """Delete the entry at slot i (backward-shift deletion, no tombstones)."""
    mask = ht_keys.size - 1
    shift = meta[HT_SHIFT]
    j = i
    while True:
        j = (j + 1) & mask
        k = ht_keys[j]
        if k == EMPTY:
            break
        h = _home(k, shift)
        # the entry at j may move to i unless its home lies cyclically in (i, j]
        if i <= j:
            stays = i < h and h <= j
        else:
            stays = i < h or h <= j
        if not stays:
            ht_keys[i] = k
            ht_vals[i] = ht_vals[j]
            i = j
    ht_keys[i] = EMPTY
    meta[HT_COUNT] -= 1


@numba.njit(cache=True)
def grow_ht(ht_keys, ht_vals, meta):
    cap = ht_keys.size * 2
    new_keys = np.full(cap, EMPTY, dtype=np.uint64)
    new_vals = np.zeros(cap, dtype=np.uint8)
    meta[HT_SHIFT] -= 1
    meta[HT_COUNT] = 0
    for i in range(ht_keys.size):
        k = ht_keys[i]
        if k != EMPTY:
            ht_insert(new_keys, new_vals, meta, k, ht_vals[i])
    return new_keys, new_vals


@numba.njit(cache=True)
def grow_slots(slot_head, slot_cnt):
    cap = slot_head.size * 2
    h = np.full(cap, -1, dtype=np.int64)
    c = np.zeros(cap, dtype=np.int64)
    h[: slot_head.size] = slot_head
    c[: slot_cnt.size] = slot_cnt
    return h, c


@numba.njit(cache=True)
def grow_pool(pool_node, pool_next):
    cap = pool_node.size * 2
    a = np.empty(cap, dtype=np.int64)
    b = np.empty(cap, dtype=np.int64)
    a[: pool_node.size] = pool_node
    b[: pool_next.size] = pool_next
    return a, b


@numba.njit(cache=True, inline="always")
def need_ht(ht_keys, meta):
    """True when the hash set needs to grow before one more insertion."""
    return 2 * (meta[HT_COUNT] + 1) > ht_keys.size


@numba.njit(cache=True, inline="always")
def need_slots(slot_head, meta):
    return meta[SLOT_FREE] < 0 and meta[SLOT_USED] + 2 > slot_head.size


@numba.njit(cache=True, inline="always")
def need_pool(pool_node, meta):
    return meta[POOL_USED] + 2 > pool_node.size


# ---------------------------------------------------------------- mutex slots


@numba.njit(cache=True, inline="always")
def _alloc_slot(slot_head, slot_cnt, meta):
    s = meta[SLOT_FREE]
    if s >= 0:
        meta[SLOT_FREE] = slot_head[s]
    else:
        s = meta[SLOT_USED]
        meta[SLOT_USED] = s + 1
    slot_head[s] = -1
    slot_cnt[s] = 0
    return s


@numba.njit(cache=True, inline="always")
def _free_slot(slot_head, slot_cnt, meta, s):
    slot_head[s] = meta[SLOT_FREE]
    slot_cnt[s] = 0
    meta[SLOT_FREE] = s


@numba.njit(cache=True, inline="always")
def _alloc_entry(pool_node, pool_next, meta):
    e = meta[POOL_FREE]
    if e >= 0:
        meta[POOL_FREE] = pool_next[e]
        return e
    e = meta[POOL_USED]
    meta[POOL_USED] = e + 1
    return e


@numba.njit(cache=True, inline="always")
def has_mutex(mid, ht_keys, meta, ra, rb):
    sa = mid[ra]
    sb = mid[rb]
    if sa < 0 or sb < 0:
        return False
    return ht_lookup(ht_keys, meta, pair_key(sa, sb)) >= 0


@numba.njit(cache=True, inline="always")
def add_mutex(mid, ht_keys, ht_vals, meta, slot_head, slot_cnt, pool_node, pool_next, ra, rb, certain):
    """Record a mutex between roots ra != rb (capacity must have been ensured)."""
    sa = mid[ra]
    if sa < 0:
        sa = _alloc_slot(slot_head, slot_cnt, meta)
        mid[ra] = sa
    sb = mid[rb]
    if sb < 0:
        sb = _alloc_slot(slot_head, slot_cnt, meta)
        mid[rb] = sb
    key = pair_key(sa, sb)
    i = ht_lookup(ht_keys, meta, key)
    if i >= 0:
        if certain:
            ht_vals[i] = 1
        return
    ht_insert(ht_keys, ht_vals, meta, key, np.uint8(1 if certain else 0))
    e = _alloc_entry(pool_node, pool_next, meta)
    pool_node[e] = rb
    pool_next[e] = slot_head[sa]
    slot_head[sa] = e
    slot_cnt[sa] += 1
    e = _alloc_entry(pool_node, pool_next, meta)
    pool_node[e] = ra
    pool_next[e] = slot_head[sb]
    slot_head[sb] = e
    slot_cnt[sb] += 1


@numba.njit(cache=True, inline="always")
def merge(parent, size, flags, mid, ht_keys, ht_vals, meta, slot_head, slot_cnt, pool_node, pool_next, ra, rb):
    """Union of roots ra != rb (no mutex between them); returns the new root.

    The flags of the new root are the OR of both; the caller adjusts them.
    """
    if size[ra] < size[rb]:
        ra, rb = rb, ra
    parent[rb] = ra
    size[ra] += size[rb]
    flags[ra] |= flags[rb]
    sa = mid[ra]
    sb = mid[rb]
    if sb < 0:
        return ra
    if sa < 0:
        mid[ra] = sb
        return ra
    if slot_cnt[sa] < slot_cnt[sb]:
        sa, sb = sb, sa
        mid[ra] = sa
    # re-key every pair of the shorter list (sb) onto the surviving slot sa
    e = slot_head[sb]
    meta[7] += 1
    while e >= 0:
        meta[6] += 1
        nxt = pool_next[e]
        keep = False
        ps = mid[find(parent, pool_node[e])]
        i = ht_lookup(ht_keys, meta, pair_key(sb, ps))
        if i >= 0:
            certain = ht_vals[i]
            ht_delete(ht_keys, ht_vals, meta, i)
            key = pair_key(sa, ps)
            j = ht_lookup(ht_keys, meta, key)
            if j >= 0:
                ht_vals[j] |= certain
            else:
                ht_insert(ht_keys, ht_vals, meta, key, certain)
                keep = True
        if keep:
            pool_next[e] = slot_head[sa]
            slot_head[sa] = e
            slot_cnt[sa] += 1
        else:
            pool_next[e] = meta[POOL_FREE]
            meta[POOL_FREE] = e
        e = nxt
    _free_slot(slot_head, slot_cnt, meta, sb)
    return ra


@numba.njit(cache=True)
def _absorbable(parent, flags, mid, ht_keys, ht_vals, meta, slot_head, pool_node, pool_next, rw, ry):
    """Frozen W may absorb unfrozen Y (no W-Y mutex): every frozen mutex partner F of Y
    must have a *certain* mutex with W."""
    sy = mid[ry]
    if sy < 0:
        return True
    sw = mid[rw]
    e = slot_head[sy]
    while e >= 0:
        r = find(parent, pool_node[e])
        if flags[r] & FROZEN:
            if sw < 0:
                return False
            i = ht_lookup(ht_keys, meta, pair_key(sw, mid[r]))
            if i < 0 or ht_vals[i] == 0:
                return False
        e = pool_next[e]
    return True


@numba.njit(cache=True, inline="always")
def handle_edge(
    parent, size, flags, mid, ht_keys, ht_vals, meta, slot_head, slot_cnt, pool_node, pool_next,
    u, v, attractive, cross,
):
    """Process one edge in key order.

    ``cross``: INTERNAL, CROSS_U_INSIDE (v lies outside the region) or CROSS_V_INSIDE.
    For a repulsive internal edge the caller must have ensured capacity (``need_*``).
    """
    if cross != INTERNAL:
        r = find(parent, u if cross == CROSS_U_INSIDE else v)
        if attractive:
            flags[r] |= FROZEN
        elif not (flags[r] & FROZEN):
            flags[r] |= OUTSIDE_MUTEX
        return
    ru = find(parent, u)
    rv = find(parent, v)
    if ru == rv:
        return
    fu = flags[ru] & FROZEN
    fv = flags[rv] & FROZEN
    if not attractive:
        add_mutex(mid, ht_keys, ht_vals, meta, slot_head, slot_cnt, pool_node, pool_next, ru, rv, not (fu and fv))
        return
    if has_mutex(mid, ht_keys, meta, ru, rv):
        return
    if not fu and not fv:
        merge(parent, size, flags, mid, ht_keys, ht_vals, meta, slot_head, slot_cnt, pool_node, pool_next, ru, rv)
        return
    if fu and fv:
        return  # deferred
    if fu:
        rw = ru
        ry = rv
    else:
        rw = rv
        ry = ru
    if (not (flags[ry] & OUTSIDE_MUTEX)) and _absorbable(
        parent, flags, mid, ht_keys, ht_vals, meta, slot_head, pool_node, pool_next, rw, ry
    ):
        r = merge(parent, size, flags, mid, ht_keys, ht_vals, meta, slot_head, slot_cnt, pool_node, pool_next, rw, ry)
        flags[r] |= FROZEN
    else:
        flags[ry] |= FROZEN  # deferred: Y's global cluster is now unknown
