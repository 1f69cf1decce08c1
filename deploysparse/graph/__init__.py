"""Channel analysis and surgery on the ONNX graph."""
