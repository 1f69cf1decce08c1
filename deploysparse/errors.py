"""Exceptions a user can act on.

Every error deploysparse raises on bad input is a `DeploysparseError`: the CLI prints its message as
one line and exits with code 2, so a CI log shows what is wrong (the file, node or option at fault)
instead of a traceback from deep inside onnx or torch.
"""

from __future__ import annotations


class DeploysparseError(Exception):
    """Base class: bad input or a request that cannot be carried out. The message names the culprit."""


class ModelLoadError(DeploysparseError):
    """A model file is missing, not ONNX, truncated, or its external data cannot be found."""


class CalibrationError(DeploysparseError):
    """Calibration or validation data does not match the model's inputs."""


class PlanError(DeploysparseError):
    """A pruning plan does not fit the model it is applied to, or a budget cannot be met."""


class BackendError(DeploysparseError):
    """A backend (ONNX Runtime, TensorRT) is missing or failed to build or run a model."""


class UsageError(DeploysparseError):
    """Options that contradict each other, or an output path that would overwrite the input."""


class InternalError(RuntimeError):
    """A step of deploysparse produced something wrong (a model ONNX Runtime's optimiser or quantiser
    wrote that the ONNX checker rejects, a report that breaks its own schema): a bug of ours, not bad
    input. Deliberately not a DeploysparseError: the CLI reports it as an internal error, exit code 1,
    with --debug for the traceback. Its message names the user's files, never a temporary one."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type): error messages stay one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
