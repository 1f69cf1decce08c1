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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.optimize import brentq

from deploysparse.budget import Allocation, BudgetTarget, GroupBudget, finish, group_budgets, macs_counter
from deploysparse.criteria.base import (
    CriterionContext,
    consumer_input,
    node_attr,
    positions_of,
    weight_of,
)
from deploysparse.errors import UsageError
from deploysparse.graph.groups import ChannelGroup, Member

DELTA = 1e-16
FLOAT_EPS = float(np.finfo(np.float32).eps)
CHUNK_ELEMENTS = 1 << 22
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
    """s_j for a 2-D conv (group 1): a (N, C, H, W) input points, w (O, C, kh, kw). Returns (C,)."""
    a = as_points(np.asarray(a, dtype=np.float64))
    out_channels, channels, kh, kw = w.shape
    cols = conv_patches(a, (kh, kw), strides, pads, dilations)  # (N, C, K, P)
    s = np.zeros(channels)
    for part in (np.maximum(w, 0.0), np.minimum(w, 0.0)):
        flat = part.reshape(out_channels, channels, kh * kw)
        z = np.einsum("ock,nckp->nop", flat, cols)
        inv = _inverse(z)
        per_filter = channels * kh * kw * cols.shape[3]
        step = max(1, CHUNK_ELEMENTS // max(per_filter, 1))
        for n in range(a.shape[0]):
            for o in range(0, out_channels, step):
                share = flat[o : o + step, :, :, None] * inv[n, o : o + step, None, None, :]
                share = share * cols[n][None]
                s = np.maximum(s, share.max(axis=(0, 2, 3)))
    return s


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
    ga: Any, member: Member, activations: np.ndarray
) -> tuple[np.ndarray, int, int, int]:
    """Sensitivity of each group channel in one consumer, and that consumer's P, k and output size."""
    node = ga.node(member.node)
    weight = weight_of(ga, member)
    if node.op_type == "Conv":
        if weight.ndim != 4:
            raise UsageError(f"pfp: node {node.name}: only 2-D convs are supported")
        kh, kw = weight.shape[2:]
        pads = tuple(node_attr(node, "pads", [0, 0, 0, 0]))
        strides = tuple(node_attr(node, "strides", [1, 1]))
        dilations = tuple(node_attr(node, "dilations", [1, 1]))
        auto_pad = node_attr(node, "auto_pad", b"NOTSET")
        if auto_pad not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            pads = _same_pads(activations.shape[2:], (kh, kw), strides, dilations, auto_pad)
        s_full = conv_sensitivity(activations, weight, strides, pads, dilations)
        s = np.where(np.asarray(member.index) >= 0, s_full[np.maximum(member.index, 0)], 0.0)
        cols = conv_patches(activations[:1], (kh, kw), strides, pads, dilations)
        positions = cols.shape[3]
        return s, positions, kh * kw, positions * weight.shape[0]
    dense = weight if member.axis == 1 else weight.T  # (O, F)
    points = activations.reshape(-1, activations.shape[-1]) if node.op_type == "MatMul" else activations
    s_features = dense_sensitivity(points, dense)
    per_channel = s_features[positions_of(member)].reshape(len(member.index), member.width).max(axis=1)
    return np.where(np.asarray(member.index) >= 0, per_channel, 0.0), 1, member.width, dense.shape[0]


def _same_pads(spatial, kernel, strides, dilations, auto_pad) -> tuple[int, ...]:
    begin, end = [], []
    for size, k, stride, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / stride) - 1) * stride + (k - 1) * d + 1 - size, 0)
        upper = auto_pad in (b"SAME_UPPER", "SAME_UPPER")
        first = total // 2 if upper else total - total // 2
        begin.append(first)
        end.append(total - first)
    return (*begin, *end)


def group_sensitivity(group: ChannelGroup, ctx: CriterionContext) -> GroupSensitivity | None:
    """Max over the group's usable consumers of the channel sensitivities (None: no usable consumer)."""
    reads = [(m, consumer_input(ctx.ga, m)) for m in group.consumers]
    reads = [(m, r) for m, r in reads if r is not None]
    if not reads:
        return None
    ctx.prefetch(name for _, (name, _) in reads)
    s = np.zeros(group.size)
    alpha, output_size = 0.0, 0
    for member, (tensor, _axis) in reads:
        values = ctx.activations(tensor)
        s_c, positions, kernel, out_size = consumer_sensitivity(ctx.ga, member, values)
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
    *,
    rng: np.random.Generator,
    variant: str = "deterministic",
    macs_of: Any = None,
    ratio: float | None = None,
    flops_target: float | None = None,
    max_layer_ratio: float | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    protect: tuple[str, ...] | list[str] = (),
    dead: dict[str, np.ndarray] | None = None,
) -> PFPAllocation:
    """One global eps (Brent's method over log eps) so that the plan meets the budget."""
    if variant not in ("deterministic", "random"):
        raise UsageError(f"pfp variant {variant!r}: choose deterministic or random")
    if variant == "random" and round_to > 1:
        raise UsageError("pfp random variant keeps the sampled channels: it cannot honour --round-to")
    budgets = group_budgets(
        groups,
        {gid: g.s for gid, g in sens.items()},
        max_layer_ratio=max_layer_ratio,
        min_channels=min_channels,
        round_to=round_to,
        protect=protect,
        dead=dead,
    )
    target = BudgetTarget(budgets, ratio, flops_target, macs_of)
    scored = [b for b in budgets if b.scores is not None]

    def counts_at(log_eps: float) -> dict[str, int]:
        eps = math.exp(log_eps)
        counts = {b.group.id: b.snap(b.wanted_at(np.inf)) for b in budgets}
        for b in scored:
            usable = ~b.dead
            counts[b.group.id] = b.snap(max(sens[b.group.id].kept(eps, usable), int(b.pinned.sum())))
        return counts

    lo, hi = LOG_EPS_RANGE
    log_eps = lo
    if target.active and scored:
        f_lo, f_hi = target.excess(counts_at(lo)), target.excess(counts_at(hi))
        if f_lo <= 0:
            log_eps = lo
        elif f_hi > 0:
            log_eps = hi
        else:
            root = brentq(lambda t: target.excess(counts_at(t)), lo, hi, xtol=1e-6)
            log_eps = min((root - 1e-6, root + 1e-6), key=lambda t: (abs(target.excess(counts_at(t))), -t))
    counts = counts_at(log_eps)
    allocation = PFPAllocation(eps=math.exp(log_eps))
    allocation.notes = target.verdict(counts, counts_at(hi)) if budgets else []
    allocation.notes.append(f"pfp: eps = {allocation.eps:.4g} ({variant})")
    if variant == "deterministic" or not scored:
        finish(allocation, budgets, counts, round_to)
        return allocation
    for b in budgets:
        if b.scores is None or b.group.block > 1:
            finish(allocation, [b], counts, round_to)
            continue
        keep, scale = _sample(b, sens[b.group.id], allocation.eps, rng)
        if len(keep) < b.group.size:
            allocation.keep[b.group.id] = keep
            allocation.scales[b.group.id] = scale
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

    def allocate(self, ga: Any, ctx: CriterionContext, **budget: Any) -> PFPAllocation:
        sens = {}
        for group in ga.groups:
            if group.prunable:
                found = group_sensitivity(group, ctx)
                if found is not None:
                    sens[group.id] = found
        allocation = pfp_allocate(
            ga.groups,
            sens,
            rng=ctx.rng,
            variant=self.variant,
            macs_of=macs_counter(ga),
            **budget,
        )
        if sens:
            largest = max(g.output_size for g in sens.values())
            wanted = calibration_points(largest)
            if ctx.num_points and ctx.num_points < wanted:
                allocation.notes.append(
                    f"pfp: {ctx.num_points} calibration points; the paper's bound asks for {wanted}"
                )
        return allocation


PFP = PFPCriterion()
PFP_RANDOM = PFPCriterion(name="pfp-random", variant="random")
