"""deploysparse: find the filters a trained CNN does not need, remove them from the graph, prove the
compact model still computes the same function, and ship it to ONNX Runtime or TensorRT."""

__version__ = "0.1.0"
