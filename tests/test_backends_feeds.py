"""make_feeds: the one maker of random model inputs (dtypes, shapes, batch rules, ranges, seeds)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from deploysparse.backends.feeds import feed_shapes, make_feeds
from deploysparse.calibration import InputSpec
from deploysparse.errors import UsageError


def test_each_dtype_gets_its_kind_of_data_and_never_zeros() -> None:
    specs = [
        InputSpec("x", (None, 3, 4), np.dtype(np.float16)),
        InputSpec("ids", ("n", 5), np.dtype(np.int64)),
        InputSpec("small", (None, 7), np.dtype(np.uint8)),
        InputSpec("mask", (None, 6), np.dtype(np.bool_)),
    ]
    feeds = make_feeds(specs, batch=3)
    assert feeds["x"].shape == (3, 3, 4) and feeds["x"].dtype == np.float16 and np.all(feeds["x"] != 0)
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].min() >= 1 and feeds["ids"].max() <= 9
    assert feeds["small"].dtype == np.uint8 and np.all(feeds["small"] != 0)
    assert feeds["mask"].dtype == np.bool_ and feeds["mask"].shape == (3, 6)


def test_float_values_are_standard_normal_as_before_the_merge() -> None:
    """The values every caller fed before (rng.standard_normal(shape).astype(dtype), in input order)."""
    specs = [InputSpec("a", (2, 3), np.dtype(np.float32)), InputSpec("b", (2, 5), np.dtype(np.float32))]
    rng = np.random.default_rng(7)
    expected_a = rng.standard_normal((2, 3)).astype(np.float32)
    expected_b = rng.standard_normal((2, 5)).astype(np.float32)
    feeds = make_feeds(specs, seed=7)
    np.testing.assert_array_equal(feeds["a"], expected_a)
    np.testing.assert_array_equal(feeds["b"], expected_b)


def test_a_generator_gives_fresh_data_on_each_call_and_a_seed_repeats() -> None:
    specs = [InputSpec("x", (None, 4), np.dtype(np.float32))]
    rng = np.random.default_rng(0)
    first, second = make_feeds(specs, seed=rng)["x"], make_feeds(specs, seed=rng)["x"]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(make_feeds(specs, seed=3)["x"], make_feeds(specs, seed=3)["x"])


def test_an_explicit_shape_feeds_dynamic_height_and_width() -> None:
    specs = [InputSpec("image", ("N", 3, "H", "W"), np.dtype(np.float32))]
    with pytest.raises(UsageError, match=r"input 'image' has dynamic dims at axes \[2, 3\]"):
        make_feeds(specs)
    assert make_feeds(specs, {"image": (2, 3, 40, 24)})["image"].shape == (2, 3, 40, 24)
    assert make_feeds(specs, {"image": (2, 3, 40, 24)}, batch=5)["image"].shape == (5, 3, 40, 24)
    with pytest.raises(UsageError, match=r"m.onnx: shape 1x4x40x24 does not fit input 'image'"):
        make_feeds(specs, {"image": (1, 4, 40, 24)}, source="m.onnx")
    with pytest.raises(UsageError, match=r"shape 1x3x40 does not fit"):
        make_feeds(specs, {"image": (1, 3, 40)})
    with pytest.raises(UsageError, match="a shape is given for input 'img', but the inputs are image"):
        make_feeds(specs, {"img": (1, 3, 40, 24)})


def test_batch_rules_static_dynamic_and_min_batch() -> None:
    static = [InputSpec("x", (1, 3), np.dtype(np.float32))]
    dynamic = [InputSpec("x", (None, 3), np.dtype(np.float32))]
    assert feed_shapes(static) == {"x": (1, 3)} and feed_shapes(dynamic) == {"x": (1, 3)}
    assert feed_shapes(dynamic, batch=8) == {"x": (8, 3)} and feed_shapes(static, batch=1) == {"x": (1, 3)}
    with pytest.raises(UsageError, match=r"m.onnx: input 'x' has a static batch of 1, so batch 8 cannot run"):
        feed_shapes(static, batch=8, source="m.onnx")
    # min_batch: checks that want more than one sample (a static-batch model then runs padded)
    assert feed_shapes(static, min_batch=2) == {"x": (2, 3)}
    assert feed_shapes(static, {"x": (4, 3)}, min_batch=2) == {"x": (4, 3)}


def test_value_range_for_floats_and_integers() -> None:
    specs = [InputSpec("x", (50, 8), np.dtype(np.float32)), InputSpec("i", (50, 8), np.dtype(np.int32))]
    feeds = make_feeds(specs, value_range=(0.0, 1.0))
    assert feeds["x"].min() >= 0.0 and feeds["x"].max() < 1.0
    assert set(np.unique(feeds["i"])) <= {0, 1}
    with pytest.raises(UsageError, match="holds no integer"):
        make_feeds(specs, value_range=(0.2, 0.8))


def test_a_model_gives_its_own_specs_and_a_scalar_input_stays_a_scalar() -> None:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    feeds = make_feeds(helper.make_model(graph), batch=2)
    assert feeds["x"].shape == (2, 4) and feeds["s"].shape == ()


def test_types_without_random_data_are_refused_by_name() -> None:
    with pytest.raises(UsageError, match="input 'text' of type <U1 cannot be given random values"):
        make_feeds([InputSpec("text", (1,), np.dtype("<U1"))])
