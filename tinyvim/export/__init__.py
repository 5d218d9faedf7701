"""ONNX export of TinyViM (portable and plugin flavours) and CPU execution of the plugin node."""
from tinyvim.export.onnx_export import (ExportResult, build_metadata, check_export_args, export_onnx, op_counts,
                                        plugin_node_problems, read_metadata)

__all__ = ["ExportResult", "build_metadata", "check_export_args", "export_onnx", "op_counts", "plugin_node_problems", "read_metadata"]
