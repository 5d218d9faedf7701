"""ONNX export of TinyViM (portable and plugin flavours), the formats built on it, and CPU execution
of the plugin node."""
from tinyvim.export.formats import default_output, export_model, plan_export
from tinyvim.export.onnx_export import (
                                        ExportResult,
                                        check_export_args,
                                        export_onnx,
                                        op_counts,
                                        plugin_node_problems,
                                        read_metadata,
)

__all__ = ["ExportResult", "check_export_args", "default_output", "export_model", "export_onnx",
           "op_counts", "plan_export", "plugin_node_problems", "read_metadata"]
