"""PyTorch runner: the reference (`torch`: unfused model, sequential scan, i.e. the original
computation) and the fast eager path (`torch-fused`: re-parameterized model, parallel scan)."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence


from tinyvim import contract
from tinyvim.backends.base import BaseRunner
from tinyvim.backends.torch.loader import tinyvim_loader
from tinyvim.errors import TinyvimError
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
torch = lazy_import("torch")
ops = lazy_import("tinyvim.ops")

#: backend name -> (fuse the model?, scan implementation). "auto" is the parallel scan on
#: the CPU and our CUDA kernel on a GPU where it is built.
TORCH_BACKENDS = {"torch": (False, "sequential"), "torch-fused": (True, "auto")}


class TorchRunner(BaseRunner):
    """Runs an nn.Module (or a loader returning one) on CPU in float32 under inference_mode.

    `scan` selects the scan implementation for the duration of each call; `threads` sets
    torch's intra-op threads while the runner is active (restored on deactivate)."""

    def __init__(self, model_or_loader, *, scan: str = "sequential", threads: int | None = None,
                 input_names: Sequence[str] = ("images",), output_names: Sequence[str] = ("logits",),
                 name: str = "torch"):
        super().__init__(name)
        self._source = model_or_loader
        self.scan = scan
        self.threads = threads
        self._inputs = list(input_names)
        self._outputs = list(output_names)
        self._model = None
        self._saved_threads: int | None = None

    @classmethod
    def for_backend(cls, backend: str, spec: contract.ModelSpec, *, threads: int | None = None) -> TorchRunner:
        """`torch` (reference) or `torch-fused` runner for the model `spec` names."""
        if backend not in TORCH_BACKENDS:
            raise TinyvimError(f"unknown torch backend {backend!r}; choose {', '.join(TORCH_BACKENDS)}")
        fused, scan = TORCH_BACKENDS[backend]
        return cls(tinyvim_loader(spec, fused=fused), scan=scan, threads=threads,
                   output_names=contract.output_names(spec.backbone),
                   name=backend)

    def activate_impl(self) -> None:
        self._saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        model = self._source if isinstance(self._source, torch.nn.Module) else self._source()
        self._model = model.eval().float()

    def deactivate_impl(self) -> None:
        self._model = None
        if self._saved_threads:
            torch.set_num_threads(self._saved_threads)

    def infer_impl(self, feed: Mapping[str, np.ndarray]):
        args = [torch.from_numpy(np.ascontiguousarray(feed[n], dtype=np.float32)) for n in self._inputs]
        start = time.perf_counter()
        with torch.inference_mode(), ops.scan_implementation(self.scan):
            result = self._model(*args)
        compute = time.perf_counter() - start
        tensors = [result] if isinstance(result, torch.Tensor) else list(result)
        if len(tensors) != len(self._outputs):
            raise TinyvimError(f"runner {self.name!r}: model returned {len(tensors)} outputs, "
                               f"expected {len(self._outputs)} ({', '.join(self._outputs)})")
        outputs = {n: t.detach().float().numpy() for n, t in zip(self._outputs, tensors)}
        return outputs, {"compute": compute}
