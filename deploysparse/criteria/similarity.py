"""Channel similarity (Zhang, Zhao, Ni, Zhang, Deng, 2019): channels that carry the same information
are redundant; cluster them, keep one per cluster, and let it carry the others' outgoing weights.

The paper's metric could not be verified (papers.md §3), so this is our derivation:
- Without calibration data, each channel is modelled as a Gaussian by its BatchNorm (mean beta_j,
  std |gamma_j|; one Gaussian per BN node it passes) and the distance is the 2-Wasserstein distance
  sqrt((beta_i-beta_j)² + (|gamma_i|-|gamma_j|)²), divided by the group's mean |gamma| to be unit-free.
- With calibration data we measure instead, on the tensors the group's consumers read, how much is
  lost when one channel is replaced by a multiple of the other: sqrt(1 - cos²(a_i, a_j)), the relative
  least-squares residual (a correlation without centring). We do not add the W2 term here: W2 calls a
  scaled copy (relu(c·x) = c·relu(x)) distant although the merge below reproduces it exactly.
- Without data and without BN (folded exports) the channel is described by its producers' filters
  and biases, and the distance is their Euclidean distance over the group's mean filter norm.
All three are exactly zero for identical copies, so merging copies is exact.

Clustering: scipy average linkage on that distance, cut into as many clusters as the budget keeps
(pinned channels are always kept and not clustered). The representative of a cluster is its medoid
(least summed distance to the others; ties: largest L2 filter norm). Every other member is removed and
merged into it: consumer column dst += f · column src, with f the least-squares factor
<a_src, a_dst>/<a_dst, a_dst> on the calibration activations (1.0 without data), exact for copies and
for positively scaled copies (relu(c·x) = c·relu(x)).

The score used by the global budget is each channel's distance to its nearest neighbour in the group,
mean-normalised: groups with many near-duplicates give up more channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deploysparse.criteria.base import CriterionContext, channel_slices, normalise_by_mean, weight_of
from deploysparse.criteria.inactive import consumer_views
from deploysparse.graph.groups import ChannelGroup
from deploysparse.graph.queries import group_producers


def pairwise(x: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """The square matrix of distances between the rows of x (scipy's pdist). scipy.spatial and
    scipy.cluster are imported where they are used, not when the registry loads every criterion:
    a prune with another criterion does not pay for them."""
    from scipy.spatial.distance import pdist, squareform

    return squareform(pdist(x, metric))


def w2_distance(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Pairwise 2-Wasserstein distance between Gaussians; mu, sigma (C, D) for D independent parts."""
    mu, sigma = np.atleast_2d(mu.T).T, np.atleast_2d(np.abs(sigma).T).T
    return np.sqrt(pairwise(mu, "sqeuclidean") + pairwise(sigma, "sqeuclidean"))


def merge_residual_distance(x: np.ndarray) -> np.ndarray:
    """sqrt(1 - cos²(x_i, x_j)) for rows of x (C, M): the relative error left when channel i is
    replaced by its least-squares multiple of channel j, which is exactly what a merge does. Zero for
    copies and scaled copies; two all-zero rows are at 0, a zero row and a live one at 1."""
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    unit = x / np.where(zero, 1.0, norms)[:, None]
    cos = np.clip(unit @ unit.T, -1.0, 1.0)
    d = np.sqrt(np.maximum(0.0, 1.0 - cos**2))
    d[zero[:, None] ^ zero[None, :]] = 1.0
    d[zero[:, None] & zero[None, :]] = 0.0
    np.fill_diagonal(d, 0.0)
    return d


@dataclass
class ChannelDescription:
    """Pairwise distances of a group's channels and, with data, their activation vectors."""

    distance: np.ndarray
    activations: np.ndarray | None
    norms: np.ndarray


def describe(group: ChannelGroup, ctx: CriterionContext) -> ChannelDescription:
    filters = [channel_slices(weight_of(ctx.ga, m), m) for m in group.producers]
    norms = sum(np.linalg.norm(f, axis=1) for f in filters) if filters else np.zeros(group.size)
    views = consumer_views(group, ctx) if ctx.has_data else []
    if views:
        x = np.concatenate([np.moveaxis(v, 1, 0).reshape(group.size, -1) for v in views], axis=1)
        return ChannelDescription(merge_residual_distance(x.astype(np.float64)), x, norms)
    bns = [n for n in group_producers(ctx.ga, group).norms if n.shift is not None]
    if bns:
        mu, sigma = [], []
        for norm in bns:
            sigma.append(channel_slices(weight_of(ctx.ga, norm.scale), norm.scale)[:, 0])
            mu.append(channel_slices(weight_of(ctx.ga, norm.shift), norm.shift)[:, 0])
        sigma_arr, mu_arr = np.stack(sigma, axis=1), np.stack(mu, axis=1)
        scale = float(np.abs(sigma_arr).mean()) or 1.0
        return ChannelDescription(w2_distance(mu_arr, sigma_arr) / scale, None, norms)
    rows = [channel_slices(weight_of(ctx.ga, m), m) for m in group.members if m.role in ("producer", "param")]
    described = np.concatenate(rows, axis=1) if rows else np.zeros((group.size, 1))
    scale = float(np.linalg.norm(described, axis=1).mean()) or 1.0
    return ChannelDescription(pairwise(described) / scale, None, norms)


def nearest_neighbour_score(distance: np.ndarray) -> np.ndarray:
    """Each channel's distance to its nearest other channel, mean-normalised (redundancy: low)."""
    if len(distance) < 2:
        return np.ones(len(distance))
    masked = distance + np.diag(np.full(len(distance), np.inf))
    return normalise_by_mean(masked.min(axis=1))


def cluster(distance: np.ndarray, clusters: int) -> np.ndarray:
    """Average-linkage labels (0-based) cut to at most `clusters` clusters."""
    n = len(distance)
    if clusters >= n:
        return np.arange(n)
    if clusters <= 1:
        return np.zeros(n, dtype=np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    tree = linkage(squareform(distance, checks=False), method="average")
    return fcluster(tree, t=clusters, criterion="maxclust") - 1


def select_and_merge(
    desc: ChannelDescription, candidates: np.ndarray, keep_count: int
) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Cluster `candidates` (channel indices) into keep_count clusters; keep each cluster's medoid
    (topped up by filter norm if ties left fewer clusters); merge the rest into their cluster's kept
    channel nearest to them."""
    if keep_count <= 0:
        return np.zeros(0, dtype=np.int64), []
    d = desc.distance[np.ix_(candidates, candidates)]
    labels = cluster(d, keep_count)
    kept: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        spread = d[np.ix_(members, members)].sum(axis=1)
        kept.append(int(members[np.lexsort((-desc.norms[candidates[members]], spread))[0]]))
    spare = [i for i in np.argsort(-desc.norms[candidates], kind="stable") if i not in set(kept)]
    kept += [int(i) for i in spare[: keep_count - len(kept)]]
    kept_arr = np.array(sorted(kept))
    merges = []
    for i in range(len(candidates)):
        if i in set(kept):
            continue
        same = kept_arr[labels[kept_arr] == labels[i]]
        if not len(same):
            continue
        dst = int(same[np.argmin(d[i, same])])
        merges.append(
            (int(candidates[i]), int(candidates[dst]), _factor(desc, candidates[i], candidates[dst]))
        )
    return np.sort(candidates[kept_arr]), merges


def _factor(desc: ChannelDescription, src: int, dst: int) -> float:
    if desc.activations is None:
        return 1.0
    a_src, a_dst = desc.activations[src], desc.activations[dst]
    energy = float(a_dst @ a_dst)
    return float(a_src @ a_dst) / energy if energy > 0 else 0.0


@dataclass(frozen=True)
class SimilarityCriterion:
    name: str = "similarity"
    needs_data: bool = False

    def score(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray:
        return nearest_neighbour_score(describe(group, ctx).distance)

    def merges(
        self, group: ChannelGroup, ctx: CriterionContext, keep: np.ndarray, dead: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
        """Re-choose the budget's kept set of the same size, block by block, and the merges."""
        desc = describe(group, ctx)
        pinned = np.zeros(group.size, dtype=bool)
        pinned[np.asarray(group.pinned_channels, dtype=np.int64)] = True
        dead_mask = np.zeros(group.size, dtype=bool)
        dead_mask[np.asarray(dead, dtype=np.int64)] = True
        keep_mask = np.zeros(group.size, dtype=bool)
        keep_mask[np.asarray(keep, dtype=np.int64)] = True
        block_size = group.size // group.block
        kept_all, merges_all = [np.flatnonzero(pinned | (keep_mask & dead_mask & ~pinned))], []
        for b in range(group.block):
            part = np.arange(b * block_size, (b + 1) * block_size)
            candidates = part[~pinned[part] & ~dead_mask[part]]
            wanted = int(
                keep_mask[part].sum() - pinned[part].sum() - (keep_mask & dead_mask & ~pinned)[part].sum()
            )
            kept, merges = select_and_merge(desc, candidates, wanted)
            kept_all.append(kept)
            merges_all += merges
        return np.unique(np.concatenate(kept_all)).astype(np.int64), merges_all


SIMILARITY = SimilarityCriterion()
