"""Property: on any graph made of supported ops, surgery with any legal plan equals masking.

Hypothesis draws a sequence of blocks (plain, depthwise and grouped convs, BN, Relu/Clip, residual
Add, Concat, dense concat, MaxPool, per-channel Mul, Split and Slice on the channel axis, ConvNeXt's
NHWC MLP with a LayerNorm, op or written out, over the last axis) and a head (GAP + Gemm, spatial
Flatten + Gemm, 1x1 conv); shrinking finds the smallest failing graph. The masked original takes a
LayerNorm's statistics over the kept channels, as the compact model does.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deploysparse.graph.analysis import analyze_graph
from deploysparse.graph.masking import zero_channels
from deploysparse.graph.surgery import rewrite_graph
from tests.archs.onnxgraphs import BLOCKS, HEADS, random_convnet
from tests.archs.plans import random_plan, removed_count
from tests.exporting import random_feeds, relative_error, run


@pytest.mark.slow
@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    blocks=st.lists(st.sampled_from(BLOCKS), min_size=0, max_size=6),
    head=st.sampled_from(HEADS),
    seed=st.integers(0, 2**31 - 1),
    opset=st.sampled_from([11, 13, 17, 21]),
)
# Found by this test: a group that fills only some blocks of a grouped conv (a dense concat, or a
# slice of a grouped conv's output) was pruned alone, leaving the conv with unequal blocks.
@example(blocks=["dense", "grouped"], head="flatten_gemm", seed=143393851, opset=17)
@example(blocks=["mul", "grouped", "slice"], head="flatten_gemm", seed=299040099, opset=17)
# Split with `num_outputs` (opset 18+) must get explicit sizes once its halves differ.
@example(blocks=["split"], head="gap_gemm", seed=0, opset=21)
# Channels on the last axis between two Transposes, the LayerNorm written out (opset 11) and as the op.
@example(blocks=["nhwc_mlp", "split", "nhwc_mlp"], head="conv_out", seed=3, opset=11)
@example(blocks=["depthwise", "nhwc_mlp", "nhwc_mlp"], head="flatten_gemm", seed=5, opset=21)
def test_surgery_equals_masking_on_random_graphs(blocks: list[str], head: str, seed: int, opset: int) -> None:
    model = random_convnet(blocks, head, seed, opset)
    ga = analyze_graph(model)
    # The stem conv's output is read only by supported ops, so its group is always prunable.
    assert any(g.prunable for g in ga.groups), "no prunable group"

    rng = np.random.default_rng(seed)
    plan = random_plan(ga, rng)
    assert removed_count(ga, plan) > 0
    masked = zero_channels(ga, plan)
    compact = rewrite_graph(ga, plan).model

    feeds = random_feeds(model, rng)
    reference = run(model, feeds)[0]
    expected = run(masked, feeds)[0]
    got = run(compact, feeds)[0]
    assert reference.shape == got.shape
    err = relative_error(expected, got)
    assert err < 1e-5, f"compact vs masked original: relative error {err:.3g}"
