"""Build small conv graphs directly with onnx.helper, from the ops the channel analysis supports.

Used by the property test (random block sequences) and by the model-format tests (one fixed graph at
several opsets). Weights are random; every block keeps the spatial size except "pool".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCKS = (
    "conv", "depthwise", "grouped", "residual", "concat", "dense", "pool", "mul", "split", "slice", "nhwc_mlp",
)  # fmt: skip
HEADS = ("gap_gemm", "flatten_gemm", "conv_out")


@dataclass
class GraphBuilder:
    """Accumulates nodes and initializers; each method takes a tensor name and returns the new one.

    opset decides how version-dependent ops are written (Clip bounds, Split sizes, ReduceMean axes).
    """

    rng: np.random.Generator
    opset: int = 17
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs: object) -> list[str]:
        names = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=self.name(f"n_{op}"), **attrs))
        return names

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, group: int = 1, bias: bool = True) -> str:
        fan_in = cin // group * kernel * kernel
        w = (self.rng.standard_normal((cout, cin // group, kernel, kernel)) / np.sqrt(fan_in)).astype(
            np.float32
        )
        inputs = [x, self.const("W", w)]
        if bias:
            inputs.append(self.const("B", self.rng.normal(0, 0.2, cout).astype(np.float32)))
        pad = kernel // 2
        return self.node("Conv", inputs, kernel_shape=[kernel, kernel], pads=[pad] * 4, group=group)[0]

    def bn(self, x: str, c: int) -> str:
        params = [
            self.rng.uniform(0.5, 1.5, c),
            self.rng.normal(0, 0.3, c),
            self.rng.normal(0, 0.5, c),
            self.rng.uniform(0.5, 2.0, c),
        ]
        names = [
            self.const(p, v.astype(np.float32))
            for p, v in zip(("gamma", "beta", "mean", "var"), params, strict=True)
        ]
        return self.node("BatchNormalization", [x, *names], epsilon=1e-5)[0]

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])[0]

    def relu6(self, x: str) -> str:
        lo = self.const("lo", np.array(0.0, np.float32))
        hi = self.const("hi", np.array(6.0, np.float32))
        return self.node("Clip", [x, lo, hi])[0]

    def act(self, x: str) -> str:
        return self.relu(x) if self.rng.random() < 0.5 else self.relu6(x)

    def conv_bn_act(self, x: str, cin: int, cout: int, kernel: int = 3, group: int = 1) -> str:
        y = self.conv(x, cin, cout, kernel, group, bias=self.rng.random() < 0.5)
        if self.rng.random() < 0.7:
            y = self.bn(y, cout)
        return self.act(y)

    def split(self, x: str, sizes: list[int]) -> list[str]:
        """Split on the channel axis, in the form the opset's exporters write: the `split` attribute
        (opset < 13), a `split` input, or the `num_outputs` attribute (opset >= 18, equal parts)."""
        if self.opset >= 18 and len(set(sizes)) == 1 and self.rng.random() < 0.7:
            return self.node("Split", [x], len(sizes), axis=1, num_outputs=len(sizes))
        if self.opset >= 13:
            return self.node("Split", [x, self.const("split", np.array(sizes, np.int64))], len(sizes), axis=1)
        return self.node("Split", [x], len(sizes), axis=1, split=sizes)

    def slice_channels(self, x: str, start: int, end: int) -> str:
        starts = self.const("starts", np.array([start], np.int64))
        ends = self.const("ends", np.array([end], np.int64))
        axes = self.const("axes", np.array([1], np.int64))
        return self.node("Slice", [x, starts, ends, axes])[0]

    def gemm(self, x: str, fin: int, fout: int) -> str:
        w = (self.rng.standard_normal((fout, fin)) / np.sqrt(fin)).astype(np.float32)
        b = self.rng.normal(0, 0.2, fout).astype(np.float32)
        return self.node("Gemm", [x, self.const("Wfc", w), self.const("Bfc", b)], transB=1)[0]

    def mean_last(self, x: str) -> str:
        """ReduceMean over the last axis, dims kept: axes as an attribute before opset 18, an input from it."""
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.const("axes", np.array([-1], np.int64))])[0]
        return self.node("ReduceMean", [x], axes=[-1])[0]

    def layer_norm(self, x: str, c: int) -> str:
        """LayerNorm over the last axis (c channels) with random scale and shift: the
        LayerNormalization op (opset 17 on, or) the decomposition exporters write below opset 17."""
        scale = self.const("ln_scale", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        shift = self.const("ln_shift", self.rng.normal(0, 0.3, c).astype(np.float32))
        if self.opset >= 17 and self.rng.random() < 0.6:
            return self.node("LayerNormalization", [x, scale, shift], axis=-1, epsilon=1e-5)[0]
        centred = self.node("Sub", [x, self.mean_last(x)])[0]
        square = self.node("Pow", [centred, self.const("two", np.array(2.0, np.float32))])[0]
        shifted = self.node("Add", [self.mean_last(square), self.const("eps", np.array(1e-5, np.float32))])[0]
        normalised = self.node("Div", [centred, self.node("Sqrt", [shifted])[0]])[0]
        return self.node("Add", [self.node("Mul", [normalised, scale])[0], shift])[0]

    def linear(self, x: str, fin: int, fout: int) -> str:
        """x @ W + b on the last axis (a torch Linear on an N-D input, as exporters write it)."""
        w = (self.rng.standard_normal((fin, fout)) / np.sqrt(fin)).astype(np.float32)
        b = self.rng.normal(0, 0.2, fout).astype(np.float32)
        return self.node("Add", [self.node("MatMul", [x, self.const("Wmm", w)])[0], self.const("Bmm", b)])[0]

    def gelu(self, x: str) -> str:
        """GELU written out as x * 0.5 * (1 + erf(x / sqrt(2))), as torch exports it below opset 20."""
        erf = self.node("Erf", [self.node("Div", [x, self.const("root2", np.array(2**0.5, np.float32))])[0]])[
            0
        ]
        one_more = self.node("Add", [erf, self.const("one", np.array(1.0, np.float32))])[0]
        return self.node(
            "Mul", [self.node("Mul", [x, one_more])[0], self.const("half", np.array(0.5, np.float32))]
        )[0]

    def model(
        self, x: str, input_shape: list[int | str], y: str, output_shape: list[int | str]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "random_convnet",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, output_shape)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 7 if self.opset <= 15 else 8 if self.opset <= 20 else 10
        onnx.checker.check_model(model, full_check=True)
        return model


def add_block(b: GraphBuilder, kind: str, x: str, c: int, hw: int) -> tuple[str, int, int]:
    """Append one block of `kind` to tensor x (c channels, hw x hw); return (tensor, channels, hw)."""
    rng = b.rng
    if kind == "conv":
        cout = int(rng.integers(2, 9))
        return b.conv_bn_act(x, c, cout, int(rng.choice([1, 3]))), cout, hw
    if kind == "depthwise":
        return b.conv_bn_act(x, c, c, 3, group=c), c, hw
    if kind == "grouped":
        groups = 2 if c % 2 == 0 else 1
        cout = groups * int(rng.integers(1, 4))
        return b.conv_bn_act(x, c, cout, 3, group=groups), cout, hw
    if kind == "residual":
        y = b.bn(b.conv(b.conv_bn_act(x, c, c), c, c, bias=False), c)
        return b.relu(b.node("Add", [x, y] if rng.random() < 0.5 else [y, x])[0]), c, hw
    if kind == "concat":
        ca, cb = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        a, bb = b.conv_bn_act(x, c, ca, 1), b.conv_bn_act(x, c, cb, 3)
        return b.node("Concat", [a, bb], axis=1)[0], ca + cb, hw
    if kind == "dense":
        grown = int(rng.integers(1, 4))
        return b.node("Concat", [x, b.conv_bn_act(x, c, grown)], axis=1)[0], c + grown, hw
    if kind == "pool" and hw >= 4:
        return b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])[0], c, hw // 2
    if kind == "mul":
        shape = (1, c, 1, 1) if rng.random() < 0.5 else (c, 1, 1)
        scale = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        return b.node("Mul", [x, b.const("scale", scale)])[0], c, hw
    if kind == "split" and c >= 2:
        first = c // 2 if rng.random() < 0.5 else int(rng.integers(1, c))
        left, right = b.split(x, [first, c - first])
        ca, cb = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        y = [b.conv_bn_act(left, first, ca, 1), b.conv_bn_act(right, c - first, cb, 3)]
        return b.node("Concat", y, axis=1)[0], ca + cb, hw
    if kind == "nhwc_mlp":
        # ConvNeXt's block without the depthwise conv: to NHWC, LayerNorm, Linear, GELU, Linear, a
        # per-channel layer scale on the last axis, back to NCHW, residual.
        hidden = int(rng.integers(2, 9))
        nhwc = b.node("Transpose", [x], perm=[0, 2, 3, 1])[0]
        y = b.linear(b.gelu(b.linear(b.layer_norm(nhwc, c), c, hidden)), hidden, c)
        y = b.node("Mul", [y, b.const("layer_scale", rng.uniform(0.5, 1.5, c).astype(np.float32))])[0]
        return b.node("Add", [x, b.node("Transpose", [y], perm=[0, 3, 1, 2])[0]])[0], c, hw
    if kind == "slice" and c >= 2:
        start = int(rng.integers(0, c - 1))
        end = int(rng.integers(start + 1, c + 1))
        return b.slice_channels(x, start, end), end - start, hw
    return x, c, hw


def add_head(b: GraphBuilder, kind: str, x: str, c: int, hw: int, batch: int) -> tuple[str, list[int]]:
    """Close the graph: GAP + Flatten + Gemm, Flatten of the whole map + Gemm, or a 1x1 conv output.
    Returns the output tensor and its shape."""
    if kind == "gap_gemm":
        pooled = b.node("GlobalAveragePool", [x])[0]
        return b.gemm(b.node("Flatten", [pooled], axis=1)[0], c, 3), [batch, 3]
    if kind == "flatten_gemm":
        return b.gemm(b.node("Flatten", [x], axis=1)[0], c * hw * hw, 3), [batch, 3]
    return b.conv(x, c, 2, 1), [batch, 2, hw, hw]


def random_convnet(blocks: list[str], head: str, seed: int, opset: int = 17) -> onnx.ModelProto:
    """A stem conv (3 -> 4..8 channels, 8x8 input), then `blocks`, then `head`."""
    b = GraphBuilder(np.random.default_rng(seed), opset)
    c = int(b.rng.integers(4, 9))
    x, hw = b.conv_bn_act("input", 3, c), 8
    for kind in blocks:
        x, c, hw = add_block(b, kind, x, c, hw)
    y, shape = add_head(b, head, x, c, hw, batch=2)
    return b.model("input", [2, 3, 8, 8], y, shape)


def dead_convnet(
    middle: str = "none", opset: int = 17, seed: int = 0, width: int = 8, act: str = "relu"
) -> onnx.ModelProto:
    """conv(3->8) act, conv(8->8) relu, `middle`, conv(8->6) act, GAP, Flatten, Gemm(6->4)
    (8 is `width`).

    Channels 1 and 5 of the first conv and 0 and 3 of the third are dead (zero filter, bias -4, so
    exactly 0 after the activation): 4 removable channels. `act` is "relu", or hardswish written out
    the way converters and old exporters do: "hardswish_clip" x * Clip(x + 3, 0, 6) / 6, or
    "hardswish_hardsigmoid" x * HardSigmoid(x). `middle` is an op the channel rules do not know
    ("lpnorm": LpNormalization over channels; "batch_transpose_pair": NCHW -> CNHW -> NCHW, channels on
    the batch axis between), which must pin the space it reads and leave the others prunable. The batch dim is symbolic ("N").
    """
    b = GraphBuilder(np.random.default_rng(seed), opset)

    def activation(x: str) -> str:
        if act == "hardswish_clip":
            shifted = b.node("Add", [x, b.const("three", np.array(3.0, np.float32))])[0]
            clipped = b.node(
                "Clip",
                [shifted, b.const("lo", np.array(0.0, np.float32)), b.const("hi", np.array(6.0, np.float32))],
            )[0]
            product = b.node("Mul", [x, clipped])[0]
            return b.node("Div", [product, b.const("six", np.array(6.0, np.float32))])[0]
        if act == "hardswish_hardsigmoid":
            return b.node("Mul", [x, b.node("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)[0]])[0]
        return b.relu(x)

    def dead_conv(x: str, cin: int, cout: int, dead: list[int]) -> str:
        w = (b.rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        bias = b.rng.normal(0, 0.2, cout).astype(np.float32)
        w[dead] = 0.0
        bias[dead] = -4.0
        y = b.node("Conv", [x, b.const("W", w), b.const("B", bias)], kernel_shape=[3, 3], pads=[1] * 4)[0]
        return activation(y)

    x = dead_conv("input", 3, width, [1, 5])
    x = b.relu(b.conv(x, width, width))
    if middle == "lpnorm":
        x = b.node("LpNormalization", [x], axis=1, p=2)[0]
    elif middle == "batch_transpose_pair":
        x = b.node("Transpose", [b.node("Transpose", [x], perm=[1, 0, 2, 3])[0]], perm=[1, 0, 2, 3])[0]
    x = dead_conv(x, width, 6, [0, 3])
    pooled = b.node("GlobalAveragePool", [x])[0]
    y = b.gemm(b.node("Flatten", [pooled], axis=1)[0], 6, 4)
    return b.model("input", ["N", 3, 8, 8], y, ["N", 4])
