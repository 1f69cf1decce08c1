"""save_model writes one serialisation without copying the caller's model, and never leaks private metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from deploysparse.modelio import load_model, loaded_with_external_data, save_model
from tests.exporting import run
from tests.test_denormals import denormal_model


def test_inline_save_strips_private_metadata_and_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    model, _ = denormal_model(np.random.default_rng(5))
    model.metadata_props.add(key="author", value="me")
    save_model(model, tmp_path / "ext.onnx", external_data=True)
    loaded = load_model(tmp_path / "ext.onnx")
    assert loaded_with_external_data(loaded)
    before = loaded.SerializeToString()

    out = save_model(loaded, tmp_path / "inline.onnx", external_data=False)

    assert loaded.SerializeToString() == before  # the caller's model is as it was
    written = onnx.load(out)
    assert [(p.key, p.value) for p in written.metadata_props] == [("author", "me")]
    assert not (tmp_path / "inline.onnx.data").exists()
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(run(written, {"x": x})[0], run(model, {"x": x})[0])


def test_external_data_is_kept_when_the_original_had_it(tmp_path: Path) -> None:
    model, _ = denormal_model(np.random.default_rng(5))
    save_model(model, tmp_path / "ext.onnx", external_data=True)
    save_model(load_model(tmp_path / "ext.onnx"), tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx.data").exists()
    assert not any(
        p.key.startswith("deploysparse.") for p in onnx.load(tmp_path / "again.onnx").metadata_props
    )
