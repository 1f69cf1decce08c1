"""Calibration data loading: .npy, .npz, PNG folders, and errors that name the file and both shapes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.calibration import batches, load_calibration, model_input_specs
from deploysparse.errors import CalibrationError


def _two_input_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node("Add", ["c", "bias"], ["y"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 4, 8, 8]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _one_input_specs():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 32, 32])],
    )
    return model_input_specs(helper.make_model(graph))


def test_model_input_specs_skip_initializers_and_keep_dynamic_dims():
    specs = model_input_specs(_two_input_model())
    assert [s.name for s in specs] == ["image", "bias"]
    assert specs[0].shape == ("batch", 3, 8, 8)
    assert specs[0].dtype == np.float32


def test_npy_with_wrong_shape_names_file_and_both_shapes(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(0).normal(size=(5, 3, 28, 28)))
    with pytest.raises(CalibrationError) as err:
        load_calibration(path, _one_input_specs())
    message = str(err.value)
    assert str(path) in message and "(5, 3, 28, 28)" in message and "(?, 3, 32, 32)" in message


def test_npy_float64_is_cast_to_model_dtype(tmp_path):
    path = tmp_path / "calib.npy"
    data = np.random.default_rng(1).normal(size=(6, 3, 32, 32))
    np.save(path, data)
    feeds = load_calibration(str(path), _one_input_specs())
    assert feeds["x"].dtype == np.float32
    np.testing.assert_allclose(feeds["x"], data.astype(np.float32))


def test_npz_keyed_by_input_name_and_missing_key(tmp_path):
    rng = np.random.default_rng(2)
    model = _two_input_model()
    good = tmp_path / "good.npz"
    np.savez(good, image=rng.normal(size=(4, 3, 8, 8)), bias=rng.normal(size=(4, 4, 8, 8)))
    feeds = load_calibration(good, model)
    assert feeds["image"].shape == (4, 3, 8, 8) and feeds["bias"].shape == (4, 4, 8, 8)

    missing = tmp_path / "missing.npz"
    np.savez(missing, image=rng.normal(size=(4, 3, 8, 8)))
    with pytest.raises(CalibrationError, match=r"missing\.npz.*bias"):
        load_calibration(missing, model)


def test_npy_for_multi_input_model_is_refused(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.ones((2, 3, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match="image, bias"):
        load_calibration(path, _two_input_model())


def test_unequal_sample_counts_and_bad_files(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(CalibrationError, match="different numbers of samples"):
        load_calibration(
            {"image": rng.normal(size=(4, 3, 8, 8)), "bias": rng.normal(size=(3, 4, 8, 8))},
            _two_input_model(),
        )
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    with pytest.raises(CalibrationError, match=r"junk.npy"):
        load_calibration(junk, _one_input_specs())
    with pytest.raises(CalibrationError, match="no such file"):
        load_calibration(tmp_path / "absent.npy", _one_input_specs())


def test_batches_cover_every_sample_once():
    feeds = {"x": np.arange(10)[:, None] * np.ones((1, 2))}
    sizes = [len(b["x"]) for b in batches(feeds, 4)]
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches(feeds, 4)]), feeds["x"])


def _write_png(path, pixels: np.ndarray) -> None:
    """Encode HxWxC uint8 as PNG, cycling through all five row filters to exercise the decoder."""
    height, width, channels = pixels.shape
    color = {1: 0, 3: 2, 4: 6}[channels]
    rows = pixels.reshape(height, width * channels).astype(np.int32)
    raw = bytearray()
    for y in range(height):
        kind = y % 5
        line, up = rows[y], rows[y - 1] if y else np.zeros_like(rows[y])
        left = np.concatenate([np.zeros(channels, np.int32), line[:-channels]])
        up_left = np.concatenate([np.zeros(channels, np.int32), up[:-channels]])
        if kind == 0:
            predictor = np.zeros_like(line)
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = up
        elif kind == 3:
            predictor = (left + up) // 2
        else:
            p = left + up - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        raw.append(kind)
        raw.extend(((line - predictor) & 0xFF).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def test_png_folder_with_preprocess_spec(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(3, 10, 12, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        _write_png(tmp_path / f"img{i}.png", image)
    (tmp_path / "preprocess.yaml").write_text(
        "layout: NCHW\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\n"
    )
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "img",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 10, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 10, 12])],
    )
    feeds = load_calibration(tmp_path, helper.make_model(graph))
    expected = ((images / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_allclose(feeds["x"], expected, rtol=1e-6, atol=1e-6)

    (tmp_path / "preprocess.yaml").write_text("layout: NHWC\nresize: 5x6\n")
    with pytest.raises(CalibrationError, match=r"\(3, 5, 6, 3\).*\(n, 3, 10, 12\)"):
        load_calibration(tmp_path, helper.make_model(graph))


def test_png_resize_of_a_constant_image_keeps_the_constant(tmp_path):
    _write_png(tmp_path / "flat.png", np.full((16, 16, 1), 128, np.uint8))
    (tmp_path / "preprocess.yaml").write_text("resize: 8x8\nscale: 1.0\n")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "gray",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 8, 8])],
    )
    feeds = load_calibration(tmp_path, helper.make_model(graph))
    np.testing.assert_allclose(feeds["x"], np.full((1, 1, 8, 8), 128.0))


def test_image_folder_without_spec_is_an_error(tmp_path):
    _write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CalibrationError, match=r"preprocess.yaml"):
        load_calibration(tmp_path, _one_input_specs())
