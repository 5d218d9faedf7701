"""`tinyvim export --fmt executorch`: an ExecuTorch program (.pte) for phones and embedded CPUs:
the ExportedProgram of --fmt pt2 (scan inlined) lowered to the edge dialect with the XNNPACK
partitioner, the rest left to ExecuTorch's portable kernels. Needs the optional extra
`tinyvim[executorch]`.

The tinyvim metadata travels inside the .pte as a constant method ARTIFACT_METADATA_METHOD
returning the JSON text as a uint8 tensor (a .pte has no free-form key/value section; a method
is what every ExecuTorch runtime can read), read back by tinyvim.backends.executorch.

`lowering_report` says how much XNNPACK took: its partitions (one delegate call each), the nodes
inside them, and the nodes left on portable kernels, by op."""
from __future__ import annotations

import contextlib
import io
import os
import re
from collections import Counter
from collections.abc import Callable


from tinyvim.contract import ARTIFACT_METADATA_METHOD, InputSpec, ModelSpec
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import ExportResult
from tinyvim.export.torch_program import (
    begin_export,
    export_program,
    finish_export,
    first_line,
    metadata_text,
    quiet_tracing,
)
from tinyvim.lazy import import_optional, lazy_import
from tinyvim.utils import atomic_write_bytes

torch = lazy_import("torch")

#: the edge-dialect call of a delegated partition
DELEGATE_CALL = "executorch_call_delegate"


def import_executorch():
    """(exir, XnnpackPartitioner), or one line naming the extra. torchao, which executorch
    imports, prints warnings about CUDA libraries on a CPU machine: kept out of our output."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        exir = import_optional("executorch.exir")
        xnnpack = import_optional("executorch.backends.xnnpack.partition.xnnpack_partitioner")
    return exir, xnnpack.XnnpackPartitioner


def metadata_tensor(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def op_name(target) -> str:
    """'aten.mean.dim' of an edge op (whose str() is '<EdgeOpOverload: aten.mean.dim>: schema = …')."""
    text = str(target)
    found = re.search(r"EdgeOpOverload: ([^>]+)>", text)
    return (found.group(1) if found else text).removeprefix("aten.")


def lowering_report(edge_program) -> dict:
    """{"partitions": n, "delegated_nodes": n, "portable_nodes": n, "portable_ops": {op: n}} of an
    edge ExportedProgram after to_edge_transform_and_lower."""
    graph = edge_program.graph
    partitions = [n for n in graph.nodes if n.op == "call_function" and DELEGATE_CALL in str(n.target)]
    delegated = 0
    for node in graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            module = getattr(edge_program.graph_module, node.target)
            delegated += sum(1 for n in module.original_module.graph.nodes if n.op == "call_function")
    portable = Counter(op_name(n.target) for n in graph.nodes
                       if n.op == "call_function" and DELEGATE_CALL not in str(n.target) and "getitem" not in str(n.target))
    return {"partitions": len(partitions), "delegated_nodes": delegated, "portable_nodes": sum(portable.values()),
            "portable_ops": dict(portable.most_common())}


def export_executorch(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
                      log: Callable[[str], None] | None = None, **kwargs) -> ExportResult:
    """Export, lower to XNNPACK and write the .pte to `output` (atomically; fixed shape). The
    ExportResult's op_counts start with the XNNPACK partitions and their nodes, then the ops left
    on portable kernels; num_nodes counts every node (delegated + portable)."""
    exir, XnnpackPartitioner = import_executorch()
    src = begin_export("executorch", output, model, inputs, log, **kwargs)
    src.log(f"exporting with torch.export ({'x'.join(map(str, src.example.shape))})")
    program = export_program(src.deploy, src.example)
    src.log("lowering to ExecuTorch (XNNPACK partitioner)")
    with quiet_tracing():
        try:
            edge = exir.to_edge_transform_and_lower(
                program, partitioner=[XnnpackPartitioner()],
                constant_methods={ARTIFACT_METADATA_METHOD: metadata_tensor(metadata_text(src.metadata))})
            report = lowering_report(edge.exported_program())
            buffer = edge.to_executorch().buffer
        except Exception as exc:  # noqa: BLE001 - the lowering raises many types
            raise TinyvimError(f"ExecuTorch lowering failed: {first_line(exc)}") from exc
    src.log(f"XNNPACK took {report['partitions']} partitions ({report['delegated_nodes']} nodes); "
            f"{report['portable_nodes']} nodes left on portable kernels")
    atomic_write_bytes(output, buffer)
    ops = {"xnnpack_partitions": report["partitions"], "xnnpack_nodes": report["delegated_nodes"],
           **report["portable_ops"]}
    return finish_export(src, output, (report["delegated_nodes"] + report["portable_nodes"], ops))
