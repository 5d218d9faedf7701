"""ONNX Runtime runner: providers, intra-op threads, graph optimisation level, and no idle
spinning (ORT's spinning worker threads otherwise steal the cores from whatever runs next in
the process, which corrupts back-to-back benchmarks such as `tinyvim profile` runs).

A plugin-flavour graph (custom tinyvim::CrossSelectiveScan node) runs through the CPU
custom-op path of tinyvim.backends.ort.custom_ops (onnxruntime-extensions): by default our fast
compiled scan, a speed worth timing; with TINYVIM_ORT_SCAN=reference the PyTorch scan, right for
checks and meaningless for timing, so profiling refuses that route."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence


from tinyvim.backends.base import BaseRunner
from tinyvim.backends.model_file import has_plugin_nodes
from tinyvim.backends.ort.custom_ops import plugin_session, scan_route
from tinyvim.backends.ort.loader import OPT_LEVELS, import_onnxruntime, parse_providers
from tinyvim.contract import PLUGIN_SCAN, SCAN_PLUGIN, ScanFlavour
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
onnx = lazy_import("onnx")

#: input type -> the numpy dtype fed to it (by name: numpy is imported on first use)
_ORT_TO_NUMPY = {"tensor(float)": "float32", "tensor(float16)": "float16",
                 "tensor(double)": "float64", "tensor(bfloat16)": "float32"}


class OrtRunner(BaseRunner):
    """Runs an ONNX file (or serialized bytes) with onnxruntime."""

    def __init__(self, model: str | os.PathLike | bytes, *, providers: str | Sequence[str] | None = None,
                 threads: int | None = None, optimization_level: str = "all", allow_plugin_cpu: bool = True,
                 scan: ScanFlavour | None = None, name: str = "ort"):
        super().__init__(name)
        if optimization_level not in OPT_LEVELS:
            raise TinyvimError(f"unknown graph optimisation level {optimization_level!r}; "
                               f"choose {', '.join(OPT_LEVELS)}")
        self.model = model
        self.providers = parse_providers(providers)
        self.threads = threads
        self.optimization_level = optimization_level
        self.allow_plugin_cpu = allow_plugin_cpu
        #: the file's scan flavour when the caller read it (ModelInfo.scan); None: read here
        self.scan = scan
        self.uses_plugin_cpu = False
        self._session = None
        self._input_dtypes: dict[str, type] = {}

    def session_options(self):
        ort = import_onnxruntime()
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[self.optimization_level])
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        # One graph, run sequentially: inter-op parallelism only adds threads that compete.
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def _has_plugin_nodes(self) -> bool:
        if self.scan is not None:
            return self.scan == PLUGIN_SCAN
        try:
            proto = (onnx.load_from_string(self.model) if isinstance(self.model, bytes)
                     else onnx.load(os.fspath(self.model), format="protobuf", load_external_data=False))
        except Exception:  # let ORT report unreadable files in its own words
            return False
        return has_plugin_nodes(proto.graph)

    def activate_impl(self) -> None:
        ort = import_onnxruntime()
        available = ort.get_available_providers()
        unknown = [p for p in self.providers if p not in available]
        if unknown:
            raise TinyvimError(f"ONNX Runtime provider(s) {', '.join(unknown)} not available in this "
                               f"onnxruntime build; available: {', '.join(available)}")
        self.uses_plugin_cpu = self._has_plugin_nodes()
        if self.uses_plugin_cpu and not self.allow_plugin_cpu and scan_route() == "reference":
            raise TinyvimError(
                f"this ONNX graph contains the custom {SCAN_PLUGIN.onnx_domain}::{SCAN_PLUGIN.op_type} node (exported with "
                "--scan plugin) and TINYVIM_ORT_SCAN=reference runs it in PyTorch, too slow to time: unset "
                "TINYVIM_ORT_SCAN (the fast CPU scan), use --backend trt with an engine built from it, or export "
                "with --scan portable")
        model = self.model if isinstance(self.model, bytes) else os.fspath(self.model)
        try:
            if self.uses_plugin_cpu:
                session = self._plugin_session(model)
            else:
                session = ort.InferenceSession(model, sess_options=self.session_options(), providers=self.providers)
        except TinyvimError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TinyvimError(f"ONNX Runtime could not load the model: {first}") from exc
        self._session = session
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        wrong = [f"{i.name} is {i.type}" for i in self._session.get_inputs() if i.type not in _ORT_TO_NUMPY]
        if wrong:     # a foreign graph: said here, not as ONNX Runtime's error at the first inference
            self._session = None
            raise TinyvimError(f"{self.model if not isinstance(self.model, bytes) else 'the model'}: input "
                               f"{', '.join(wrong)}; TinyViM exports take float images (tensor(float) or "
                               "tensor(float16)): re-export it with `tinyvim export`")
        self._input_dtypes = {i.name: np.dtype(_ORT_TO_NUMPY[i.type]) for i in self._session.get_inputs()}

    def _plugin_session(self, model):
        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        return plugin_session(model, sess_options=self.session_options(), providers=self.providers)

    def deactivate_impl(self) -> None:
        self._session = None

    def infer_impl(self, feed: Mapping[str, np.ndarray]):
        # Cast to the graph's input type (an fp16 export takes float16 images).
        cast = {n: np.ascontiguousarray(feed[n], dtype=self._input_dtypes[n]) for n in self._inputs}
        start = time.perf_counter()
        try:
            results = self._session.run(self._outputs, cast)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind errors (Fail, InvalidArgument, RuntimeException...)
            raise TinyvimError(f"ONNX Runtime failed to run the model: {error_reason(exc)}") from None
        compute = time.perf_counter() - start
        return dict(zip(self._outputs, results)), {"compute": compute}
