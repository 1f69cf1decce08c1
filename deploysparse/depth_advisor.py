"""The depth advisor behind `deploysparse advise-depth` (it removes blocks, it scores no channel, so it is
not a criterion). EBCLE (Gowdra et al. 2021): the data's entropy bounds the useful depth of a CNN; deeper residual
blocks drift towards identity and can be dropped.

The paper's formula from entropy to depth could not be verified (papers.md §4); ours is derived and
measured as follows.

Entropy: Shannon entropy, in bits, of the 8-bit-quantised pixel intensities over the whole data set
(uint8 data as is, floats in [0, 1] times 255, any other range min-max scaled to 0..255). Uniform
8-bit noise has 8 bits, a constant image 0.

Depth bound: what a stack of convs can still learn from the data is limited by how far apart pixels
still share information. We measure the mutual information I(d) between a pixel and the pixel d
steps away (horizontally and vertically pooled, 6-bit quantisation, 64x64 joint histogram), minus the
same estimate between a pixel and the pixel d steps away in the *next* image (no dependency: the
plug-in estimator's bias for this sample size), and call dependency range d* the smallest d at which
I(d) falls to `tau` (5%) of the 6-bit pixel entropy. A stack of L stride-1 3x3 convs sees (2L+1)x(2L+1) pixels, so L = d* layers already
span every dependency the data holds: d* is our upper bound on useful conv depth (stride and pooling
only make the receptive field grow faster, so for a real network it is an over-estimate: an upper
bound). Data with no spatial dependency (i.i.d. noise) gets bound 1.

Backing measurement: each identity-shortcut residual block (an Add, or any op whose rule
`merges_residual`, whose one input is an ancestor of the other) is measured on the data: ||F(x)|| /
||x|| (residual branch over shortcut) and the relative change of the model's output when the block is
bypassed. Blocks deeper than the bound (their conv depth, the most Convs, or ops whose rule
`adds_depth`, on a path from the input to the Add) that measure near identity are candidates;
`drop_blocks` replaces each such Add by its shortcut.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from deploysparse.errors import CalibrationError, UsageError
from deploysparse.graph.rules import identity_node, rule_for

DEPENDENCY_FRACTION = 0.05
MI_BITS = 6


def quantise_8bit(data: np.ndarray) -> np.ndarray:
    """Pixel values as integers 0..255 (see the module docstring for the rule)."""
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    if data.size == 0:
        raise CalibrationError("the data set is empty")
    values = data.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise CalibrationError("the data contains NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(values * 255.0).astype(np.uint8)
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) / (hi - lo) * 255.0).astype(np.uint8)


def entropy_bits(values: np.ndarray, levels: int = 256) -> float:
    """Shannon entropy (bits) of the histogram of integer values in [0, levels)."""
    counts = np.bincount(np.asarray(values).reshape(-1), minlength=levels).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def images_nchw(data: np.ndarray) -> np.ndarray:
    """(N, C, H, W) view of image data given as (N, H, W), (N, C, H, W) or (N, H, W, C)."""
    data = np.asarray(data)
    if data.ndim == 3:
        return data[:, None]
    if data.ndim == 4:
        if data.shape[1] not in (1, 2, 3, 4) and data.shape[-1] in (1, 2, 3, 4):
            return np.moveaxis(data, -1, 1)
        return data
    raise CalibrationError(f"expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {data.shape}")


def mutual_information(q: np.ndarray, distance: int, bits: int = MI_BITS, shuffled: bool = False) -> float:
    """I(pixel; pixel `distance` away), in bits, from horizontal and vertical pairs of q (N, C, H, W).

    shuffled=True pairs each pixel with the pixel at the same offset in the *next* image instead: no
    dependency is left, so its value is the estimator's bias for this sample, which `depth_bound`
    subtracts.
    """
    coarse = (q >> (8 - bits)).astype(np.int64)
    partner = np.roll(coarse, 1, axis=0) if shuffled else coarse
    levels = 1 << bits
    pairs = []
    if q.shape[3] > distance:
        pairs.append((coarse[..., :-distance], partner[..., distance:]))
    if q.shape[2] > distance:
        pairs.append((coarse[..., :-distance, :], partner[..., distance:, :]))
    if not pairs:
        return 0.0
    a = np.concatenate([p[0].reshape(-1) for p in pairs])
    b = np.concatenate([p[1].reshape(-1) for p in pairs])
    joint = entropy_bits(a * levels + b, levels * levels)
    return entropy_bits(a, levels) + entropy_bits(b, levels) - joint


@dataclass
class DepthBound:
    """What the data says: entropy, the information-vs-distance curve and the depth bound."""

    entropy_bits: float
    dependency_range: int
    depth_bound: int
    mutual_information: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def depth_bound(
    data: np.ndarray, tau: float = DEPENDENCY_FRACTION, max_points: int = 2_000_000
) -> DepthBound:
    """Entropy of the data set and the conv depth beyond which layers see no new dependency."""
    images = images_nchw(data)
    q = quantise_8bit(images)
    if q.size > max_points:  # subsample whole images: the estimate needs pairs, not every image
        keep = max(1, max_points // int(np.prod(q.shape[1:])))
        q = q[np.linspace(0, len(q) - 1, keep).astype(np.int64)]
    h = entropy_bits(q)
    h_coarse = entropy_bits((q >> (8 - MI_BITS)).astype(np.int64), 1 << MI_BITS)
    curve: list[float] = []
    longest = max(q.shape[2], q.shape[3]) - 1
    d_star = longest
    for d in range(1, longest + 1):
        bias = mutual_information(q, d, shuffled=True) if len(q) > 1 else 0.0
        curve.append(max(0.0, mutual_information(q, d) - bias))
        if curve[-1] <= tau * h_coarse:
            d_star = d
            break
    return DepthBound(h, d_star, max(1, d_star), curve)


@dataclass
class ResidualBlock:
    """An identity-shortcut residual block: out = shortcut + residual, at Add `add`."""

    add: str
    shortcut: str
    residual: str
    conv_depth: int
    residual_ratio: float = float("nan")
    output_change: float = float("nan")

    def to_json(self) -> dict:
        return asdict(self)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _ancestors(
    tensor: str, producers: dict[str, onnx.NodeProto], cache: dict[str, frozenset[str]]
) -> frozenset[str]:
    """Every tensor `tensor` depends on (itself included), iteratively (graphs can be deep)."""
    stack = [tensor]
    while stack:
        name = stack[-1]
        if name in cache:
            stack.pop()
            continue
        node = producers.get(name)
        pending = [i for i in (node.input if node else []) if i and i not in cache]
        if pending:
            stack.extend(pending)
            continue
        found = {name}
        for i in node.input if node else []:
            if i:
                found |= cache[i]
        cache[name] = frozenset(found)
        stack.pop()
    return cache[tensor]


def conv_depths(graph: onnx.GraphProto) -> dict[str, int]:
    """Most depth layers (nodes whose rule `adds_depth`: Conv) on any path from a graph input to each
    tensor (nodes are topologically sorted)."""
    depth: dict[str, int] = {}
    for node in graph.node:
        inherited = max((depth.get(i, 0) for i in node.input if i), default=0)
        rule = rule_for(node)
        for out in node.output:
            depth[out] = inherited + (1 if rule is not None and rule.adds_depth else 0)
    return depth


def find_residual_blocks(model: onnx.ModelProto) -> list[ResidualBlock]:
    """Residual merges (a two-input node whose rule `merges_residual`: Add) whose one input is an
    ancestor of the other, with a depth layer (Conv) on the residual branch."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producers = _producers(graph)
    depths = conv_depths(graph)
    cache: dict[str, frozenset[str]] = {}
    blocks = []
    for node in graph.node:
        rule = rule_for(node)
        if rule is None or not rule.merges_residual or len(node.input) != 2 or set(node.input) & initializers:
            continue
        a, b = node.input
        for shortcut, residual in ((a, b), (b, a)):
            if shortcut in _ancestors(residual, producers, cache) and depths.get(residual, 0) > depths.get(
                shortcut, 0
            ):
                blocks.append(ResidualBlock(node.name, shortcut, residual, depths[node.output[0]]))
                break
    return blocks


def drop_blocks(model: onnx.ModelProto, adds: list[str]) -> onnx.ModelProto:
    """A copy of `model` in which each named residual Add is replaced by its shortcut input, and the
    residual branches left without readers are removed (with their initializers)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    by_name = {b.add: b for b in find_residual_blocks(result)}
    unknown = [a for a in adds if a not in by_name]
    if unknown:
        raise UsageError(f"{unknown[0]}: not an identity-shortcut residual Add of this model")
    outputs = {o.name for o in graph.output}
    kept_nodes = []
    rename: dict[str, str] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        if node.name in adds:
            block = by_name[node.name]
            shortcut = rename.get(block.shortcut, block.shortcut)
            if node.output[0] in outputs:
                kept_nodes.append(identity_node(shortcut, node.output[0], name=node.name))
            else:
                rename[node.output[0]] = shortcut
            continue
        kept_nodes.append(node)
    needed = set(outputs)
    live = []
    for node in reversed(kept_nodes):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(live))
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    kept_values = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(kept_values)
    return result


def measure_blocks(model: onnx.ModelProto, feeds: dict[str, np.ndarray], blocks: list[ResidualBlock]) -> None:
    """Fill each block's ||F(x)||/||x|| and the relative output change when it alone is bypassed."""
    from deploysparse.backends import reference_backend

    names = sorted({t for b in blocks for t in (b.shortcut, b.residual)})
    values = reference_backend().intermediates(model, feeds, names)
    reference = _first_output(model, feeds)
    scale = float(np.linalg.norm(reference)) or 1.0
    for block in blocks:
        x = values[block.shortcut].astype(np.float64)
        fx = values[block.residual].astype(np.float64)
        block.residual_ratio = float(np.linalg.norm(fx) / (np.linalg.norm(x) or 1.0))
        dropped = drop_blocks(model, [block.add])
        out = _first_output(dropped, feeds)
        block.output_change = float(np.linalg.norm(out - reference) / scale)


def _first_output(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The model's first output on every sample of `feeds`, run as one batch."""
    from deploysparse.backends import reference_backend

    samples = len(next(iter(feeds.values())))
    outputs = reference_backend().intermediates(model, feeds, batch_size=samples)
    return next(iter(outputs.values())).astype(np.float64)


def candidates(blocks: list[ResidualBlock], bound: int, threshold: float) -> list[ResidualBlock]:
    """Blocks deeper than the bound whose residual branch is at most `threshold` of the shortcut."""
    return [b for b in blocks if b.conv_depth > bound and b.residual_ratio <= threshold]
