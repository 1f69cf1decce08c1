"""Front end: PyTorch entry points and weights in, ONNX with parameter names and BatchNorm kept out.

Import the torch-dependent parts from their modules (`torch_loader`, `torch_export`, `torch_stats`);
this package itself stays importable without torch.
"""

from __future__ import annotations

from deploysparse.frontend.model_source import ResolvedModel, parse_input_shape, resolve_model

__all__ = ["ResolvedModel", "parse_input_shape", "resolve_model"]
