"""Provable Filter Pruning (Liebenwein, Baykal, Lang, Feldman, Rus, ICLR 2020).

A channel matters as much as the largest share it ever has in any consumer's pre-activation, split by
sign: for consumer weight W, input a >= 0, z+ = conv(a, W+), z- = conv(a, W-) (no bias),

    g = max(W+_ij a_jp / z+_ip,  W-_ij a_jp / z-_ip),     s_j = max over points, filters i, patches p
                                                           and kernel positions of g

(|z| below float32 eps counts as infinite, i.e. contributes 0; an input with negative entries
counts as two points a+ and -a-). From the sensitivities, p_j = s_j / sum s_j and per layer

    alpha = 2·3·log(8·(P+1)·k/delta)    S_l = alpha·sum_j s_j    m_l(eps) = ceil(3·(6+2eps)·S_l/eps²)
    kept u_l(eps) = ceil(sum_j 1 - (1-p_j)^m_l), at least 1,

with P the consumer's output positions, k its kernel size, delta = 1e-16. One eps for the whole network
is found by Brent's method so that the plan meets the budget. The deterministic variant (the paper's
configs) keeps the top-u channels by s_j; the random variant draws m_l channels multinomially from p
and scales each kept channel's outgoing weights by count_j/(m_l·p_j), an unbiased estimate.

Where a group differs from the paper's "layer" (our groups come from the ONNX graph):
- A group read by several consumers (a residual stream, a tensor feeding two branches) takes, per
  channel, the max sensitivity over its consumers, and alpha from the consumer with the largest
  (P+1)·k: a channel is as important as its most important use, and the bound stays conservative.
- A flatten into Gemm is a conv whose kernel covers the whole map: P = 1, k = features per channel.
- Consumers we cannot view batch-first (grouped convs, W @ x) are skipped; a group with no usable
  consumer gets no score and stays whole.
- --ratio means, as for every criterion, the fraction of live channels removed; --flops-target the
  fraction of MACs kept. (The paper budgets parameters.) The random variant meets the budget in
  expectation only, and needs --round-to 1.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from deploysparse.budget import (
    Allocation,
    Budget,
    BudgetTarget,
    GroupBudget,
    finish,
    group_budgets,
    macs_counter,
)
from deploysparse.criteria.base import CriterionContext, positions_of, weight_of
from deploysparse.errors import UsageError
from deploysparse.graph.geometry import conv_geometry
from deploysparse.graph.groups import ChannelGroup, Member
from deploysparse.graph.queries import ConsumerView, consumer_input

DELTA = 1e-16
FLOAT_EPS = float(np.finfo(np.float32).eps)
CHUNK_ELEMENTS = 1 << 22
CACHE_ELEMENTS = 1 << 18  # float32 elements of one block of conv_sensitivity's max-product (1 MiB)
LOG_EPS_RANGE = (math.log(1e-8), math.log(1e8))
ZERO_SENSITIVITY_FLOOR = 1e-9  # departure from the paper: see GroupSensitivity.kept


def as_points(a: np.ndarray) -> np.ndarray:
    """The paper's nonnegative points: a itself if nonnegative, else a+ and -a- stacked."""
    if np.all(a >= 0):
        return a
    return np.concatenate([np.maximum(a, 0.0), np.maximum(-a, 0.0)])


def _inverse(z: np.ndarray) -> np.ndarray:
    """1/z with |z| < float32 eps read as infinite (contribution 0)."""
    out = np.zeros_like(z)
    big = np.abs(z) >= FLOAT_EPS
    out[big] = 1.0 / z[big]
    return out


def dense_sensitivity(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """s_f for a dense layer y = W a: a (N, F) input points, w (O, F). Returns (F,)."""
    a = as_points(np.asarray(a, dtype=np.float64))
    s = np.zeros(w.shape[1])
    for part in (np.maximum(w, 0.0), np.minimum(w, 0.0)):
        inv = _inverse(a @ part.T)  # (N, O)
        step = max(1, CHUNK_ELEMENTS // max(part.size, 1))
        for start in range(0, a.shape[0], step):
            share = part[None, :, :] * inv[start : start + step, :, None]  # (n, O, F)
            s = np.maximum(s, (share.max(axis=1) * a[start : start + step]).max(axis=0))
    return s


def conv_patches(
    a: np.ndarray,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, ...],
    dilations: tuple[int, int],
) -> np.ndarray:
    """im2col: (N, C, H, W) -> (N, C, kh·kw, P) with P output positions."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    padded = np.pad(a, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo = windows.shape[:4]
    return windows.reshape(n, c, ho * wo, kh * kw).transpose(0, 1, 3, 2)


def conv_sensitivity(
    a: np.ndarray,
    w: np.ndarray,
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, ...] = (0, 0, 0, 0),
    dilations: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """s_j for a 2-D conv (group 1): a (N, C, H, W) input points, w (O, C, kh, kw). Returns (C,).

    The max-product over points, filters, patches and kernel positions has no BLAS form, so its cost
    is what matters: channels that are zero on every point (dead filters upstream, often half of a
    net trained with Adam + L2) have s_j = 0 and are skipped, as are filters whose weights of this
    sign are all zero; the products run in float32 (the shares lie in [0, 1]; z and the float-eps
    test stay float64), one filter at a time over cache-sized blocks of points (on every core): max
    over filters of W/z first, then one multiplication by the input."""
    a = as_points(np.asarray(a, dtype=np.float64))
    out_channels, channels, kh, kw = w.shape
    s = np.zeros(channels)
    live = np.flatnonzero(a.reshape(a.shape[0], channels, -1).max(axis=(0, 2)) > 0)
    if not live.size:
        return s
    cols = conv_patches(a[:, live], (kh, kw), strides, pads, dilations)  # (N, L, K, P)
    points, rows, positions = cols.shape[0], live.size * kh * kw, cols.shape[3]
    cols = np.ascontiguousarray(cols.reshape(points, rows, positions))
    by_position = np.ascontiguousarray(cols.transpose(0, 2, 1), dtype=np.float32)  # (N, P, R)
    step = max(1, CACHE_ELEMENTS // max(rows * positions, 1))  # points per block, sized for the cache
    t = np.zeros(rows, dtype=np.float32)
    stacked = cols.transpose(1, 0, 2).reshape(rows, points * positions)
    for part in (np.maximum(w[:, live], 0.0), -np.minimum(w[:, live], 0.0)):  # both as nonnegative
        flat = part.reshape(out_channels, rows)
        z = (flat @ stacked).reshape(-1, points, positions)
        inv = _inverse(z).astype(np.float32)  # (O, N, P)
        active = np.flatnonzero((flat.max(axis=1) > 0) & (inv.max(axis=(1, 2)) > 0))  # others add 0
        np.maximum(t, _max_product(flat.astype(np.float32)[active], inv[active], by_position, step), out=t)
    s[live] = t.astype(np.float64).reshape(live.size, kh * kw).max(axis=1)
    return s


def _max_product(flat: np.ndarray, inv: np.ndarray, by_position: np.ndarray, step: int) -> np.ndarray:
    """t[r] = max over points n and positions p of a[n, p, r] * max over filters i of W[i, r] / z[i, n, p]:
    flat (I, R) weights, inv (I, N, P) = 1/z, by_position (N, P, R) = a. Blocks of `step` points run
    on every usable core: numpy's elementwise kernels release the GIL, and a max does not depend on
    the order its parts are taken in, so the result is the same as one thread's."""
    from deploysparse.backends.machine import usable_cores  # not at import: see tests/test_cli_imports.py

    points, positions, rows = by_position.shape
    starts = list(range(0, points, step))
    workers = max(1, min(usable_cores(), len(starts)))

    def blocks(mine: list[int]) -> np.ndarray:
        best = np.empty((step, positions, rows), dtype=np.float32)
        share = np.empty_like(best)
        t = np.zeros(rows, dtype=np.float32)
        for start in mine:
            n = min(step, points - start)
            block, tmp = best[:n], share[:n]
            block.fill(0.0)
            for i in range(flat.shape[0]):  # best = max over filters of W[i, r] / z[n, i, p]
                np.multiply(flat[i][None, None, :], inv[i, start : start + n, :, None], out=tmp)
                np.maximum(block, tmp, out=block)
            block *= by_position[start : start + n]  # times a[n, r, p]
            np.maximum(t, block.reshape(-1, rows).max(axis=0), out=t)
        return t

    with ThreadPoolExecutor(workers) as pool:
        return np.maximum.reduce(list(pool.map(blocks, [starts[k::workers] for k in range(workers)])))


def layer_alpha(positions: int, kernel: int, delta: float = DELTA) -> float:
    """alpha = 2·3·log(8·(P+1)·k/delta)."""
    return 2.0 * 3.0 * math.log(8.0 * (positions + 1) * kernel / delta)


def sample_size(eps: float, total_sensitivity: float) -> int:
    """m_l(eps) = ceil(3·(6+2eps)·S_l/eps²), S_l = alpha·sum s_j; at least 1."""
    return max(1, math.ceil(3.0 * (6.0 + 2.0 * eps) * total_sensitivity / eps**2))


def expected_kept(p: np.ndarray, m: int) -> int:
    """u = ceil(sum_j 1 - (1-p_j)^m): the expected number of distinct channels in m draws; at least 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        missed = np.exp(m * np.log1p(-p))
    return max(1, math.ceil(float(np.sum(1.0 - missed)) - 1e-9))


def calibration_points(largest_output: int, delta: float = DELTA) -> int:
    """|S| = ceil(3·log(8·eta*/delta)): the calibration points the paper's guarantee asks for."""
    return math.ceil(3.0 * math.log(8.0 * largest_output / delta))


@dataclass
class GroupSensitivity:
    """What PFP needs of one group: per-channel sensitivity and its layer constant alpha."""

    s: np.ndarray
    alpha: float
    output_size: int

    def total(self, mask: np.ndarray) -> float:
        return self.alpha * float(self.s[mask].sum())

    def kept(self, eps: float, mask: np.ndarray) -> int:
        """u(eps) over the channels in `mask` (the non-dead ones).

        A channel with zero sensitivity on the calibration data would never be drawn, so a loose
        budget (keep 90% of the FLOPs) could not be met: such channels get a floor of
        ZERO_SENSITIVITY_FLOOR x the largest sensitivity, which keeps them last, only at a tiny eps.
        """
        s = self.s[mask]
        if s.sum() <= 0:
            return 1
        s = np.maximum(s, ZERO_SENSITIVITY_FLOOR * s.max())
        return expected_kept(s / s.sum(), sample_size(eps, self.alpha * float(s.sum())))


def consumer_sensitivity(
    ga: Any, member: Member, read: ConsumerView, activations: np.ndarray
) -> tuple[np.ndarray, int, int, int]:
    """Sensitivity of each group channel in one consumer, and that consumer's P, k and output size."""
    weight = weight_of(ga, member)
    if read.kind == "conv":
        if weight.ndim != 4:
            raise UsageError(f"pfp: node {member.node}: only 2-D convs are supported")
        kh, kw = weight.shape[2:]
        geometry = conv_geometry(ga, member)
        pads = geometry.pads_for(activations.shape[2:], (kh, kw))
        s_full = conv_sensitivity(activations, weight, geometry.strides, pads, geometry.dilations)
        s = np.where(np.asarray(member.index) >= 0, s_full[np.maximum(member.index, 0)], 0.0)
        cols = conv_patches(activations[:1], (kh, kw), geometry.strides, pads, geometry.dilations)
        positions = cols.shape[3]
        return s, positions, kh * kw, positions * weight.shape[0]
    dense = weight if member.axis == 1 else weight.T  # (O, F)
    points = activations.reshape(-1, activations.shape[-1]) if read.axis == -1 else activations
    s_features = dense_sensitivity(points, dense)
    per_channel = s_features[positions_of(member)].reshape(len(member.index), member.width).max(axis=1)
    return np.where(np.asarray(member.index) >= 0, per_channel, 0.0), 1, member.width, dense.shape[0]


def usable_reads(group: ChannelGroup, ctx: CriterionContext) -> list[tuple[Member, ConsumerView]]:
    """The group's consumers that read it batch-first (the only ones PFP can score)."""
    reads = [(m, consumer_input(ctx.ga, m)) for m in group.consumers]
    return [(m, r) for m, r in reads if r is not None]


def consumer_output_size(ga: Any, member: Member, read: ConsumerView, values: np.ndarray) -> int:
    """eta of one consumer: its output size per point (filters x output positions)."""
    weight = ga.weights[member.name]
    if read.kind != "conv":
        return int(weight.shape[0] if member.axis == 1 else weight.shape[1])
    kernel = tuple(weight.shape[2:])
    geometry = conv_geometry(ga, member)
    pads = geometry.pads_for(values.shape[2:], kernel)
    positions = conv_patches(values[:1], kernel, geometry.strides, pads, geometry.dilations).shape[3]
    return int(weight.shape[0]) * positions


def group_sensitivity(
    group: ChannelGroup, ctx: CriterionContext, points: int | None = None
) -> GroupSensitivity | None:
    """Max over the group's usable consumers of the channel sensitivities (None: no usable consumer),
    from the first `points` calibration points (all when None)."""
    reads = usable_reads(group, ctx)
    if not reads:
        return None
    ctx.prefetch(r.tensor for _, r in reads)
    s = np.zeros(group.size)
    alpha, output_size = 0.0, 0
    for member, read in reads:
        values = ctx.activations(read.tensor)[:points]
        s_c, positions, kernel, out_size = consumer_sensitivity(ctx.ga, member, read, values)
        s = np.maximum(s, s_c)
        alpha = max(alpha, layer_alpha(positions, kernel))
        output_size = max(output_size, out_size)
    return GroupSensitivity(s, alpha, output_size)


@dataclass
class PFPAllocation(Allocation):
    scales: dict[str, np.ndarray] = field(default_factory=dict)
    eps: float = 0.0


def pfp_allocate(
    groups: list[ChannelGroup],
    sens: dict[str, GroupSensitivity],
    budget: Budget,
    *,
    rng: np.random.Generator,
    variant: str = "deterministic",
    macs_of: Any = None,
    dead: dict[str, np.ndarray] | None = None,
) -> PFPAllocation:
    """One global eps (Brent's method over log eps) so that the plan meets the budget."""
    if variant not in ("deterministic", "random"):
        raise UsageError(f"pfp variant {variant!r}: choose deterministic or random")
    if variant == "random" and budget.round_to > 1:
        raise UsageError(
            f"pfp-random keeps the channels it samples: it cannot honour --round-to {budget.round_to} "
            "(8 is the default); pass --round-to 1"
        )
    budgets = group_budgets(groups, {gid: g.s for gid, g in sens.items()}, budget, dead)
    target = BudgetTarget.of(groups, budgets, budget, macs_of)
    scored = [b for b in budgets if b.scores is not None]

    def wanted_at(log_eps: float) -> dict[str, int]:
        eps = math.exp(log_eps)
        wanted = {b.group.id: b.wanted_at(np.inf) for b in budgets}
        for b in scored:
            wanted[b.group.id] = max(sens[b.group.id].kept(eps, ~b.dead), int(b.pinned.sum()))
        return wanted

    def counts_at(log_eps: float) -> dict[str, int]:
        return {
            b.group.id: b.snap(wanted) for b, wanted in zip(budgets, wanted_at(log_eps).values(), strict=True)
        }

    lo, hi = LOG_EPS_RANGE
    log_eps = lo
    if target.active and scored:
        f_lo, f_hi = target.excess(counts_at(lo)), target.excess(counts_at(hi))
        if f_lo <= 0:
            log_eps = lo
        elif f_hi > 0:
            log_eps = hi
        else:
            from scipy.optimize import brentq  # not at import: scipy.optimize costs a prune with l1 0.1-0.2 s

            root = brentq(lambda t: target.excess(counts_at(t)), lo, hi, xtol=1e-6)
            log_eps = min((root - 1e-6, root + 1e-6), key=lambda t: (abs(target.excess(counts_at(t))), -t))
    counts = counts_at(log_eps)
    allocation = PFPAllocation(eps=math.exp(log_eps))
    allocation.notes.append(f"pfp: eps = {allocation.eps:.4g} ({variant})")
    if variant == "deterministic" or not scored:
        finish(allocation, budgets, counts, budget, wanted_at(log_eps))
    else:
        for b in budgets:
            if b.scores is None or b.group.block > 1:
                finish(allocation, [b], counts, budget)
                continue
            keep, scale = _sample(b, sens[b.group.id], allocation.eps, rng)
            if len(keep) < b.group.size:
                allocation.keep[b.group.id] = keep
                allocation.scales[b.group.id] = scale
    # judged on what is kept: the random variant's draws meet the budget in expectation only
    kept = {b.group.id: len(allocation.keep.get(b.group.id, range(b.group.size))) for b in budgets}
    allocation.outcome = target.outcome(kept)
    return allocation


def _sample(b: GroupBudget, sens: GroupSensitivity, eps: float, rng: np.random.Generator):
    """Random variant: m multinomial draws from p over the non-dead channels; kept = drawn ∪ pinned,
    each scaled by count_j/(m·p_j) (pinned channels never drawn keep scale 0, the estimator's value)."""
    usable = np.flatnonzero(~b.dead)
    s = sens.s[usable]
    scale = np.ones(b.group.size)
    if s.sum() <= 0:
        return np.sort(np.union1d(usable[:1], np.flatnonzero(b.pinned))), scale
    p = s / s.sum()
    m = sample_size(eps, sens.alpha * float(s.sum()))
    counts = rng.multinomial(m, p)
    scale[usable] = np.where(p > 0, counts / (m * np.where(p > 0, p, 1.0)), 0.0)
    keep = np.union1d(usable[counts > 0], np.flatnonzero(b.pinned))
    return keep.astype(np.int64), scale


@dataclass(frozen=True)
class PFPCriterion:
    """Scores are the raw sensitivities s_j; `allocate` allocates the budget the paper's way."""

    name: str = "pfp"
    needs_data: bool = True
    variant: str = "deterministic"

    def score(self, group: ChannelGroup, ctx: CriterionContext) -> np.ndarray | None:
        sens = group_sensitivity(group, ctx)
        return None if sens is None else sens.s

    def allocate(
        self, ga: Any, ctx: CriterionContext, budget: Budget, dead: dict[str, np.ndarray] | None = None
    ) -> PFPAllocation:
        prunable = [g for g in ga.groups if g.prunable]
        reads = [(m, r) for g in prunable for m, r in usable_reads(g, ctx)]
        ctx.prefetch(r.tensor for _, r in reads)
        largest = max(
            (consumer_output_size(ga, m, r, ctx.activations(r.tensor)) for m, r in reads), default=1
        )
        wanted = calibration_points(largest)  # the paper's |S|: more points cost time, add no guarantee
        sens = {}
        for group in prunable:
            found = group_sensitivity(group, ctx, points=wanted)
            if found is not None:
                sens[group.id] = found
        allocation = pfp_allocate(
            ga.groups,
            sens,
            budget,
            rng=ctx.rng,
            variant=self.variant,
            macs_of=macs_counter(ga),
            dead=dead,
        )
        available = next((len(ctx.activations(r.tensor)) for _, r in reads), 0)
        if available and available < wanted:
            allocation.notes.append(
                f"pfp: {available} calibration points; the paper's bound asks for {wanted}"
            )
        elif available > wanted:
            allocation.notes.append(
                f"pfp: sensitivities from the first {wanted} of {available} calibration points "
                "(the paper's bound |S| = ceil(3 log(8 eta*/delta)))"
            )
        return allocation


PFP = PFPCriterion()
PFP_RANDOM = PFPCriterion(name="pfp-random", variant="random")
