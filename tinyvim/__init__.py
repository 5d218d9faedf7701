"""tinyvim: TinyViM from a PyTorch checkpoint to a verified ONNX Runtime / TensorRT engine."""
__version__ = "0.1.0"

from tinyvim.errors import TinyvimError  # noqa: E402
from tinyvim.model import create_model, reparameterize  # noqa: E402
from tinyvim.ops import scan_implementation, set_default_scan_implementation  # noqa: E402

__all__ = ["TinyvimError", "create_model", "reparameterize", "scan_implementation",
           "set_default_scan_implementation", "__version__"]

# Registers the "cuda" scan implementation (loads nothing until a CUDA tensor asks for it).
import tinyvim.plugins.torch_cuda  # noqa: E402,F401
