"""Union-find of the tiled last level: the same components as scipy's, roots at the
smallest index, pairs fed in any chunking."""

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from embedseg_daisy.union_find import UnionFind


def scipy_roots(n, a, b):
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_match_scipy_in_any_chunking(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    a = rng.integers(0, n, 1500)
    b = rng.integers(0, n, 1500)
    expected = scipy_roots(n, a, b)
    whole = UnionFind(n)
    whole.union(a, b)
    assert np.array_equal(whole.roots(), expected)
    chunked = UnionFind(n)
    order = rng.permutation(len(a))
    for part in np.array_split(order, 7):
        chunked.union(b[part], a[part])  # swapped ends and shuffled: same components
    assert np.array_equal(chunked.roots(), expected)


def test_hand_example():
    uf = UnionFind(6)
    uf.union([4, 5, 1], [2, 4, 3])  # {2, 4, 5}, {1, 3}, {0}
    assert uf.roots().tolist() == [0, 1, 2, 1, 2, 2]


def test_bad_pairs_are_refused():
    uf = UnionFind(3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        uf.union([0], [3])
    with pytest.raises(ValueError, match="differ in length"):
        uf.union([0, 1], [2])


def test_unions_after_reading_roots_stay_valid():
    """roots() compresses in place; later unions must still give the right components."""
    rng = np.random.default_rng(5)
    n = 500
    a, b = rng.integers(0, n, 300), rng.integers(0, n, 300)
    uf = UnionFind(n)
    uf.union(a[:150], b[:150])
    assert np.array_equal(uf.roots(), scipy_roots(n, a[:150], b[:150]))
    uf.union(a[150:], b[150:])
    assert np.array_equal(uf.roots(), scipy_roots(n, a, b))
