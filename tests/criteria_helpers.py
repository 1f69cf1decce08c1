"""Helpers for the criteria tests (not tests themselves): small ONNX models built in code, an ONNX
Runtime runner for intermediate tensors, and the budget checks every criterion must pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from deploysparse.budget import Budget
from deploysparse.criteria.base import CriterionContext
from deploysparse.graph.analysis import analyze_graph


class Builder:
    """A few lines per layer: conv, bn, relu, add, head; weights random from one generator."""

    def __init__(self, rng: np.random.Generator, in_channels: int = 3, spatial: int = 8) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.input = helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["N", in_channels, spatial, spatial]
        )
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def conv(self, x: str, weight: np.ndarray, *, pad: int = 1, stride: int = 1, bias: bool = True) -> str:
        name = self._name("conv")
        inputs = [x, self.init(f"{name}.weight", weight)]
        if bias:
            inputs.append(self.init(f"{name}.bias", self.rng.normal(size=weight.shape[0]) * 0.1))
        self.nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [name],
                name=name,
                pads=[pad] * 4,
                strides=[stride] * 2,
                kernel_shape=list(weight.shape[2:]),
            )
        )
        return name

    def bn(self, x: str, gamma: np.ndarray, beta: np.ndarray | None = None) -> str:
        name = self._name("bn")
        n = len(gamma)
        beta = self.rng.normal(size=n) * 0.1 if beta is None else beta
        params = [gamma, beta, self.rng.normal(size=n) * 0.1, 0.5 + self.rng.random(n)]
        names = [
            self.init(f"{name}.{p}", v) for p, v in zip(("scale", "bias", "mean", "var"), params, strict=True)
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *names], [name], name=name))
        return name

    def op(self, op: str, *inputs: str, **attrs) -> str:
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def gemm(self, x: str, weight: np.ndarray) -> str:
        name = self._name("fc")
        w = self.init(f"{name}.weight", weight)
        b = self.init(f"{name}.bias", self.rng.normal(size=weight.shape[0]) * 0.1)
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [name], name=name, transB=1))
        return name

    def model(self, output: str) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "g", [self.input], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


def w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))


def chain_model(
    rng: np.random.Generator, *, gammas: tuple[np.ndarray, np.ndarray] | None = None
) -> onnx.ModelProto:
    """conv-bn-relu x2, global pool, linear: two prunable groups (8 and 12 channels)."""
    b = Builder(rng)
    g1, g2 = gammas or (0.5 + rng.random(8), 0.5 + rng.random(12))
    h = b.op("Relu", b.bn(b.conv("x", w(rng, 8, 3, 3, 3)), g1))
    h = b.op("Relu", b.bn(b.conv(h, w(rng, 12, 8, 3, 3)), g2))
    h = b.op("Flatten", b.op("GlobalAveragePool", h))
    return b.model(b.gemm(h, w(rng, 5, 12)))


def flatten_model(rng: np.random.Generator) -> onnx.ModelProto:
    """conv-relu, conv-relu (stride 2), flatten straight into a linear layer (width 16 per channel)."""
    b = Builder(rng)
    h = b.op("Relu", b.conv("x", w(rng, 6, 3, 3, 3)))
    h = b.op("Relu", b.conv(h, w(rng, 10, 6, 3, 3), stride=2))
    return b.model(b.gemm(b.op("Flatten", h), w(rng, 4, 160)))


def residual_model(
    rng: np.random.Generator, *, zero_branch: bool = False, width: int = 16
) -> onnx.ModelProto:
    """stem conv, two basic residual blocks, pool, linear. zero_branch: block 2's branch outputs 0."""
    b = Builder(rng)
    x = b.op("Relu", b.bn(b.conv("x", w(rng, width, 3, 3, 3)), 0.5 + rng.random(width)))
    for block in range(2):
        h = b.op("Relu", b.bn(b.conv(x, w(rng, width, width, 3, 3)), 0.5 + rng.random(width)))
        gamma = np.zeros(width) if (zero_branch and block == 1) else 0.5 + rng.random(width)
        beta = np.zeros(width) if (zero_branch and block == 1) else None
        h = b.bn(b.conv(h, w(rng, width, width, 3, 3)), gamma, beta)
        x = b.op("Relu", b.op("Add", x, h))
    h = b.op("Flatten", b.op("GlobalAveragePool", x))
    return b.model(b.gemm(h, w(rng, 5, width)))


def intermediate(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    """ONNX Runtime with the named tensors exposed as graph outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds), strict=True))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def context(model: onnx.ModelProto, x: np.ndarray | None = None, seed: int = 0):
    """GraphAnalysis of `model` and a criterion context on calibration batch `x`."""
    ga = analyze_graph(model)
    return ga, CriterionContext(
        ga,
        calib=None if x is None else {"x": x},
        rng=np.random.default_rng(seed),
        values_fn=None if x is None else (lambda names: intermediate(ga.model, {"x": x}, names)),
    )


def removed_live(plan, ga) -> int:
    return sum(g.size - len(plan.kept(g.id, g.size)) for g in ga.groups if g.prunable)


def check_budgets(criterion: str, model: onnx.ModelProto, x: np.ndarray | None) -> None:
    """The shared contract: ratio and FLOPs targets met, round-to kept, the pruned model runs and
    gives finite outputs of the original's shape on a fresh input."""
    from deploysparse.criteria import plan_with
    from deploysparse.graph.cost import count_cost
    from deploysparse.graph.surgery import rewrite_graph

    ga, ctx = context(model, x)
    live = sum(g.size - len(g.pinned_channels) for g in ga.groups if g.prunable)
    plan = plan_with(criterion, ga, ctx, Budget(ratio=0.25, round_to=1))
    assert removed_live(plan, ga) == round(0.25 * live)
    fresh = np.random.default_rng(99).normal(size=(3, 3, 8, 8)).astype(np.float32)
    out = run(rewrite_graph(ga, plan).model, fresh)
    assert out.shape == run(model, fresh).shape and np.all(np.isfinite(out))
    plan = plan_with(criterion, ga, ctx, Budget(flops_target=0.6, round_to=1))
    kept = {g: len(k) for g, k in plan.keep.items()}
    assert abs(count_cost(ga, kept).macs / count_cost(ga).macs - 0.6) <= 0.02
    assert np.all(np.isfinite(run(rewrite_graph(ga, plan).model, fresh)))
    plan = plan_with(criterion, ga, ctx, Budget(ratio=0.4, round_to=4))
    for g in ga.groups:
        if g.prunable:
            n = len(plan.kept(g.id, g.size))
            assert n % 4 == 0 or n == g.size
