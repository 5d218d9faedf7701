"""PyTorch 2 artifacts, each run by torch alone (no tinyvim model code): `pt2` (a torch.export
ExportedProgram), `aoti` (an AOTInductor package) and `torchscript` (a traced module), written by
`tinyvim export --fmt pt2|aoti|torchscript`."""
from __future__ import annotations

from collections.abc import Callable

from tinyvim.backends.pt2.model_file import read_aoti_info, read_pt2_info, read_torchscript_info
from tinyvim.backends.pt2.runner import ArtifactRunner
from tinyvim.backends.spec import Backend, RunnerRequest


def _factory(kind: str) -> Callable[[RunnerRequest], ArtifactRunner]:
    def make(req: RunnerRequest) -> ArtifactRunner:
        return ArtifactRunner(req.model.path, kind, threads=req.threads, output_names=req.model.output_names,
                              name=kind)
    return make


def _declare(kind: str, summary: str, reader) -> Backend:
    return Backend(kind, summary, _factory(kind), model_kinds=(kind,), default_for=(kind,),
                   missing_model_hint=f"export one with `tinyvim export --fmt {kind}`", readers={kind: reader})


BACKENDS = (
    _declare("pt2", "torch.export ExportedProgram (.pt2): torch.export.load, eager aten ops", read_pt2_info),
    _declare("aoti", "AOTInductor package (.pt2): compiled C++ kernels for this CPU", read_aoti_info),
    _declare("torchscript", "traced TorchScript module (.torchscript): torch.jit.load", read_torchscript_info),
)
