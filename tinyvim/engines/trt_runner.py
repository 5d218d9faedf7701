"""TensorRT runner: deserialises an engine built by `tinyvim build-engine` and runs it with the
named-tensor API (set_input_shape / set_tensor_address / execute_async_v3).

Device buffers, the stream and the timing events come from torch.cuda (imported lazily), so
no extra CUDA binding is needed. Each call is timed like trtexec: host-to-device copy, compute
and device-to-host copy separately, with CUDA events on the runner's stream. Optionally the
compute part is captured once per input shape into a CUDA graph and replayed (removes the
per-layer launch overhead, which matters at batch 1).
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from tinyvim.engines.base import BaseRunner
from tinyvim.errors import TinyvimError


class TrtRunner(BaseRunner):
    """Runs a serialized TensorRT engine; the scan plugin is loaded before deserialising."""

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
        from tinyvim.engines.trt_common import (check_sidecar, default_plugin_path, gpu_info, import_tensorrt,
                                                load_plugin_library, read_sidecar)

        if not os.path.isfile(self.engine_path):
            raise TinyvimError(f"{self.engine_path}: no such file")
        trt = import_tensorrt()
        gpu = gpu_info()
        sidecar = read_sidecar(self.engine_path) if self.check_sidecar else {}
        if sidecar:
            errors, warnings = check_sidecar(sidecar, trt_version=trt.__version__, gpu=gpu)
            if errors:
                raise TinyvimError("; ".join(errors))
            for w in warnings:
                self.log(f"warning: {w}")
        # The plugin must be registered before deserialising: an explicit --plugin, else the
        # library the engine was built with, else tinyvim.plugins' default for plugin graphs.
        recorded = sidecar.get("plugin")
        if self.plugin is not None:
            load_plugin_library(self.plugin)
        elif recorded and os.path.isfile(recorded):
            load_plugin_library(recorded)
        elif recorded or sidecar.get("onnx_metadata", {}).get("scan") == "plugin":
            load_plugin_library(default_plugin_path())
        import torch

        self._torch = torch
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        with open(self.engine_path, "rb") as f:
            self._engine = self._runtime.deserialize_cuda_engine(f.read())
        if self._engine is None:
            raise TinyvimError(f"TensorRT could not deserialise {self.engine_path} (if it says "
                               "'IPluginCreator not found', pass the scan plugin with --plugin)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._stream = torch.cuda.Stream()
        self._buffers: dict[str, "torch.Tensor"] = {}
        self._host_buffers: dict[str, "torch.Tensor"] = {}
        self._graphs: dict[tuple, "torch.cuda.CUDAGraph"] = {}
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def deactivate_impl(self) -> None:
        self._graphs = {}
        self._buffers = {}
        self._host_buffers = {}
        self._context = None
        self._engine = None
        self._runtime = None

    def _torch_dtype(self, name: str):
        np_dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        return {np.dtype(np.float32): self._torch.float32, np.dtype(np.float16): self._torch.float16,
                np.dtype(np.int32): self._torch.int32, np.dtype(np.int64): self._torch.int64}[np_dtype]

    def _buffer(self, name: str, shape: tuple) -> "torch.Tensor":
        # Reuse device buffers while the shape is unchanged: the addresses then stay valid
        # for a captured CUDA graph too.
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf = self._torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self._buffers[name] = buf
            self._graphs.clear()
        return buf

    def _host(self, name: str, like: "torch.Tensor") -> "torch.Tensor":
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
                                   f"(min {list(lo)}, max {list(hi)}): rebuild with other --min/--max-batch")
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
