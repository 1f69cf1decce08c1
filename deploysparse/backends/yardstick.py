"""The yardstick: a small fixed convolutional net timed beside the compact model in every run.

Why. A CI runner's speed moves between processes by more than a latency tolerance: on a 2-core
runner with one core busy, the bundled model's median moved ±6% (batch 1) and ±4% (batch 8) from one
`deploysparse run` to the next, while its ratio to the original timed in the same rounds moved ±3%
and ±1% (docs/benchmarks.md, issue 23). So `check` compares that ratio when the model is the same
one. When the model changed (retrained, an extra layer), its original changed with it and the ratio
cannot show a model slower as a whole; the yardstick is a reference that does not change: the same
bytes in every run (built here from a seeded generator, versioned by YARDSTICK_VERSION), convs and
ReLUs like the models deploysparse ships, timed in the same rounds on the same backend, so the ratio
compact / yardstick cancels the runner's speed for a changed model too. How far it cancels depends on
how alike the two are (a memory-bound model moves differently from a compute-bound one), which is why
the check says which reference it used.

It is built in memory (no file ships with the package) and fed its own random input at its own
shape, batch size for batch size with the run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploysparse.modelio import save_model

# Changing anything below changes what the yardstick measures: bump the version, so that `check`
# never compares ratios to two different yardsticks.
YARDSTICK_VERSION = "conv16-32x32-v1"
INPUT_NAME = "yardstick_input"
CHANNELS_IN, SIZE = 16, 32
# (out channels, kernel, max-pool after): about 19 M multiply-adds per sample
LAYERS = ((32, 3, False), (32, 3, True), (64, 3, False), (64, 1, False))
CLASSES = 10
OPSET = 13
SEED = 0


def yardstick_model() -> onnx.ModelProto:
    """The yardstick net: convs with ReLU, one max-pool, global average pool, a dense layer; batch
    dimension dynamic, weights He-initialised from a generator seeded with SEED (the same bytes on
    every machine and in every run)."""
    rng = np.random.default_rng(SEED)
    initializers, nodes = [], []
    tensor, channels = INPUT_NAME, CHANNELS_IN
    for i, (out, kernel, pool) in enumerate(LAYERS):
        weight = rng.normal(0.0, np.sqrt(2.0 / (channels * kernel * kernel)), (out, channels, kernel, kernel))
        initializers += [
            numpy_helper.from_array(weight.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.normal(0.0, 0.01, out).astype(np.float32), f"b{i}"),
        ]
        pad = kernel // 2
        nodes += [
            helper.make_node(
                "Conv", [tensor, f"w{i}", f"b{i}"], [f"conv{i}"], pads=[pad] * 4, name=f"conv{i}"
            ),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"),
        ]
        tensor, channels = f"relu{i}", out
        if pool:
            nodes.append(
                helper.make_node("MaxPool", [tensor], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            tensor = f"pool{i}"
    dense = rng.normal(0.0, np.sqrt(1.0 / channels), (channels, CLASSES)).astype(np.float32)
    initializers.append(numpy_helper.from_array(dense, "dense"))
    nodes += [
        helper.make_node("GlobalAveragePool", [tensor], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "deploysparse_yardstick",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", CHANNELS_IN, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.producer_name = f"deploysparse yardstick {YARDSTICK_VERSION}"
    return model


def write_yardstick(folder: Path) -> Path:
    """The yardstick written to `folder` (a scratch folder of the run) for a runner to open."""
    return save_model(yardstick_model(), folder / "yardstick.onnx")
