"""Helpers of the Triton tests: a stand-in ONNX with TinyViM's signature and metadata (the
repository writer reads only those), and process checks that see through zombies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tinyvim.contract import INPUT_NAME, ExportMetadata

SIZE_64 = (64, 64)


def stand_in_onnx(path: Path, *, batch: int | None = None, scan: str = "portable") -> Path:
    """images (B, 3, 64, 64) -> logits (B, 1000) through GlobalAveragePool + Gemm, with the
    metadata a TinyViM export carries."""
    b = batch if batch is not None else "batch"
    w = helper.make_tensor("w", TensorProto.FLOAT, (3, 1000), np.ones(3000, np.float32))
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"])],
        "stand_in", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, (b, 3, *SIZE_64))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, (b, 1000))], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    meta = ExportMetadata(variant="s", input_size=SIZE_64, batch=batch, scan=scan)
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def running(pid: int) -> bool:
    """Is `pid` a live process? A zombie (exited, not yet reaped by whoever adopted it) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def fake_export(monkeypatch, calls: list | None = None):
    """Make tinyvim.export.export_onnx write the stand-in (batch and scan as asked) instead of
    tracing TinyViM: `export --fmt triton` runs in milliseconds. `calls` collects the kwargs."""
    import tinyvim.export
    import tinyvim.serve.repository

    def export_onnx(path, model=None, inputs=None, *, log=None, **kwargs):
        if calls is not None:
            calls.append({"model": model, "inputs": inputs, **kwargs})
        return stand_in_onnx(Path(path), batch=inputs.batch, scan=kwargs.get("scan", "portable"))

    monkeypatch.setattr(tinyvim.export, "export_onnx", export_onnx)
    monkeypatch.setattr(tinyvim.serve.repository, "export_onnx", export_onnx)   # imported there at module top


def hidden_entries(folder: Path) -> list[str]:
    """Hidden files and folders anywhere under `folder` (staging folders, temporaries)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))
