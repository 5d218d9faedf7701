"""The SS2D scan: op contract, implementations, and the float64 reference."""
from tinyvim.ops.scan import (
    available_scan_implementations,
    check_scan_inputs,
    cross_selective_scan,
    current_scan_implementation,
    register_scan_implementation,
    scan_as_onnx_node,
    scan_dynamic,
    scan_implementation,
    scan_orders,
    scan_parallel,
    scan_sequential,
    set_default_scan_implementation,
    softplus_stable,
)

__all__ = [
    "available_scan_implementations", "check_scan_inputs", "cross_selective_scan",
    "current_scan_implementation", "register_scan_implementation", "scan_as_onnx_node", "scan_implementation",
    "scan_dynamic", "scan_orders", "scan_parallel", "scan_sequential", "set_default_scan_implementation",
    "softplus_stable",
]
