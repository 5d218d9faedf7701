"""`tinyvim export --fmt torchscript`: the re-parameterized model traced with torch.jit.trace,
the scan inlined as standard ops, so `torch.jit.load` works in libtorch (C++) or Triton's PyTorch
backend without tinyvim (a trace of the op itself would hold `tinyvim::cross_selective_scan`,
an unknown builtin there). The trace fixes batch and H x W. The tinyvim metadata travels in the
archive as the extra file ARTIFACT_METADATA_NAME (read back by tinyvim.backends.pt2)."""
from __future__ import annotations

import io
import os
from collections.abc import Callable


from tinyvim.contract import ARTIFACT_METADATA_NAME, InputSpec, ModelSpec
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import ExportResult
from tinyvim.export.torch_program import begin_export, finish_export, first_line, inline_scan, metadata_text, quiet_tracing
from tinyvim.lazy import lazy_import
from tinyvim.utils import atomic_write_bytes

torch = lazy_import("torch")


def trace_module(deploy: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """torch.jit.trace with the scan inlined; frozen (weights folded into constants, no training
    attributes) for inference."""
    with inline_scan(), torch.no_grad(), quiet_tracing():
        try:
            traced = torch.jit.trace(deploy, (example,), check_trace=False, strict=False)
            return torch.jit.freeze(traced.eval())
        except Exception as exc:  # noqa: BLE001 - tracing raises many types; all mean "export failed"
            raise TinyvimError(f"TorchScript tracing failed: {first_line(exc)}") from exc


def export_torchscript(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
                       log: Callable[[str], None] | None = None, **kwargs) -> ExportResult:
    """Trace and save to `output` (written atomically); kwargs as export_onnx's (fixed shape only)."""
    src = begin_export("torchscript", output, model, inputs, log, **kwargs)
    src.log(f"tracing with torch.jit.trace ({'x'.join(map(str, src.example.shape))})")
    module = trace_module(src.deploy, src.example)
    buffer = io.BytesIO()      # the archive's inner folder: torch's fixed name, not the temporary file's
    torch.jit.save(module, buffer, _extra_files={ARTIFACT_METADATA_NAME: metadata_text(src.metadata)})
    atomic_write_bytes(output, buffer.getvalue())
    counts: dict[str, int] = {}
    for node in module.inlined_graph.nodes():
        counts[node.kind()] = counts.get(node.kind(), 0) + 1
    return finish_export(src, output, (sum(counts.values()), dict(sorted(counts.items(), key=lambda kv: -kv[1]))))
