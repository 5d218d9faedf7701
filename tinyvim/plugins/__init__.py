"""Native plugins for the cross selective scan: the CUDA kernel (csrc/), its CPU twin,
the TensorRT plugin, and their Python front ends.

Importing this package loads nothing native and needs neither a GPU nor a compiler:
every library is built or loaded on first use, with a one-line PluginError if it cannot be.
The torch "cuda" scan registers itself when tinyvim.plugins.torch_cuda is imported.
"""
from tinyvim.plugins.build import find_cuda_library, find_plugin_library
from tinyvim.plugins.errors import PluginError

__all__ = ["PluginError", "find_cuda_library", "find_plugin_library"]
