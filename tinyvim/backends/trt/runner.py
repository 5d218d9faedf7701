"""TensorRT runner: deserializes an engine built by `tinyvim build-engine` (through Polygraphy's
EngineFromBytes, after the sidecar check and the plugin registration) and runs it with the
named-tensor API (set_input_shape / set_tensor_address / execute_async_v3).

Device buffers, the stream and the timing events come from torch.cuda (torch imported on first use, tinyvim.lazy), so
no extra CUDA binding is needed. Each call is timed like trtexec: host-to-device copy, compute
and device-to-host copy separately, with CUDA events on the runner's stream. Optionally the
compute part is captured once per input shape into a CUDA graph and replayed (removes the
per-layer launch overhead, which matters at batch 1).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING
from collections.abc import Mapping


from tinyvim.backends.base import BaseRunner
from tinyvim.backends.trt.common import (
    check_plugin_file,
    default_plugin_path,
    gpu_info,
    import_polygraphy,
    import_tensorrt,
    polygraphy_messages,
    register_plugin_library,
)
from tinyvim.backends.trt.sidecar import check_sidecar as check_sidecar_against
from tinyvim.backends.trt.sidecar import read_sidecar
from tinyvim.contract import PLUGIN_SCAN
from tinyvim.errors import TinyvimError
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")

if TYPE_CHECKING:   # annotations only; imported lazily where used
    import tensorrt as trt
    import torch


def load_engine(engine_path: str | os.PathLike, *, plugin: str | os.PathLike | None = None,
                check_sidecar: bool = True, log=print):
    """(tensorrt module, ICudaEngine) for an engine built by `tinyvim build-engine`.

    Checks the sidecar against this TensorRT and GPU first, registers the scan plugin before
    deserializing (an explicit `plugin`, else the library the engine was built with, else the
    default build for a plugin-flavour model), then deserializes with Polygraphy's
    EngineFromBytes. One-line TinyvimError on every expected failure."""
    engine_path = os.fspath(engine_path)
    if not os.path.isfile(engine_path):
        raise TinyvimError(f"{engine_path}: no such file")
    if plugin is not None:             # the user's path is checked before TensorRT is needed
        plugin = check_plugin_file(plugin)
    trt = import_tensorrt()
    poly = import_polygraphy()
    from polygraphy.exception import PolygraphyException
    sidecar = read_sidecar(engine_path) if check_sidecar else None
    if sidecar is not None:
        errors, warnings = check_sidecar_against(sidecar, trt_version=trt.__version__, gpu=gpu_info())
        if errors:
            raise TinyvimError("; ".join(errors))
        for w in warnings:
            log(f"warning: {w}")
    recorded = sidecar.plugin if sidecar is not None else None
    if plugin is not None:
        register_plugin_library(trt, plugin)
    elif recorded and os.path.isfile(recorded):
        register_plugin_library(trt, recorded)
    elif recorded or (sidecar is not None and sidecar.metadata is not None and sidecar.metadata.scan == PLUGIN_SCAN):
        register_plugin_library(trt, default_plugin_path())
    with open(engine_path, "rb") as f:
        data = f.read()
    with polygraphy_messages(log) as messages:
        try:
            engine: trt.ICudaEngine = poly.EngineFromBytes(data)()
        except PolygraphyException as exc:
            detail = "; ".join(messages) or str(exc)
            raise TinyvimError(f"TensorRT could not deserialize {engine_path}: {detail} (if it names a missing "
                               "plugin creator, pass the scan plugin with --plugin)") from None
    return trt, engine


class TrtRunner(BaseRunner):
    """Runs a serialized TensorRT engine; the scan plugin is registered before deserializing."""

    _engine: trt.ICudaEngine
    _context: trt.IExecutionContext

    def __init__(self, engine_path: str | os.PathLike, *, plugin: str | os.PathLike | None = None,
                 cuda_graph: bool = False, check_sidecar: bool = True, name: str = "trt",
                 log=print):
        super().__init__(name)
        self.engine_path = os.fspath(engine_path)
        self.plugin = plugin
        self.cuda_graph = cuda_graph
        self.check_sidecar = check_sidecar
        self.log = log

    def activate_impl(self) -> None:
        import torch

        self._trt, self._engine = load_engine(self.engine_path, plugin=self.plugin, check_sidecar=self.check_sidecar,
                                              log=self.log)
        trt = self._trt
        self._torch = torch
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._stream = torch.cuda.Stream()
        self._buffers: dict[str, torch.Tensor] = {}
        self._host_buffers: dict[str, torch.Tensor] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def deactivate_impl(self) -> None:
        self._graphs = {}
        self._buffers = {}
        self._host_buffers = {}
        self._context = None
        self._engine = None

    def _torch_dtype(self, name: str):
        trt = self._trt
        np_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
        return {np.dtype(np.float32): self._torch.float32, np.dtype(np.float16): self._torch.float16,
                np.dtype(np.int32): self._torch.int32, np.dtype(np.int64): self._torch.int64}[np_dtype]

    def _buffer(self, name: str, shape: tuple) -> torch.Tensor:
        # Reuse device buffers while the shape is unchanged: the addresses then stay valid
        # for a captured CUDA graph too.
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf = self._torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self._buffers[name] = buf
            self._graphs.clear()
        return buf

    def _host(self, name: str, like: torch.Tensor) -> torch.Tensor:
        # Pinned (page-locked) staging buffers, as trtexec uses: only these make the
        # copies truly asynchronous and their timings comparable.
        buf = self._host_buffers.get(name)
        if buf is None or buf.shape != like.shape:
            buf = self._torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
            self._host_buffers[name] = buf
        return buf

    def infer_impl(self, feed: Mapping[str, np.ndarray]):
        torch = self._torch
        shapes = {}
        for name in self._inputs:
            shape = tuple(feed[name].shape)
            if not self._context.set_input_shape(name, shape):
                lo, opt, hi = self._engine.get_tensor_profile_shape(name, 0)
                raise TinyvimError(f"input {name} shape {list(shape)} is outside the engine's profile "
                                   f"(min {list(lo)}, max {list(hi)}): rebuild it with other --min-shape / "
                                   "--max-shape (or --min-batch / --max-batch)")
            shapes[name] = shape
        dev_in = {n: self._buffer(n, shapes[n]) for n in self._inputs}
        dev_out = {n: self._buffer(n, tuple(self._context.get_tensor_shape(n))) for n in self._outputs}
        for n, t in {**dev_in, **dev_out}.items():
            self._context.set_tensor_address(n, t.data_ptr())
        host_in = {}
        for n in self._inputs:  # host-side conversion and staging are not part of the timed copy
            host_in[n] = self._host(n, dev_in[n])
            host_in[n].copy_(torch.from_numpy(np.ascontiguousarray(feed[n])))
        host_out = {n: self._host(n, t) for n, t in dev_out.items()}

        e0, e1, e2, e3 = self._events
        stream = self._stream
        with torch.cuda.stream(stream):
            e0.record(stream)
            for n in self._inputs:
                dev_in[n].copy_(host_in[n], non_blocking=True)
            e1.record(stream)
            self._execute(stream, tuple(shapes.items()))
            e2.record(stream)
            for n in self._outputs:
                host_out[n].copy_(dev_out[n], non_blocking=True)
            e3.record(stream)
        stream.synchronize()
        outputs = {n: host_out[n].float().numpy().copy() for n in self._outputs}
        ms = 1e-3
        phases = {"h2d": e0.elapsed_time(e1) * ms, "compute": e1.elapsed_time(e2) * ms,
                  "d2h": e2.elapsed_time(e3) * ms}
        return outputs, phases

    def _execute(self, stream, key: tuple) -> None:
        if not self.cuda_graph:
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise TinyvimError("TensorRT execute_async_v3 failed (see the TensorRT messages above)")
            return
        graph = self._graphs.get(key)
        if graph is None:
            # One ordinary launch first: TensorRT does shape-dependent setup on the first
            # enqueue, which must not be captured.
            self._context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            graph = self._torch.cuda.CUDAGraph()
            with self._torch.cuda.graph(graph, stream=stream):
                self._context.execute_async_v3(stream.cuda_stream)
            self._graphs[key] = graph
        graph.replay()
