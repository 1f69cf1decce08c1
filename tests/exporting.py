"""Export torch models to ONNX the two ways users do, and run ONNX files in ONNX Runtime.

torch 2.13 has two exporters that produce different graphs from the same module: the dynamo exporter
(parameter names kept, weights in `model.onnx.data`, BN folded by its optimizer, adaptive pooling as
ReduceMean, reshapes fed by Shape ops under a dynamic batch) and the legacy TorchScript exporter
(weights renamed `onnx::Conv_N`, BN folded by constant folding, GlobalAveragePool and Flatten).
Surgery has to be exact on both.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

# The dynamo exporter logs one warning per missing torchvision op on every export.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

EXPORTERS = ("dynamo", "legacy")
INPUT_NAME = "input"


def output_names(count: int) -> list[str]:
    """Graph output names for a model with `count` outputs."""
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    exporter: str = "dynamo",
    keep_bn: bool = False,
    dynamic_batch: bool = True,
    outputs: int = 1,
    opset: int | None = None,
    dynamic_spatial: bool = False,
) -> Path:
    """Export `model` (eval mode) to `path` with one input named "input".

    keep_bn=True switches off the exporter's optimizer / constant folding, so BatchNormalization
    nodes stay in the graph instead of being folded into the convs. dynamic_spatial=True makes the
    input's H and W symbolic too (fully convolutional nets only).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(outputs)
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            spec = {0: torch.export.Dim("batch", min=1, max=64)} if dynamic_batch else {}
            if dynamic_spatial:
                spec |= {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
            dims = (spec,) if spec else None
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                optimize=not keep_bn,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes=dims,
                opset_version=opset,
                verbose=False,
            )
        else:
            axes = {n: {0: "batch"} for n in [INPUT_NAME, *names]} if dynamic_batch else {}
            if dynamic_spatial:
                axes[INPUT_NAME] = {**axes.get(INPUT_NAME, {}), 2: "height", 3: "width"}
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                do_constant_folding=not keep_bn,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=axes or None,
                opset_version=opset or 17,
                training=torch.onnx.TrainingMode.EVAL,
            )
    return path


def session(model: str | os.PathLike[str] | onnx.ModelProto) -> ort.InferenceSession:
    """A single-threaded CPU ONNX Runtime session with graph optimizations off.

    Optimizations are off so the graph that runs is the graph the surgery wrote, not a fused variant.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(model: str | os.PathLike[str] | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model on `feeds` and return all its outputs."""
    return session(model).run(None, feeds)


def random_feeds(
    model: str | os.PathLike[str] | onnx.ModelProto, rng: np.random.Generator, batch: int = 3
) -> dict[str, np.ndarray]:
    """Standard-normal inputs for every graph input; symbolic or unknown dims become `batch` at
    axis 0 and fail loudly elsewhere (the test models have static non-batch dims)."""
    graph_model = (
        model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    )
    initializers = {i.name for i in graph_model.graph.initializer}
    feeds = {}
    for inp in graph_model.graph.input:
        if inp.name in initializers:
            continue
        dims = []
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif axis == 0:
                dims.append(batch)
            else:
                raise ValueError(f"input {inp.name} has a symbolic dim at axis {axis}")
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """max|a - b| / max|a|: a scale-free distance that is 0 only for identical outputs."""
    scale = float(np.max(np.abs(reference)))
    return float(np.max(np.abs(reference - other))) / (scale if scale > 0 else 1.0)


def weight_count(model: onnx.ModelProto) -> int:
    """Elements in the weights of Conv, ConvTranspose, Gemm and MatMul nodes (inputs 1 and 2), whether
    the weights are initializers or Constant nodes."""
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            sizes[node.output[0]] = int(np.prod(node.attribute[0].t.dims))
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            total += sum(sizes.get(name, 0) for name in node.input[1:3])
    return total
