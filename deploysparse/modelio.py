"""Loading and saving ONNX models the way real files come: inline weights or external data.

torch 2.13's exporter writes weights to `model.onnx.data` next to the file; converters from other
frameworks inline them. `load_model` takes both and turns every failure into a `ModelLoadError` that
names the file; `save_model` writes atomically, keeps external data when the original used it (or the
model is over 2 GB), and never overwrites the input model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from deploysparse.atomic import atomic_path, current_umask
from deploysparse.errors import ModelLoadError, UsageError

_TWO_GB = 2**31 - 1


def uses_external_data(model: onnx.ModelProto) -> bool:
    """True when any initializer of the (not yet loaded) model keeps its bytes in an external file."""
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model with its external data; raise ModelLoadError naming the file on failure."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelLoadError(
            f"{path}: not an ONNX model (the graph has no nodes; truncated or another format?)"
        )
    external = uses_external_data(model)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{path}: external data could not be read ({_first_line(exc)})") from exc
    _check_structure(model, path)
    model.metadata_props.add(key="deploysparse.external_data", value=str(int(external)))
    return model


def _check_structure(model: onnx.ModelProto, path: Path) -> None:
    """Run the ONNX checker on what was loaded: a cycle, a tensor with two producers or a node input
    nothing produces is bad input, named here, not a failure deep inside the analysis or surgery."""
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers and not value.type.tensor_type.HasField("shape"):
            raise ModelLoadError(
                f"{path}: input '{value.name}' declares no shape; export the model with input shapes"
            )
    if model.ByteSize() > _TWO_GB:
        return  # the checker needs a path for such models; ONNX Runtime will report what it finds
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def loaded_with_external_data(model: onnx.ModelProto) -> bool:
    """True when `load_model` found the weights in an external file."""
    return any(p.key == "deploysparse.external_data" and p.value == "1" for p in model.metadata_props)


def _strip_private_metadata(model: onnx.ModelProto) -> None:
    keep = [p for p in model.metadata_props if not p.key.startswith("deploysparse.external_data")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)


def check_output_path(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> None:
    """Refuse an output path that is one of the inputs: the input model is never overwritten."""
    out = Path(output).resolve()
    for inp in inputs:
        if inp is not None and Path(inp).resolve() == out:
            raise UsageError(f"output path {output} is the input model; choose another file name")


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    external_data: bool | None = None,
) -> Path:
    """Write `model` to `path` atomically; external data goes to `<name>.data` beside it.

    external_data=None keeps what the loaded original had, and switches it on above 2 GB.
    """
    path = Path(path)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if external_data is None:
        external_data = loaded_with_external_data(model) or model.ByteSize() > _TWO_GB
    _strip_private_metadata(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data:
        with atomic_path(path, suffix=".onnx") as tmp:
            onnx.save_model(model, str(tmp))
        return path
    data_name = path.name + ".data"
    # Both files are written into a fresh temporary folder beside the target, then renamed: data
    # first, so a reader that sees the new .onnx always finds its data.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(
            model,
            str(tmp_dir / path.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        written_data = tmp_dir / data_name
        if written_data.exists():  # every tensor may be under the size threshold: then no data file
            written_data.chmod(0o666 & ~current_umask())
            os.replace(written_data, path.parent / data_name)
        (tmp_dir / path.name).chmod(0o666 & ~current_umask())
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path
