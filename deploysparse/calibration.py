"""Calibration and validation data: load it, check it against the model's inputs, cut it into batches.

INT8 calibration, activation statistics and validation all need "real inputs for this model". Users
keep them in three shapes: one `.npy` array for a single-input model, an `.npz` keyed by input name,
or a folder of PNG images with a `preprocess.yaml` (read by `image_folder.py`). Whatever the source,
the result is `{input name: array (N, ...)}` whose trailing dims and dtype already match the model,
so a mismatch is reported here, naming the file and both shapes, and not as a cryptic runtime error
deep inside ONNX Runtime or TensorRT.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from deploysparse.errors import CalibrationError

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (None or a symbol name for a dynamic dim) and numpy dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def batch_dim(self) -> Dim:
        """The leading (sample) dim: an int for a static batch, None or a name when dynamic."""
        return self.shape[0] if self.shape else None

    def shape_text(self) -> str:
        return "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + ")"


def model_input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of `model` (graph inputs that are not initializers), in graph order."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or None)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, tuple(dims), dtype))
    return specs


def load_calibration(
    source: str | Path | Mapping[str, np.ndarray],
    input_specs: list[InputSpec] | onnx.ModelProto,
) -> dict[str, np.ndarray]:
    """Load calibration data from a .npy, .npz, image folder or dict and check it fits the inputs.

    Axis 0 of every array is the sample axis; the other axes must equal the model's static dims.
    Floating data is cast to the model's float dtype (float64 from numpy is common and harmless).
    """
    specs = model_input_specs(input_specs) if isinstance(input_specs, onnx.ModelProto) else input_specs
    if not specs:
        raise CalibrationError("the model has no inputs to calibrate")
    if isinstance(source, Mapping):
        raw, origin = {name: np.asarray(arr) for name, arr in source.items()}, "calibration dict"
    else:
        path = Path(source)
        origin = str(path)
        raw = _read_source(path, specs)
    return _check_against_specs(raw, specs, origin)


def batches(feeds: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Yield consecutive batches (the last one may be shorter) of every input together."""
    if batch_size < 1:
        raise CalibrationError(f"batch size must be at least 1, got {batch_size}")
    count = sample_count(feeds)
    for start in range(0, count, batch_size):
        yield {name: arr[start : start + batch_size] for name, arr in feeds.items()}


def sample_count(feeds: Mapping[str, np.ndarray]) -> int:
    """Number of samples (length of axis 0, the same for every input)."""
    counts = {name: int(arr.shape[0]) for name, arr in feeds.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"inputs hold different numbers of samples: {counts}")
    return next(iter(counts.values()), 0)


def _read_source(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CalibrationError(f"{path}: no such file or folder")
    if path.is_dir():
        from deploysparse.image_folder import read_image_folder  # PyYAML and the PNG reader, for folders only

        return read_image_folder(path, [spec.name for spec in specs])
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise CalibrationError(
                f"{path}: a .npy file feeds a single-input model, but this model has inputs {names}; "
                "use an .npz keyed by input name"
            )
        return {specs[0].name: _load_npy(path)}
    if suffix == ".npz":
        return _read_npz(path, specs)
    raise CalibrationError(f"{path}: unsupported calibration source (expected .npy, .npz or an image folder)")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CalibrationError(f"{path}: not a readable .npy array ({exc})") from exc


def _read_npz(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = {key: archive[key] for key in archive.files}
    except (ValueError, OSError) as exc:
        raise CalibrationError(f"{path}: not a readable .npz archive ({exc})") from exc
    missing = [s.name for s in specs if s.name not in stored]
    if missing:
        raise CalibrationError(
            f"{path}: no array for model input(s) {', '.join(missing)} (the archive holds {', '.join(sorted(stored)) or 'nothing'})"
        )
    return {s.name: stored[s.name] for s in specs}


def _check_against_specs(
    raw: Mapping[str, np.ndarray], specs: list[InputSpec], origin: str
) -> dict[str, np.ndarray]:
    missing = [s.name for s in specs if s.name not in raw]
    if missing:
        raise CalibrationError(f"{origin}: no data for model input(s) {', '.join(missing)}")
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = raw[spec.name]
        data_shape = "(" + ", ".join(str(d) for d in arr.shape) + ")"
        if arr.ndim != len(spec.shape) or any(
            isinstance(want, int) and want != got
            for want, got in zip(spec.shape[1:], arr.shape[1:], strict=True)
        ):
            raise CalibrationError(
                f"{origin}: input '{spec.name}' data has shape {data_shape} but the model expects "
                f"{spec.shape_text()} (axis 0 is the sample axis)"
            )
        if arr.shape[0] == 0:
            raise CalibrationError(f"{origin}: input '{spec.name}' holds no samples")
        feeds[spec.name] = _cast(arr, spec, origin)
        _check_finite(feeds[spec.name], spec.name, origin)
    sample_count(feeds)
    return feeds


def _check_finite(arr: np.ndarray, name: str, origin: str) -> None:
    """NaN or Inf in the data would make every statistic NaN (a dead channel then looks alive and
    a ranking is noise): refuse it, saying where the first one is."""
    if arr.dtype.kind not in "fc":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise CalibrationError(
            f"{origin}: input '{name}' holds {bad.shape[0]} NaN or Inf values (the first in sample "
            f"{int(bad[0][0])}); clean the data first"
        )


def _cast(arr: np.ndarray, spec: InputSpec, origin: str) -> np.ndarray:
    if arr.dtype == spec.dtype:
        return np.ascontiguousarray(arr)
    same_kind = (arr.dtype.kind == "f" and spec.dtype.kind == "f") or (
        arr.dtype.kind in "iu" and spec.dtype.kind in "iuf"
    )
    if not same_kind:
        raise CalibrationError(
            f"{origin}: input '{spec.name}' data has dtype {arr.dtype} but the model expects {spec.dtype}"
        )
    return np.ascontiguousarray(arr.astype(spec.dtype))
