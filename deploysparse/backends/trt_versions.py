"""TensorRT versions: which ONNX ops each release's parser accepts, and what a version string means.

The op-support check (`trt_support.py`) and the engine commands (`trt_commands.py`) both target one
TensorRT version, chosen with `--trt-version` (default: the newest table below). An engine is built
on the device, often with another TensorRT than any machine deploysparse runs on, so the version is
the target's, not the installed one.

Source of the tables: onnx/onnx-tensorrt `docs/operators.md` ("Operator Support Matrix"), the
revision of each release: 8.5 GA, 8.6 GA, 10.0 GA, 10.1 GA and 10.15 GA (released 2026-02-02, the
newest read), with the release notes in its `docs/Changelog.md`. No release dropped an op, so each
table is the one before it plus the ops that release added. A version between two tables (10.3, as
JetPack 6.1 ships) is checked against the newest table not newer than it, and the report says so: it
may flag an op that release already supports, never accept one it does not. A version newer than
every table (TensorRT 11) is checked against the newest one, with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deploysparse.errors import UsageError

SOURCE = "onnx/onnx-tensorrt docs/operators.md"

# Op types marked "Y" in the TensorRT 8.5 GA table (default ONNX domain).
_OPS_8_5 = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GRU",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)
# What each later table adds to the one before it.
_ADDED_8_6 = frozenset({"GroupNormalization", "IsInf", "LayerNormalization"})
_ADDED_10_0 = frozenset({"CastLike", "Hardmax", "Gelu", "Mish"})  # 9.x added the first two
_ADDED_10_1 = frozenset({"DeformConv"})
_ADDED_10_15 = frozenset(
    {
        "Attention",
        "BlackmanWindow",
        "HammingWindow",
        "HannWindow",
        "RMSNormalization",
        "RotaryEmbedding",
        "STFT",
        "TensorScatter",
    }
)


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT release as MAJOR.MINOR (patch and build numbers do not change the parser's table)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 10 is the first whose ONNX parser builds strongly typed networks (precision from
        the ONNX: casts and Q/DQ), the only kind TensorRT 11 builds."""
        return self.major >= 10


@dataclass(frozen=True)
class OpTable:
    """The ops one TensorRT release's ONNX parser supports, and the opsets it parses."""

    version: TrtVersion
    ops: frozenset[str]
    min_opset: int
    max_opset: int

    @property
    def source(self) -> str:
        return f"{SOURCE}, TensorRT {self.version} GA"


_TABLES: tuple[OpTable, ...] = (
    OpTable(TrtVersion(8, 5), _OPS_8_5, 1, 17),
    OpTable(TrtVersion(8, 6), _OPS_8_5 | _ADDED_8_6, 1, 17),
    OpTable(TrtVersion(10, 0), _OPS_8_5 | _ADDED_8_6 | _ADDED_10_0, 9, 20),
    OpTable(TrtVersion(10, 1), _OPS_8_5 | _ADDED_8_6 | _ADDED_10_0 | _ADDED_10_1, 9, 20),
    OpTable(TrtVersion(10, 15), _OPS_8_5 | _ADDED_8_6 | _ADDED_10_0 | _ADDED_10_1 | _ADDED_10_15, 9, 24),
)
NEWEST = _TABLES[-1].version
KNOWN_VERSIONS: tuple[str, ...] = tuple(str(t.version) for t in _TABLES)
VERSION_HELP = (
    f"TensorRT version to target: {', '.join(KNOWN_VERSIONS)} (the tables read), any MAJOR.MINOR "
    f"(checked against the newest table not newer than it), or MAJOR.x; default {NEWEST}."
)


@dataclass(frozen=True)
class Target:
    """The TensorRT version asked for and the table that stands for it."""

    requested: TrtVersion
    table: OpTable
    note: str | None = None  # why the table is not the requested version's own


def parse_version(text: str | None) -> TrtVersion:
    """'10.3', '10.3.0.26', '10', '10.x' (the newest known minor of 10) or None (the newest known)."""
    if text is None or str(text).strip() == "":
        return NEWEST
    value = str(text).strip().lower().removeprefix("tensorrt").strip()
    match = re.fullmatch(r"(\d+)(?:\.(\d+|x))?(?:\.\d+)*", value)
    if not match:
        raise UsageError(f"--trt-version: expected MAJOR.MINOR such as 10.3 or 10.x, got {text!r}")
    major = int(match.group(1))
    minor = match.group(2)
    if minor is None or minor == "x":
        same_major = [t.version for t in _TABLES if t.version.major == major]
        return same_major[-1] if same_major else TrtVersion(major, 0)
    return TrtVersion(major, int(minor))


def target(version: str | TrtVersion | None = None) -> Target:
    """The table for `version`: its own, else the newest older one, else (newer than every table)
    the newest, with a note saying which."""
    requested = version if isinstance(version, TrtVersion) else parse_version(version)
    older = [t for t in _TABLES if t.version <= requested]
    if not older:
        raise UsageError(
            f"--trt-version {requested}: no support table older than TensorRT {_TABLES[0].version} "
            f"is known (tables: {', '.join(KNOWN_VERSIONS)})"
        )
    table = older[-1]
    if table.version == requested:
        return Target(requested, table)
    if requested > NEWEST:
        note = (
            f"TensorRT {requested} is newer than the newest table read (TensorRT {NEWEST}): checked "
            f"against {NEWEST}; a newer release may accept ops flagged here"
        )
    else:
        note = (
            f"no table for TensorRT {requested}: checked against TensorRT {table.version}, the newest "
            "older one; ops that release added may be flagged"
        )
    return Target(requested, table, note)
