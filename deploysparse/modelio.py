"""Loading and saving ONNX models the way real files come: inline weights or external data.

torch 2.13's exporter writes weights to `model.onnx.data` next to the file; converters from other
frameworks inline them. `load_model` takes both and turns every failure into a `ModelLoadError` that
names the file. `save_model` keeps external data when the original used it (or the model is over
protobuf's 2 GB limit) and publishes the pair atomically: the weights go to a file that only the
new graph references (`compact.onnx.data`, or `compact.onnx.<sha>.data` while the old graph still
reads that name), then the graph is renamed into place in one step. A reader therefore sees the old
pair or the new pair, never the new graph beside old weights, whenever the process is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import numpy_helper

from deploysparse.atomic import atomic_path
from deploysparse.errors import ModelLoadError, first_line

# Above this size a model cannot be one protobuf message: its weights must live in an external file.
# A module constant so tests can push small models down the external-data path.
INLINE_LIMIT = 2**31 - 1
# Tensors smaller than this stay inline even in an external-data model (shapes, small biases).
EXTERNAL_TENSOR_MIN_BYTES = 1024
_PRIVATE = "deploysparse.external_data"  # the metadata key load_model adds; never written to a file


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
    _strip_private_metadata(model)  # a model saved by other means after load_model may carry it
    external = uses_external_data(model)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{path}: external data could not be read ({first_line(exc)})") from exc
    _check_structure(model, path)
    model.metadata_props.add(key=_PRIVATE, value=str(int(external)))
    return model


def _check_structure(model: onnx.ModelProto, path: Path) -> None:
    """Run the ONNX checker on what was loaded: a cycle, a tensor with two producers or a node input
    nothing produces is bad input, named here, not a failure deep inside the analysis or surgery.

    A graph output without a declared shape is accepted (ONNX Runtime writes such models, e.g. its
    QDQ quantiser); a real input without one is refused, since the analysis needs its shape."""
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers and not value.type.tensor_type.HasField("shape"):
            raise ModelLoadError(
                f"{path}: input '{value.name}' declares no shape; export the model with input shapes"
            )
    shapeless = [
        v.type.tensor_type
        for v in [*model.graph.output, *model.graph.value_info]
        if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")
    ]
    for tensor_type in shapeless:  # rank unknown, for the checker only; removed again below
        tensor_type.shape.SetInParent()
    try:
        check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({first_line(exc)})") from exc
    finally:
        for tensor_type in shapeless:
            tensor_type.ClearField("shape")


def loaded_with_external_data(model: onnx.ModelProto) -> bool:
    """True when `load_model` found the weights in an external file."""
    return any(p.key == _PRIVATE and p.value == "1" for p in model.metadata_props)


def _strip_private_metadata(model: onnx.ModelProto) -> None:
    keep = [p for p in model.metadata_props if not p.key.startswith(_PRIVATE)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model is too large to be written as one protobuf message.

    Summed per tensor first: protobuf cannot even measure a message over 2 GB as a whole.
    """
    if sum(tensor.ByteSize() for tensor in _all_tensors(model)) > INLINE_LIMIT:
        return True
    try:
        return model.ByteSize() > INLINE_LIMIT
    except (ValueError, OverflowError, EncodeError):
        return True


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker on a model of any size (it cannot take an in-memory message over 2 GB).

    The model is checked as its graph with the large weights declared external, against a
    placeholder data file: the checker verifies the graph, the small tensors, and that each external
    tensor names a file. The weights' bytes are not copied or serialised (0.8 s for a 100 MB model).
    """
    with detached_weights(model) as (graph_only, weights), tempfile.TemporaryDirectory() as tmp:
        for tensor, data in weights:
            point_to_external(tensor, "weights.data", 0, len(data))
        (Path(tmp) / "weights.data").touch()
        _strip_private_metadata(graph_only)
        (Path(tmp) / "model.onnx").write_bytes(graph_only.SerializeToString())
        onnx.checker.check_model(str(Path(tmp) / "model.onnx"))


def external_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files an ONNX model on disk reads its external data from (resolved beside it)."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError):
        return []
    locations = {
        entry.value
        for tensor in _all_tensors(model)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [path.parent / location for location in sorted(locations)]


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    external_data: bool | None = None,
) -> Path:
    """Write `model` to `path` atomically; external data goes to one content-named file beside it.

    external_data=None keeps what the loaded original had, and switches it on above 2 GB. The data
    file is `<name>.data`, or `<name>.<sha>.data` when the graph being replaced reads `<name>.data`,
    so a new pair never overwrites the file the old graph still reads; data files of the replaced
    graph (and leftovers of killed writes) are removed afterwards. `model`'s values are unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None and loaded_with_external_data(model):
        external_data = True
    if not external_data:
        # One serialisation and no copy (a 100 MB model: one pass instead of three); its length
        # also tells whether the model fits inline, so no ByteSize() pass is needed either.
        data = _serialized_without_private_metadata(model)
        if data is not None and (external_data is False or len(data) <= INLINE_LIMIT):
            with atomic_path(path, suffix=".onnx") as tmp:
                tmp.write_bytes(data)
            # Only files named after this model are ever removed, and those are found by name: the
            # replaced graph need not be parsed (0.6 s for a 100 MB one) to know its data files.
            _remove_stale_data(path, keep=None)
            return path
        if external_data is False:
            raise ModelLoadError(
                f"{path}: the model is too large to serialise inline; save it with external data"
            )
    previous_data = external_data_files(path) if path.exists() else []
    new_data: Path | None = None
    with detached_weights(model, True) as (graph_only, weights):
        if weights:
            new_data = _write_data_file(path, weights, in_use=previous_data)
            for tensor, offset, length in _layout(weights):
                point_to_external(tensor, new_data.name, offset, length)
        _strip_private_metadata(graph_only)
        _write_graph(graph_only, path)
    _remove_stale_data(path, keep=new_data)
    return path


def _serialized_without_private_metadata(model: onnx.ModelProto) -> bytes | None:
    """`model`'s bytes without deploysparse's private metadata (removed for the duration, then put
    back), or None when it is over protobuf's 2 GB limit."""
    private = [(p.key, p.value) for p in model.metadata_props if p.key.startswith(_PRIVATE)]
    if private:
        _strip_private_metadata(model)
    try:
        return model.SerializeToString()
    except (ValueError, EncodeError):  # upb raises EncodeError over 2 GB, older protobufs ValueError
        return None
    finally:
        for key, value in private:
            model.metadata_props.add(key=key, value=value)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph below it (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can hold external data: initializers, and constant attributes."""
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    yield attribute.t
                yield from attribute.tensors


def _initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """The tensors `save_model` moves to the data file (initializers, as onnx.save does)."""
    for graph in _graphs(model.graph):
        yield from graph.initializer


@contextlib.contextmanager
def detached_weights(
    model: onnx.ModelProto, detach: bool = True
) -> Iterator[tuple[onnx.ModelProto, list[tuple[onnx.TensorProto, bytes]]]]:
    """A graph-only copy of `model` and its large initializers' bytes, without copying the weights.

    The large tensors' bytes are moved out of `model` while the (then small) message is copied, and
    put back afterwards whatever happens: protobuf cannot copy or serialise a message over 2 GB.
    Yields the copy and, for each detached initializer, its (emptied) copy in the copy with its bytes.
    """
    moved: dict[int, bytes] = {}
    tensors = list(_initializers(model))
    try:
        if detach:
            for index, tensor in enumerate(tensors):
                data = _raw_bytes(tensor)
                if data is not None and len(data) >= EXTERNAL_TENSOR_MIN_BYTES:
                    moved[index] = data
                    tensor.ClearField("raw_data")
        graph_only = onnx.ModelProto()
        graph_only.CopyFrom(model)
    finally:
        for index, data in moved.items():
            tensors[index].raw_data = data
    copies = list(_initializers(graph_only))
    yield graph_only, [(copies[index], data) for index, data in sorted(moved.items())]


def _raw_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's bytes in raw little-endian form (typed fields are converted, values unchanged)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ModelLoadError(f"tensor {tensor.name!r} has no data loaded; load the model with load_model")
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    if _byte_size(tensor) < EXTERNAL_TENSOR_MIN_BYTES:
        return None
    tensor.raw_data = numpy_helper.to_array(tensor).tobytes()
    _clear_typed_fields(tensor)
    return tensor.raw_data


def _byte_size(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _clear_typed_fields(tensor: onnx.TensorProto) -> None:
    for name in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(name)


_ALIGNMENT = 4096  # page-aligned offsets let ONNX Runtime memory-map each tensor


def _layout(weights: list[tuple[onnx.TensorProto, bytes]]) -> Iterator[tuple[onnx.TensorProto, int, int]]:
    offset = 0
    for tensor, data in weights:
        offset = -(-offset // _ALIGNMENT) * _ALIGNMENT
        yield tensor, offset, len(data)
        offset += len(data)


def _write_data_file(path: Path, weights: list[tuple[onnx.TensorProto, bytes]], in_use: list[Path]) -> Path:
    """Write the weights, page-aligned, to `<model>.data` (atomically).

    When the graph now at `path` reads `<model>.data`, the new weights go to `<model>.<sha>.data`
    instead: a graph must never see another graph's weights under the name it references.
    """
    chunks: list[bytes] = []
    position = 0
    for (_, data), (_, offset, _) in zip(weights, _layout(weights), strict=True):
        chunks += [b"\0" * (offset - position), data]
        position = offset + len(data)
    target = path.with_name(f"{path.name}.data")
    if any(p.name == target.name for p in in_use):
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        target = path.with_name(f"{path.name}.{digest.hexdigest()[:16]}.data")
    with atomic_path(target, suffix=".data") as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    return target


def point_to_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Declare `tensor`'s bytes as living at `offset` in the file `location` (relative to the model)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _write_graph(graph_only: onnx.ModelProto, path: Path) -> None:
    try:
        data = graph_only.SerializeToString()
    except ValueError as exc:
        raise ModelLoadError(f"{path}: the model is too large to serialise ({exc})") from exc
    with atomic_path(path, suffix=".onnx") as tmp:
        tmp.write_bytes(data)


def _remove_stale_data(path: Path, keep: Path | None) -> None:
    """Remove data files that belonged to the graph this one replaced, and leftovers of killed writes.

    Only files named after this model (`<name>.data`, `<name>.<hash>.data`) are touched: a data
    file of another name may belong to another model (a user's original), and is never removed.
    """
    owned = re.compile(re.escape(path.name) + r"(\.[0-9a-f]{16})?\.data")
    for stale in path.parent.iterdir():
        if owned.fullmatch(stale.name) and (keep is None or stale.name != keep.name):
            stale.unlink(missing_ok=True)
