"""All numba code of the Mutex Watershed, in one module.

Numba's on-disk cache (``cache=True``) is invalidated only when the file that defines a
cached function changes, not when a function it inlines from another file does; keeping
every jitted function in this file keeps the cache sound.  The public APIs live in
:mod:`~embedseg_daisy.mws.keys`, :mod:`~embedseg_daisy.mws.voxel` and
:mod:`~embedseg_daisy.mws.graph`.

Sections: global edge keys (bijective tie-breaks), the union-find / mutex engine with
the region rules, voxel edge sweeps and processing, the graph kernel.

Engine
------
State (numba arrays; the growable ones are re-allocated by the drivers through
:func:`ensure_room` before an operation that may need room):

``node`` (int64, n)
    ``node[x] >= 0`` is the union-find parent of ``x`` (path halving); a root ``r``
    holds ``~info`` with ``info = (slot + 1) << 16 | rank << 8 | flags`` (union by
    rank; ``flags``: ``FROZEN``, ``OUTSIDE_MUTEX``; ``slot = -1``: no mutex yet).
mutex slots ``slots`` (int32, 4 per slot: head, length, forward, frozen)
    every cluster with a mutex owns a slot: the head and length of a singly linked list
    (entries in ``pool``, int32 pairs: partner slot, next) of its mutex partners, a
    forwarding pointer (slots are never reused: when two clusters merge, the slot with
    the shorter list is forwarded to the other) and a copy of the cluster's frozen flag
    (so that a partner's state is read without touching the node array).  Entries
    name the partner's slot at the time of insertion and are resolved through the
    forwarding pointers (path halving).
hash set ``ht`` (uint64, power-of-two capacity, linear probing)
    ``min_slot << 32 | max_slot`` for every pair of clusters with a mutex.  Checking a
    mutex is one probe.  When two clusters merge, the pairs of the shorter list are
    re-keyed onto the surviving slot (small-to-large); the old keys stay behind as
    garbage (their dead slot never comes back) and are dropped when the table is
    rebuilt.
``meta`` (int64)
    hash-set entries (live + garbage) and shift, slot and pool use.

:func:`internal_edge` is ordinary MWS between unfrozen clusters plus the rules for
frozen ones (see :mod:`embedseg_daisy.mws.voxel`); :func:`cross_edge` freezes or marks
an outside mutex.

Certain mutexes.  The region rules call a mutex *certain* when it was committed while
at least one of its clusters was unfrozen.  Only certain mutexes are ever consulted: a
mutex check involving an unfrozen cluster can only find certain mutexes (freezing is
permanent), two frozen clusters never merge in the region whatever their mutexes, and
absorption asks for *certain* W-F mutexes.  A mutex between two frozen clusters would
therefore never change a decision; it is not stored, and every stored mutex is certain.
For the same reason the drivers skip any edge between two frozen clusters.
"""

from __future__ import annotations

import numba
import numpy as np

# ================================================================ global edge keys

TIEBREAK_RASTER = 0
TIEBREAK_TILE = 1
TIEBREAK_HASH = 2
TIEBREAKS = {"raster": TIEBREAK_RASTER, "tile": TIEBREAK_TILE, "hash": TIEBREAK_HASH}
DEFAULT_TIEBREAK = TIEBREAK_RASTER

#: Tile shape of ``TIEBREAK_TILE`` (z, y, x), as log2 sizes.
TILE_BITS = (2, 4, 4)
_INTRA_BITS = sum(TILE_BITS)

#: Keys are ``priority << KEY_BITS | tiebreak`` with a ``KEY_BITS``-bit tie-break, so
#: that every key is < 2**63 (storable as a signed 64-bit integer, e.g. in BSON).
KEY_BITS = 55
TILE_ID_BITS = KEY_BITS - _INTRA_BITS
_MASK_KEY = (1 << KEY_BITS) - 1
_MASK_TILE = (1 << TILE_ID_BITS) - 1

# Odd multipliers (from splitmix64 / murmur finalisers), truncated.
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_C3 = 0xFF51AFD7ED558CCD


def _odd(c: int, bits: int) -> int:
    return (c & ((1 << bits) - 1)) | 1


_MK = (_odd(_C1, KEY_BITS), _odd(_C2, KEY_BITS), _odd(_C3, KEY_BITS))
_MK_INV = tuple(pow(m, -1, 1 << KEY_BITS) for m in _MK)
_MT = (_odd(_C1, TILE_ID_BITS), _odd(_C2, TILE_ID_BITS), _odd(_C3, TILE_ID_BITS))
_MT_INV = tuple(pow(m, -1, 1 << TILE_ID_BITS) for m in _MT)

UKEY = np.uint64(_MASK_KEY)
UTILE = np.uint64(_MASK_TILE)
A1, A2, A3 = (np.uint64(m) for m in _MK)
A1I, A2I, A3I = (np.uint64(m) for m in _MK_INV)
B1, B2, B3 = (np.uint64(m) for m in _MT)
B1I, B2I, B3I = (np.uint64(m) for m in _MT_INV)
# xorshift amounts >= half the width, so that x ^= x >> s is its own one-step inverse
SK1 = np.uint64((KEY_BITS + 1) // 2)
SK2 = np.uint64((KEY_BITS + 1) // 2 + 1)
ST1 = np.uint64((TILE_ID_BITS + 1) // 2)
ST2 = np.uint64((TILE_ID_BITS + 1) // 2 + 1)
SKEY = np.uint64(KEY_BITS)
SINTRA = np.uint64(_INTRA_BITS)
UINTRA = np.uint64((1 << _INTRA_BITS) - 1)
TZB, TYB, TXB = (np.uint64(b) for b in TILE_BITS)


@numba.njit(cache=True, inline="always")
def mix_key(x):
    """Bijection of [0, 2**KEY_BITS) (multiply / xorshift rounds modulo 2**KEY_BITS)."""
    x = (np.uint64(x) * A1) & UKEY
    x ^= x >> SK1
    x = (x * A2) & UKEY
    x ^= x >> SK2
    x = (x * A3) & UKEY
    x ^= x >> SK1
    return x


@numba.njit(cache=True, inline="always")
def unmix_key(x):
    """Inverse of :func:`mix_key`."""
    x = np.uint64(x)
    x ^= x >> SK1
    x = (x * A3I) & UKEY
    x ^= x >> SK2
    x = (x * A2I) & UKEY
    x ^= x >> SK1
    x = (x * A1I) & UKEY
    return x


@numba.njit(cache=True, inline="always")
def mix_tile(x):
    """Bijection of [0, 2**TILE_ID_BITS)."""
    x = (np.uint64(x) * B1) & UTILE
    x ^= x >> ST1
    x = (x * B2) & UTILE
    x ^= x >> ST2
    x = (x * B3) & UTILE
    x ^= x >> ST1
    return x


@numba.njit(cache=True, inline="always")
def unmix_tile(x):
    """Inverse of :func:`mix_tile`."""
    x = np.uint64(x)
    x ^= x >> ST1
    x = (x * B3I) & UTILE
    x ^= x >> ST2
    x = (x * B2I) & UTILE
    x ^= x >> ST1
    x = (x * B1I) & UTILE
    return x


@numba.njit(cache=True, inline="always")
def tiebreak(k, gz, gy, gx, vz, vy, vx, mode):
    """KEY_BITS-bit tie-break of edge (k, gz, gy, gx) in a volume of shape (vz, vy, vx)."""
    if mode == TIEBREAK_TILE:
        tz = gz >> 2
        ty = gy >> 4
        tx = gx >> 4
        ntz = (vz + 3) >> 2
        nty = (vy + 15) >> 4
        ntx = (vx + 15) >> 4
        tile = ((k * ntz + tz) * nty + ty) * ntx + tx
        intra = ((gz & 3) << 8) | ((gy & 15) << 4) | (gx & 15)
        return (mix_tile(np.uint64(tile)) << SINTRA) | np.uint64(intra)
    gid = np.uint64(((k * vz + gz) * vy + gy) * vx + gx)
    if mode == TIEBREAK_HASH:
        return mix_key(gid)
    return gid


@numba.njit(cache=True, inline="always")
def decode_tiebreak(t, vz, vy, vx, mode):
    """Inverse of :func:`tiebreak`: returns (k, gz, gy, gx)."""
    t = np.uint64(t)
    if mode == TIEBREAK_TILE:
        tile = np.int64(unmix_tile(t >> SINTRA))
        intra = np.int64(t & UINTRA)
        ntz = (vz + 3) >> 2
        nty = (vy + 15) >> 4
        ntx = (vx + 15) >> 4
        tx = tile % ntx
        tile //= ntx
        ty = tile % nty
        tile //= nty
        tz = tile % ntz
        k = tile // ntz
        return k, (tz << 2) | (intra >> 8), (ty << 4) | ((intra >> 4) & 15), (tx << 4) | (intra & 15)
    if mode == TIEBREAK_HASH:
        t = unmix_key(t)
    g = np.int64(t)
    gx = g % vx
    g //= vx
    gy = g % vy
    g //= vy
    gz = g % vz
    return g // vz, gz, gy, gx


@numba.njit(cache=True)
def _keys_loop(priority, k, gz, gy, gx, vz, vy, vx, mode, out):
    for i in range(out.size):
        t = tiebreak(np.int64(k[i]), np.int64(gz[i]), np.int64(gy[i]), np.int64(gx[i]), vz, vy, vx, mode)
        out[i] = (np.uint64(priority[i]) << SKEY) | t



# ================================================================ union-find / mutex engine

FROZEN = 1
OUTSIDE_MUTEX = 2
ESCAPES = 4  # used by the voxel labelling pass

EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S32 = np.uint64(32)
LIMIT32 = (1 << 31) - 1

# meta indices
HT_COUNT = 0
HT_SHIFT = 1
SLOT_USED = 2
POOL_USED = 3
POOL_FREE = 4
N_META = 8


@numba.njit(cache=True)
def new_state(n, ht_cap=1024, slot_cap=1024, pool_cap=2048):
    node = np.full(n, -1, dtype=np.int64)  # every node a root with info 0
    ht = np.full(ht_cap, EMPTY, dtype=np.uint64)
    meta = np.zeros(N_META, dtype=np.int64)
    logcap = 0
    while (1 << logcap) < ht_cap:
        logcap += 1
    meta[HT_SHIFT] = 64 - logcap
    meta[POOL_FREE] = -1
    slots = np.empty(4 * slot_cap, dtype=np.int32)
    pool = np.empty(2 * pool_cap, dtype=np.int32)
    return node, ht, slots, pool, meta


@numba.njit(cache=True, inline="always")
def find(node, x):
    while True:
        p = node[x]
        if p < 0:
            return x
        gp = node[p]
        if gp < 0:
            return p
        node[x] = gp
        x = gp


@numba.njit(cache=True, inline="always")
def root_info(node, r):
    return ~node[r]


@numba.njit(cache=True, inline="always")
def info_slot(info):
    return (info >> 16) - 1


@numba.njit(cache=True, inline="always")
def set_flags(node, r, f):
    node[r] = ~((~node[r]) | f)


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
def ht_lookup(ht, meta, key):
    mask = ht.size - 1
    i = _home(key, meta[HT_SHIFT])
    while True:
        e = ht[i]
        if e == key:
            return i
        if e == EMPTY:
            return -1
        i = (i + 1) & mask


@numba.njit(cache=True, inline="always")
def ht_insert(ht, meta, key):
    """Insert a key known to be absent; capacity must allow it."""
    mask = ht.size - 1
    i = _home(key, meta[HT_SHIFT])
    while ht[i] != EMPTY:
        i = (i + 1) & mask
    ht[i] = key
    meta[HT_COUNT] += 1


@numba.njit(cache=True, inline="always")
def slot_alive(slots, s):
    return slots[4 * s + 2] == s


@numba.njit(cache=True, inline="always")
def resolve(slots, s):
    """Current slot of a (possibly forwarded) slot, with path halving."""
    while True:
        f = slots[4 * s + 2]
        if f == s:
            return s
        ff = slots[4 * f + 2]
        slots[4 * s + 2] = ff
        s = ff


@numba.njit(cache=True)
def rebuild_ht(ht, slots, meta, extra):
    """Drop garbage (keys with a dead slot); size the table so that it is <= 1/4 full
    and ``extra`` more keys keep it <= 1/2 full."""
    live = 0
    for i in range(ht.size):
        key = ht[i]
        if key != EMPTY:
            if slot_alive(slots, np.int64(key >> _S32)) and slot_alive(slots, np.int64(key & np.uint64(0xFFFFFFFF))):
                live += 1
    cap = ht.size
    while 4 * (live + 1) > cap or 2 * (live + extra) > cap:
        cap *= 2
    logcap = 0
    while (1 << logcap) < cap:
        logcap += 1
    new = np.full(cap, EMPTY, dtype=np.uint64)
    meta[HT_SHIFT] = 64 - logcap
    meta[HT_COUNT] = 0
    for i in range(ht.size):
        key = ht[i]
        if key != EMPTY:
            if slot_alive(slots, np.int64(key >> _S32)) and slot_alive(slots, np.int64(key & np.uint64(0xFFFFFFFF))):
                ht_insert(new, meta, key)
    return new


@numba.njit(cache=True)
def _grow32(arr, need):
    cap = arr.size
    while cap < need:
        cap *= 2
    if cap > LIMIT32:
        raise OverflowError("mutex store exceeds 2**31 entries")
    new = np.empty(cap, dtype=np.int32)
    new[: arr.size] = arr
    return new


@numba.njit(cache=True, inline="always")
def needs_room(ht, slots, pool, meta):
    """True when ensure_room must run before a repulsive internal edge."""
    return (
        2 * (meta[HT_COUNT] + 1) > ht.size
        or 4 * (meta[SLOT_USED] + 2) > slots.size
        or 2 * (meta[POOL_USED] + 2) > pool.size
    )


@numba.njit(cache=True, inline="always")
def merge_room(node, ht, slots, meta, ru, rv):
    """0 when merging roots ru, rv fits the hash set, else the number of keys to make room for."""
    su = info_slot(~node[ru])
    if su < 0:
        return 0
    sv = info_slot(~node[rv])
    if sv < 0:
        return 0
    extra = min(slots[4 * su + 1], slots[4 * sv + 1])
    if 2 * (meta[HT_COUNT] + extra) > ht.size:
        return extra
    return 0


@numba.njit(cache=True)
def ensure_room(ht, slots, pool, meta):
    """Room for one more mutex (one pair, two slots, two list entries)."""
    if 2 * (meta[HT_COUNT] + 1) > ht.size:
        ht = rebuild_ht(ht, slots, meta, 1)
    if 4 * (meta[SLOT_USED] + 2) > slots.size:
        slots = _grow32(slots, 4 * (meta[SLOT_USED] + 2))
    if 2 * (meta[POOL_USED] + 2) > pool.size:
        pool = _grow32(pool, 2 * (meta[POOL_USED] + 2))
    return ht, slots, pool


# ---------------------------------------------------------------- mutex slots


@numba.njit(cache=True, inline="always")
def _alloc_slot(slots, meta, frozen):
    s = meta[SLOT_USED]
    meta[SLOT_USED] = s + 1
    slots[4 * s] = -1
    slots[4 * s + 1] = 0
    slots[4 * s + 2] = s
    slots[4 * s + 3] = frozen
    return s


@numba.njit(cache=True, inline="always")
def freeze(node, slots, r):
    """Mark root r's cluster frozen (node flags and its slot's copy)."""
    info = ~node[r]
    node[r] = ~(info | FROZEN)
    s = info_slot(info)
    if s >= 0:
        slots[4 * s + 3] = 1


@numba.njit(cache=True, inline="always")
def _push(slots, pool, meta, s, partner):
    e = meta[POOL_FREE]
    if e >= 0:
        meta[POOL_FREE] = pool[2 * e + 1]
    else:
        e = meta[POOL_USED]
        meta[POOL_USED] = e + 1
    pool[2 * e] = partner
    pool[2 * e + 1] = slots[4 * s]
    slots[4 * s] = e
    slots[4 * s + 1] += 1


@numba.njit(cache=True, inline="always")
def has_mutex(node, ht, meta, ra, rb):
    sa = info_slot(~node[ra])
    if sa < 0:
        return False
    sb = info_slot(~node[rb])
    if sb < 0:
        return False
    return ht_lookup(ht, meta, pair_key(sa, sb)) >= 0


@numba.njit(cache=True, inline="always")
def add_mutex(node, ht, slots, pool, meta, ra, rb):
    """Record a mutex between roots ra != rb (ensure_room must have run)."""
    sa = info_slot(~node[ra])
    if sa < 0:
        sa = _alloc_slot(slots, meta, (~node[ra]) & FROZEN)
        node[ra] -= (sa + 1) << 16  # ~info grows by (sa + 1) << 16
    sb = info_slot(~node[rb])
    if sb < 0:
        sb = _alloc_slot(slots, meta, (~node[rb]) & FROZEN)
        node[rb] -= (sb + 1) << 16
    key = pair_key(sa, sb)
    if ht_lookup(ht, meta, key) >= 0:
        return
    ht_insert(ht, meta, key)
    _push(slots, pool, meta, sa, sb)
    _push(slots, pool, meta, sb, sa)


@numba.njit(cache=True, inline="always")
def merge(node, ht, slots, pool, meta, ra, rb):
    """Union of roots ra != rb (no mutex between them); returns the new root.

    The flags of the new root are the OR of both; the caller adjusts them.
    """
    ia = ~node[ra]
    ib = ~node[rb]
    rka = (ia >> 8) & 0xFF
    rkb = (ib >> 8) & 0xFF
    if rka < rkb:
        ra, rb = rb, ra
        ia, ib = ib, ia
        rka, rkb = rkb, rka
    node[rb] = ra
    rank = rka + 1 if rka == rkb else rka
    flags = (ia | ib) & 0xFF
    sa = (ia >> 16) - 1
    sb = (ib >> 16) - 1
    if sb >= 0:
        if sa < 0:
            sa = sb
        else:
            if slots[4 * sa + 1] < slots[4 * sb + 1]:
                sa, sb = sb, sa
            slots[4 * sb + 2] = sa  # forward the dying slot
            e = slots[4 * sb]
            cnt = slots[4 * sa + 1]
            head = slots[4 * sa]
            while e >= 0:
                nxt = pool[2 * e + 1]
                ps = resolve(slots, pool[2 * e])
                keep = False
                if ps != sa:
                    key = pair_key(sa, ps)
                    if ht_lookup(ht, meta, key) < 0:
                        ht_insert(ht, meta, key)
                        keep = True
                if keep:
                    pool[2 * e] = ps
                    pool[2 * e + 1] = head
                    head = e
                    cnt += 1
                else:
                    pool[2 * e + 1] = meta[POOL_FREE]
                    meta[POOL_FREE] = e
                e = nxt
            slots[4 * sa] = head
            slots[4 * sa + 1] = cnt
            slots[4 * sb] = -1
            slots[4 * sb + 1] = 0
    if sa >= 0:
        slots[4 * sa + 3] = flags & FROZEN
    node[ra] = ~(((sa + 1) << 16) | (rank << 8) | flags)
    return ra


@numba.njit(cache=True)
def _absorbable(node, ht, slots, pool, meta, rw, ry):
    """Frozen W may absorb unfrozen Y (no W-Y mutex, no outside mutex of Y) when every
    frozen mutex partner F of Y has a (certain: every stored mutex is) mutex with W."""
    sy = info_slot(~node[ry])
    if sy < 0:
        return True
    sw = info_slot(~node[rw])
    e = slots[4 * sy]
    while e >= 0:
        ps = resolve(slots, pool[2 * e])
        if slots[4 * ps + 3]:
            if sw < 0 or ht_lookup(ht, meta, pair_key(sw, ps)) < 0:
                return False
        e = pool[2 * e + 1]
    return True


@numba.njit(cache=True, inline="always")
def cross_edge(node, slots, r, attractive):
    """Edge from root r's cluster to a node outside the region."""
    info = ~node[r]
    if attractive:
        if not (info & FROZEN):
            freeze(node, slots, r)
    elif not (info & FROZEN):
        node[r] = ~(info | OUTSIDE_MUTEX)


@numba.njit(cache=True, inline="always")
def internal_edge(node, ht, slots, pool, meta, ru, rv, attractive):
    """Edge between two different roots of the region, processed in key order.

    For a repulsive edge ``ensure_room`` must have run (see ``needs_room``).
    """
    fu = (~node[ru]) & FROZEN
    fv = (~node[rv]) & FROZEN
    if not attractive:
        if not (fu and fv):  # a mutex between two frozen clusters is never consulted
            add_mutex(node, ht, slots, pool, meta, ru, rv)
        return
    if fu and fv:
        return  # deferred (whatever their mutexes)
    if has_mutex(node, ht, meta, ru, rv):
        return
    if not fu and not fv:
        merge(node, ht, slots, pool, meta, ru, rv)
        return
    if fu:
        rw = ru
        ry = rv
    else:
        rw = rv
        ry = ru
    if (not ((~node[ry]) & OUTSIDE_MUTEX)) and _absorbable(node, ht, slots, pool, meta, rw, ry):
        merge(node, ht, slots, pool, meta, rw, ry)  # flags OR: the result is frozen
    else:
        freeze(node, slots, ry)  # deferred: Y's global cluster is now unknown


# ================================================================ voxel sweeps and processing

#: bit of the edge code that marks a cross edge, for int64 / uint32 code arrays; the bit
#: below it marks "the inside endpoint is q"; the voxel index sits above ``kb`` channel bits.
CROSS_BIT_64 = 62
CROSS_BIT_32 = 31

MODE_COUNT = 0
MODE_CODES = 1
MODE_KEYS = 2


# ---------------------------------------------------------------- edge sweeps


@numba.njit(cache=True, inline="always")
def _range(lo, hi, o, n):
    """Owner coordinates p (0 <= p, p + o < n) with p or p + o in [lo, hi)."""
    a = max(0, -o, lo - max(o, 0))
    b = min(n, n - o, hi - min(o, 0))
    return a, b


@numba.njit(cache=True, nogil=True)
def _edge_pass(affs, fg, offs, att, ins_lo, ins_hi, mode, counts, starts, out, kb, cross_bit, origin, vshape, tb_mode):
    """Sweep all existing edges touching the inside box.

    MODE_COUNT: histogram of priorities into ``counts``.
    MODE_CODES: write edge codes ``(p << kb) | k`` (+ cross / q-inside bits) at ``starts[prio]++``,
    sweeping (k, z, y, x) descending, so each bucket is in descending raster-key order.
    MODE_KEYS: write keys at ``starts[prio]++``.
    """
    nk, nz, ny, nx = affs.shape
    vz, vy, vx = vshape[0], vshape[1], vshape[2]
    cflag = np.int64(1) << cross_bit
    qflag = np.int64(1) << (cross_bit - 1)
    for k in range(nk - 1, -1, -1):
        oz = offs[k, 0]
        oy = offs[k, 1]
        ox = offs[k, 2]
        is_att = att[k]
        z0, z1 = _range(ins_lo[0], ins_hi[0], oz, nz)
        y0, y1 = _range(ins_lo[1], ins_hi[1], oy, ny)
        x0, x1 = _range(ins_lo[2], ins_hi[2], ox, nx)
        for z in range(z1 - 1, z0 - 1, -1):
            pz = ins_lo[0] <= z and z < ins_hi[0]
            qz = ins_lo[0] <= z + oz and z + oz < ins_hi[0]
            for y in range(y1 - 1, y0 - 1, -1):
                py = pz and ins_lo[1] <= y and y < ins_hi[1]
                qy = qz and ins_lo[1] <= y + oy and y + oy < ins_hi[1]
                for x in range(x1 - 1, x0 - 1, -1):
                    a = np.int64(affs[k, z, y, x])
                    prio = a if is_att else 255 - a
                    if prio == 0:
                        continue
                    p_in = py and ins_lo[2] <= x and x < ins_hi[2]
                    q_in = qy and ins_lo[2] <= x + ox and x + ox < ins_hi[2]
                    if not (p_in or q_in):
                        continue
                    if not fg[z, y, x] or not fg[z + oz, y + oy, x + ox]:
                        continue
                    if mode == MODE_COUNT:
                        counts[prio] += 1
                    elif mode == MODE_CODES:
                        code = (np.int64((z * ny + y) * nx + x) << kb) | k
                        if not p_in:
                            code |= cflag | qflag
                        elif not q_in:
                            code |= cflag
                        pos = starts[prio]
                        starts[prio] = pos + 1
                        out[pos] = code
                    else:
                        t = tiebreak(
                            np.int64(k), origin[0] + z, origin[1] + y, origin[2] + x, vz, vy, vx, tb_mode
                        )
                        pos = starts[prio]
                        starts[prio] = pos + 1
                        out[pos] = np.int64((np.uint64(prio) << SKEY) | t)


@numba.njit(cache=True, nogil=True)
def _keys_to_codes(buf, bounds, shape, ins_lo, ins_hi, offs, kb, cross_bit, origin, vshape, tb_mode):
    """Sort each priority bucket of keys, reverse it (descending) and decode in place."""
    nz, ny, nx = shape[0], shape[1], shape[2]
    cflag = np.int64(1) << cross_bit
    qflag = np.int64(1) << (cross_bit - 1)
    mask = np.int64(_MASK_KEY)
    for b in range(bounds.size - 1):
        s = bounds[b]
        e = bounds[b + 1]
        if e - s > 1:
            buf[s:e].sort()  # keys < 2**63: signed order == key order
            i = s
            j = e - 1
            while i < j:
                t = buf[i]
                buf[i] = buf[j]
                buf[j] = t
                i += 1
                j -= 1
        for i in range(s, e):
            k, gz, gy, gx = decode_tiebreak(buf[i] & mask, vshape[0], vshape[1], vshape[2], tb_mode)
            z = gz - origin[0]
            y = gy - origin[1]
            x = gx - origin[2]
            p_in = (
                ins_lo[0] <= z and z < ins_hi[0] and ins_lo[1] <= y and y < ins_hi[1]
                and ins_lo[2] <= x and x < ins_hi[2]
            )
            zq = z + offs[k, 0]
            yq = y + offs[k, 1]
            xq = x + offs[k, 2]
            q_in = (
                ins_lo[0] <= zq and zq < ins_hi[0] and ins_lo[1] <= yq and yq < ins_hi[1]
                and ins_lo[2] <= xq and xq < ins_hi[2]
            )
            code = (np.int64((z * ny + y) * nx + x) << kb) | k
            if not p_in:
                code |= cflag | qflag
            elif not q_in:
                code |= cflag
            buf[i] = code


@numba.njit(cache=True, nogil=True)
def _edge_pass_float(
    affs, fg, offs, att, ins_lo, ins_hi, count_only, codes, prios, tbs, kb, cross_bit, origin, vshape, tb_mode
):
    """Float affinities: collect codes, float priorities and tie-breaks; returns the count."""
    nk, nz, ny, nx = affs.shape
    n = 0
    cflag = np.int64(1) << cross_bit
    qflag = np.int64(1) << (cross_bit - 1)
    for k in range(nk - 1, -1, -1):
        oz = offs[k, 0]
        oy = offs[k, 1]
        ox = offs[k, 2]
        is_att = att[k]
        z0, z1 = _range(ins_lo[0], ins_hi[0], oz, nz)
        y0, y1 = _range(ins_lo[1], ins_hi[1], oy, ny)
        x0, x1 = _range(ins_lo[2], ins_hi[2], ox, nx)
        for z in range(z1 - 1, z0 - 1, -1):
            for y in range(y1 - 1, y0 - 1, -1):
                for x in range(x1 - 1, x0 - 1, -1):
                    a = np.float64(affs[k, z, y, x])
                    prio = a if is_att else 1.0 - a
                    if not prio > 0.0:
                        continue
                    p_in = (
                        ins_lo[0] <= z and z < ins_hi[0] and ins_lo[1] <= y and y < ins_hi[1]
                        and ins_lo[2] <= x and x < ins_hi[2]
                    )
                    q_in = (
                        ins_lo[0] <= z + oz and z + oz < ins_hi[0] and ins_lo[1] <= y + oy
                        and y + oy < ins_hi[1] and ins_lo[2] <= x + ox and x + ox < ins_hi[2]
                    )
                    if not (p_in or q_in):
                        continue
                    if not fg[z, y, x] or not fg[z + oz, y + oy, x + ox]:
                        continue
                    if not count_only:
                        code = (np.int64((z * ny + y) * nx + x) << kb) | k
                        if not p_in:
                            code |= cflag | qflag
                        elif not q_in:
                            code |= cflag
                        codes[n] = code
                        prios[n] = prio
                        tbs[n] = tiebreak(
                            np.int64(k), origin[0] + z, origin[1] + y, origin[2] + x,
                            vshape[0], vshape[1], vshape[2], tb_mode,
                        )
                    n += 1
    return n


# ---------------------------------------------------------------- processing


@numba.njit(cache=True, nogil=True)
def _process_codes(codes, n_nodes, lin_off, att, kb, cross_bit):
    """Run the (region) MWS over edge codes given in processing order."""
    node, ht, slots, pool, meta = new_state(n_nodes)
    kmask = (np.int64(1) << kb) - 1
    cflag = np.int64(1) << cross_bit
    qflag = np.int64(1) << (cross_bit - 1)
    pmask = qflag - 1
    last_u = -1
    last_v = -1
    for i in range(codes.size):
        c = np.int64(codes[i])
        k = c & kmask
        p = (c & pmask) >> kb
        q = p + lin_off[k]
        a = att[k]
        if c & cflag:
            cross_edge(node, slots, find(node, q if (c & qflag) else p), a)
            continue
        ru = find(node, p)
        rv = find(node, q)
        if ru == rv or ((~node[ru]) & (~node[rv]) & FROZEN):
            continue  # same cluster, or two frozen clusters: nothing can happen
        if a:
            extra = merge_room(node, ht, slots, meta, ru, rv)
            if extra > 0:
                ht = rebuild_ht(ht, slots, meta, extra)
        else:
            # consecutive repulsive edges often join the same two clusters: the pair is
            # known to exist (mutexes are permanent and both are still roots)
            if (ru == last_u and rv == last_v) or (ru == last_v and rv == last_u):
                continue
            last_u = ru
            last_v = rv
            if needs_room(ht, slots, pool, meta):
                ht, slots, pool = ensure_room(ht, slots, pool, meta)
        internal_edge(node, ht, slots, pool, meta, ru, rv, a)
    return node, meta, ht.size, slots.size // 4, pool.size // 2


@numba.njit(cache=True, nogil=True)
def _labels(node, fg, ins_lo, ins_hi, out_lo, out_hi, origin, vshape):
    """Label the output box (inside the inside box).  A cluster is reported frozen when
    it is frozen or has voxels in the inside box outside the output box."""
    nz, ny, nx = fg.shape
    vy = vshape[1]
    vx = vshape[2]
    for z in range(ins_lo[0], ins_hi[0]):
        zin = out_lo[0] <= z and z < out_hi[0]
        for y in range(ins_lo[1], ins_hi[1]):
            yin = zin and out_lo[1] <= y and y < out_hi[1]
            for x in range(ins_lo[2], ins_hi[2]):
                if yin and out_lo[2] <= x and x < out_hi[2]:
                    continue
                if fg[z, y, x]:
                    r = find(node, (z * ny + y) * nx + x)
                    node[r] = ~((~node[r]) | ESCAPES)
    lab = np.zeros(node.size, dtype=np.uint64)
    sz = out_hi[0] - out_lo[0]
    sy = out_hi[1] - out_lo[1]
    sx = out_hi[2] - out_lo[2]
    out = np.zeros((sz, sy, sx), dtype=np.uint64)
    ids = np.empty(sz * sy * sx, dtype=np.uint64)
    frz = np.empty(sz * sy * sx, dtype=np.bool_)
    m = 0
    for z in range(out_lo[0], out_hi[0]):
        for y in range(out_lo[1], out_hi[1]):
            for x in range(out_lo[2], out_hi[2]):
                if not fg[z, y, x]:
                    continue
                r = find(node, (z * ny + y) * nx + x)
                if lab[r] == 0:
                    g = ((origin[0] + z) * vy + origin[1] + y) * vx + origin[2] + x
                    lab[r] = np.uint64(g + 1)
                    ids[m] = lab[r]
                    frz[m] = ((~node[r]) & (FROZEN | ESCAPES)) != 0
                    m += 1
                out[z - out_lo[0], y - out_lo[1], x - out_lo[2]] = lab[r]
    return out, ids[:m].copy(), frz[:m].copy()


# ================================================================ graph kernel


@numba.njit(cache=True, nogil=True)
def _graph_kernel(num_nodes, u, v, is_att, order, node_inside):
    node, ht, slots, pool, meta = new_state(num_nodes)
    for i in range(order.size):
        e = order[i]
        a = u[e]
        b = v[e]
        ia = node_inside[a]
        ib = node_inside[b]
        if ia and ib:
            ra = find(node, a)
            rb = find(node, b)
            if ra == rb or ((~node[ra]) & (~node[rb]) & FROZEN):
                continue  # same cluster, or two frozen clusters: nothing can happen
            if is_att[e]:
                extra = merge_room(node, ht, slots, meta, ra, rb)
                if extra > 0:
                    ht = rebuild_ht(ht, slots, meta, extra)
            elif needs_room(ht, slots, pool, meta):
                ht, slots, pool = ensure_room(ht, slots, pool, meta)
            internal_edge(node, ht, slots, pool, meta, ra, rb, is_att[e])
        elif ia:
            cross_edge(node, slots, find(node, a), is_att[e])
        elif ib:
            cross_edge(node, slots, find(node, b), is_att[e])
    # cluster id = smallest node index of the cluster
    rep = np.full(num_nodes, -1, dtype=np.int64)
    cluster = np.empty(num_nodes, dtype=np.int64)
    frozen = np.zeros(num_nodes, dtype=np.bool_)
    for n in range(num_nodes):
        r = find(node, n)
        if rep[r] < 0:
            rep[r] = n
        cluster[n] = rep[r]
        frozen[n] = node_inside[n] and ((~node[r]) & FROZEN) != 0
    return cluster, frozen
