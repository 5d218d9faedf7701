"""tinyvim: TinyViM from a PyTorch checkpoint to a verified ONNX Runtime / TensorRT engine."""
__version__ = "0.1.0"
