"""graph.analysis.connected_labels: the channel identities, as scipy.sparse.csgraph would number them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from deploysparse.graph.analysis import connected_labels


def scipy_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


@pytest.mark.parametrize("seed", range(20))
def test_same_components_and_numbering_as_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    edges = int(rng.integers(0, 2 * n))
    a, b = rng.integers(0, n, edges), rng.integers(0, n, edges)
    np.testing.assert_array_equal(connected_labels(n, a, b), scipy_labels(n, a, b))


def test_long_chains_in_any_order() -> None:
    """A residual stream links one tensor to the next hundreds of times: a chain of nodes in
    increasing, decreasing and shuffled order, and a star whose centre is the largest node."""
    n = 5000
    order = np.random.default_rng(0).permutation(n)
    for path in (np.arange(n), np.arange(n)[::-1], order):
        labels = connected_labels(n, path[:-1], path[1:])
        assert (labels == 0).all()
    star = connected_labels(n, np.full(n - 1, n - 1), np.arange(n - 1))
    assert (star == 0).all()
    assert connected_labels(3, np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == [0, 1, 2]
