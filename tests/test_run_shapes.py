"""run_shapes: the one place that decides the shapes a run feeds a model at, and its batch sizes."""

from __future__ import annotations

import numpy as np
import pytest

from deploysparse.calibration import InputSpec
from deploysparse.errors import UsageError
from deploysparse.input_shapes import parse_input_shapes
from deploysparse.run_shapes import resolve_shapes, shapes_if_known

F32 = np.dtype(np.float32)
DYNAMIC_HW = [InputSpec("x", (None, 3, None, None), F32)]  # PP-OCRv4's text detector
REC = [InputSpec("x", ("batch", 3, 48, None), F32)]  # its recogniser: a fixed height
STATIC_BATCH = [InputSpec("image", (1, 3, 80, 60), F32)]  # PicoDet's layout model
TWO = [InputSpec("a", (None, 3, 8, 8), F32), InputSpec("b", (None, 1, 8, 8), F32)]


@pytest.mark.parametrize(
    "text", ["1x3x640x320", "1,3,640,320", "(1, 3, 640, 320)", "x:1x3x640x320", "x:[1,3,640,320]"]
)
def test_every_form_prune_accepts_gives_the_same_shape(text: str) -> None:
    shapes = resolve_shapes(DYNAMIC_HW, parse_input_shapes([text]))
    assert shapes.shapes == {"x": (1, 3, 640, 320)} and shapes.source == "--input-shape"
    assert shapes.describe() == "x 1x3x640x320 (from --input-shape)"


def test_the_order_given_then_data_then_model() -> None:
    data = {"x": np.zeros((5, 3, 48, 200), np.float32)}
    assert resolve_shapes(REC, {"": (2, 3, 48, 320)}, data).shapes == {"x": (2, 3, 48, 320)}
    from_data = resolve_shapes(REC, data=data)
    assert from_data.shapes == {"x": (1, 3, 48, 200)} and from_data.source == "data"
    model = resolve_shapes(STATIC_BATCH)
    assert model.shapes == {"image": (1, 3, 80, 60)} and model.source == "model"
    assert resolve_shapes(TWO, parse_input_shapes(["a:1x3x8x8,b:1x1x8x8"])).source == "--input-shape"
    assert resolve_shapes(TWO).shapes == {"a": (1, 3, 8, 8), "b": (1, 1, 8, 8)}


def test_a_dynamic_model_without_a_shape_asks_for_one() -> None:
    with pytest.raises(
        UsageError, match=r"input 'x' has dynamic dims at axes \[2, 3\] .*--input-shape x:1x3x\?x\?"
    ):
        resolve_shapes(DYNAMIC_HW)
    with pytest.raises(UsageError, match=r"the recipe's input_shape x:1x3x48x\?"):
        resolve_shapes(REC, given_as="the recipe's input_shape")
    assert shapes_if_known(DYNAMIC_HW) is None
    assert shapes_if_known(DYNAMIC_HW, {"x": (1, 3, 32, 32)}).shapes == {"x": (1, 3, 32, 32)}
    assert shapes_if_known(STATIC_BATCH).source == "model"


@pytest.mark.parametrize(
    ("specs", "given", "message"),
    [
        (REC, {"": (1, 3, 64, 320)}, r"1x3x64x320 does not fit input 'x' \(batch, 3, 48, \?\)"),
        (REC, {"": (1, 3, 48)}, r"1x3x48 has 3 dims, but input 'x' has rank 4"),
        (
            STATIC_BATCH,
            {"": (8, 3, 80, 60)},
            r"8x3x80x60 has batch 8, but input 'image' has a static batch of 1",
        ),
        (REC, {"y": (1, 3, 48, 9)}, r"names 'y', but the model's inputs are x"),
        (TWO, {"": (1, 3, 8, 8)}, r"without an input name, but the model has inputs a, b"),
    ],
)
def test_a_shape_that_does_not_fit_is_refused_naming_the_input(specs, given, message) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_shapes(specs, given)


def test_data_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(UsageError, match=r"the data: 1x3x32x32 does not fit input 'x'"):
        resolve_shapes(REC, data={"x": np.zeros((2, 3, 32, 32), np.float32)})


def test_batches_a_static_batch_cannot_take_are_skipped_and_named() -> None:
    static = resolve_shapes(STATIC_BATCH)
    kept, skipped = static.usable_batches([1, 8, 1])
    assert kept == [1] and [s.to_json() for s in skipped] == [
        {"batch": 8, "reason": "input 'image' has a static batch of 1"}
    ]
    assert static.usable_batches([4, 8])[0] == [1]  # none fits: the model's own batch is measured
    dynamic = resolve_shapes(DYNAMIC_HW, {"": (2, 3, 16, 16)})
    assert dynamic.usable_batches([1, 8]) == ([1, 8], [])
    assert dynamic.batch == 2 and dynamic.at_batch(8) == {"x": (8, 3, 16, 16)}
