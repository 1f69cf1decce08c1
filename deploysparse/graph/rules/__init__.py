"""Per-op rules: everything the package asks of one ONNX op type, in one registry.

A `Rule` owns its op, in the manner of Torch-Pruning's `BasePruningFunc` (looked up by type) and
onnx-graphsurgeon's `Graph.register` (extension by registration). It says:
- `analyze`: how the node's input channels relate to its output channels (edges, attachments, pins,
  constant sources written into a `ChannelTable`);
- `rewrite`: what besides slicing its attached initializers must change once a plan is chosen (a
  depthwise conv's group count, a Split's sizes, a Reshape's shape constant);
- `macs`: its multiply-accumulates per sample and the tensors whose kept fraction scales them;
- `reads`: where it multiplies channels by weights (a final reader of a channel: the dead-filter
  check judges liveness there, criteria read their activations there);
- `fold`: whether and how a constant input channel moves into its bias exactly (the dead-filter
  check and the surgery both ask this one object, so they cannot disagree);
- `zeroes`: which per-channel parameter inputs must be zeroed for a removed channel to output 0;
- `zero_to_zero`: whether an all-zero input channel gives an all-zero output channel;
- `layer_output` / `compute`: how a framework layer's output maps to the node (hooks on torch modules);
- `scale_shift`: the inputs holding a normalisation's learned per-channel scale and shift (BN's
  gamma and beta: the evidence of the bn-scale and similarity criteria);
- `timing`: what layer the node times like (a `LayerShape`: the latency table times its one-node
  model);
- `fused_into_producer`: a backend computes the op inside the kernel of the node before it (BN and
  the usual activations after a conv: a per-layer profile gives that node their time);
- `absorbs_scale` / `inference_scale`: the weight input into which a backend folds a following
  per-channel scale (a Conv's), and the scale a normalisation applies at inference (BN's
  gamma / sqrt(var + eps)): the denormal count tests weights as the backend runs them;
- `adds_depth` / `merges_residual`: a layer of the network's depth (Conv) and a residual merge (Add),
  for the depth advisor;
- `channel_axis`: the axis the node's outputs keep their channels on (Transpose moves it, a MatMul
  writes the last; without this part a rule follows channels on axis 1 only);
- `masked`: a statistic over the channels (LayerNorm's mean and variance) written over the kept
  channels only, for the masked original the tests compare the surgery with.
An op with no rule pins every channel tensor it touches: never pruned, never a crash. `register_rule`
adds an op, including a custom-domain one, without editing this package.

Floor plan: `registry` (Rule, Reading, Fold, register_rule, rule_for, ...), `helpers` (the ONNX
helpers every family shares: attr, readers, has_padding, pin_all, filter_magnitude, ...), `timing`
(LayerShape and the one-node models' kinds), then one module per op family, each registering its
rules when imported: `activation`, `pooling`, `normalization`, `elementwise`, `conv`, `dense`,
`shape`, `spatial`; `quantization` holds what is asked of the quantized ops, which have no rule yet.
The order in which families register has no effect: rules are looked up by (domain, op type).
"""

from __future__ import annotations

from deploysparse.graph.rules import (  # noqa: F401  (importing a family registers its rules)
    activation,
    conv,
    dense,
    elementwise,
    normalization,
    pooling,
    shape,
    spatial,
)
from deploysparse.graph.rules.helpers import (
    attr,
    filter_magnitude,
    has_padding,
    identity_node,
    kernel_node,
    pin_all,
    readers,
    stored_tensors,
)
from deploysparse.graph.rules.quantization import INT8_OPS, int8_op_types, runs_int8
from deploysparse.graph.rules.registry import (
    RULES,
    AnalyzeFn,
    AxisFn,
    ComputeFn,
    Fold,
    InferenceScaleFn,
    MacsFn,
    MaskedFn,
    Reading,
    RewriteFn,
    Rule,
    ops_with,
    register_rule,
    rule,
    rule_for,
    unregister_rule,
)
from deploysparse.graph.rules.timing import LAYER_KINDS, LayerKind, LayerShape

__all__ = [
    "INT8_OPS",
    "LAYER_KINDS",
    "RULES",
    "AnalyzeFn",
    "AxisFn",
    "ComputeFn",
    "Fold",
    "InferenceScaleFn",
    "LayerKind",
    "LayerShape",
    "MacsFn",
    "MaskedFn",
    "Reading",
    "RewriteFn",
    "Rule",
    "attr",
    "filter_magnitude",
    "has_padding",
    "identity_node",
    "int8_op_types",
    "kernel_node",
    "ops_with",
    "pin_all",
    "readers",
    "register_rule",
    "rule",
    "rule_for",
    "runs_int8",
    "stored_tensors",
    "unregister_rule",
]
