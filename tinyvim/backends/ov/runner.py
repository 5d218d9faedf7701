"""OpenVINO runner: a portable ONNX export or an OpenVINO IR (.xml + .bin) on CPU or GPU.

Precision is always explicit. OpenVINO's own default on a CPU with AVX512-BF16 or AMX is
bf16 (it picks it silently, ~2e-3 error on TinyViM's logits), which would fail an fp32
comparison for a user who did not ask for it; here `--ov-precision` (f32 unless given) becomes
INFERENCE_PRECISION_HINT, and a precision the device does not list in its
OPTIMIZATION_CAPABILITIES is refused in one line. `--threads` becomes INFERENCE_NUM_THREADS
(CPU), `--ov-hint latency|throughput` PERFORMANCE_HINT, `--ov-device` the device.

Shapes (`--ov-shapes`): a model whose batch or image size is dynamic (a `--dynamic-batch` export)
is compiled for the shape it is fed, once per distinct input shape (`static`, the default), as
OpenVINO's benchmark_app does with -shape: the CPU plugin's kernels for a dynamic graph are slower
(measured on TinyViM-S int8, 2-core Zen 3: 16.7-19.9 ms static against 24.4-25.3 ms dynamic at
batch 1, ~5-13 % at batch 8). `dynamic` compiles the model as it is, once, for any shape. A model
with static shapes is compiled once either way.

The plugin flavour (custom CrossSelectiveScan node, in an ONNX or an IR exported from one) runs
with the tinyvim OpenVINO extension (tinyvim.plugins.ov_extension: our fast CPU scan as an op),
added to the Core whenever the model holds such nodes; the scan computes in fp32 whatever the hint.
`openvino` is imported when a runner activates (optional extra `tinyvim[openvino]`; backends/ov/loader.py).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping


from tinyvim.backends.base import BaseRunner
from tinyvim.backends.ov.loader import (
    DEFAULT_PRECISION,
    DEFAULT_SHAPES,
    OV_SHAPES,
    OV_PRECISIONS,
    compile_config,
    device_description,
    import_openvino,
    new_core,
    port_name,
    resolve_precision,
    supported_precisions,
)
from tinyvim.contract import check_input_size
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")


def _shape_text(shapes) -> str:
    """((1, 3, 224, 224),) -> '1x3x224x224' (inputs separated by spaces)."""
    return " ".join("x".join(map(str, s)) for s in shapes)


class OvRunner(BaseRunner):
    """Runs an ONNX file or an OpenVINO IR with openvino.Core.compile_model."""

    def __init__(self, model: str | os.PathLike, *, device: str | None = None, precision: str | None = None,
                 threads: int | None = None, hint: str | None = None, plugin_nodes: bool = False,
                 shapes: str | None = None, log=None, name: str = "ov"):
        super().__init__(name)
        self.model = os.fspath(model)
        self.device = (device or "CPU").upper()
        self.requested_precision = precision
        self.threads = threads
        self.hint = hint
        self.plugin_nodes = plugin_nodes
        self.shapes = (shapes or DEFAULT_SHAPES).lower()
        if self.shapes not in OV_SHAPES:
            raise TinyvimError(f"unknown OpenVINO shapes mode {shapes!r}; choose from {', '.join(OV_SHAPES)}")
        self.log = log
        self.precision: str | None = None           # resolved on activate
        self.config: dict = {}
        self._core = None
        self._model = None
        self._requests: dict = {}      # input shapes (None: any) -> infer request
        self._dynamic_size = False

    @property
    def compute_precision(self) -> str:
        """tinyvim's name of what it computes in (fp32, bf16, fp16): picks validate's tolerance."""
        return OV_PRECISIONS[self.precision or (self.requested_precision or DEFAULT_PRECISION).lower()][2]

    def activate_impl(self) -> None:
        ov = import_openvino()
        core = new_core(ov, self.model, self.plugin_nodes)
        available = core.available_devices
        if not any(d == self.device or d.startswith(self.device + ".") for d in available) and self.device != "AUTO":
            raise TinyvimError(f"OpenVINO device {self.device} is not available here; available: "
                               f"{', '.join(available) or 'none'}")
        probe = self.device if self.device != "AUTO" else "CPU"
        self.precision = resolve_precision(core, probe, self.requested_precision)
        if self.log:
            others = [p for p in supported_precisions(core, probe) if p != self.precision]
            self.log(f"OpenVINO {ov.__version__.split('-')[0]} on {probe} ({device_description(core, probe)}): "
                     f"computing in {self.precision}" + (f"; this device also supports {', '.join(others)} "
                                                         "(--ov-precision)" if others else ""))
        self.config = compile_config(self.device, self.precision, self.threads, self.hint)
        try:
            model = core.read_model(self.model)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            raise TinyvimError(f"OpenVINO could not read {self.model}: {error_reason(exc)}") from None
        self._core, self._model = core, model
        self._inputs = [port_name(i) for i in model.inputs]
        self._outputs = [port_name(o) for o in model.outputs]
        shape = model.inputs[0].get_partial_shape()
        self._dynamic_size = shape.rank.get_length() == 4 and (shape[2].is_dynamic or shape[3].is_dynamic)
        self._requests = {}
        if self.shapes == "dynamic" or all(i.get_partial_shape().is_static for i in model.inputs):
            self._requests[None] = self._compile(model)
        # else: compiled per input shape on first use (infer_impl)

    @property
    def compiled_shapes(self) -> list:
        """The input shapes compiled so far, in order (one tuple per input each), or [None]: the
        model compiled once for any shape."""
        return list(self._requests)

    def _compile(self, model, shapes: tuple | None = None):
        """An infer request of `model` compiled with this runner's config; reshaped to `shapes`
        (one per input) first when given."""
        try:
            if shapes is not None:
                model = model.clone()
                model.reshape({i: list(s) for i, s in enumerate(shapes)})
            return self._core.compile_model(model, self.device, self.config).create_infer_request()
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            at = f" for input shape {_shape_text(shapes)}" if shapes else ""
            raise TinyvimError(f"OpenVINO could not compile {self.model}{at}: {error_reason(exc)}") from None

    def _request_for(self, arrays: list) -> object:
        """The request that runs these inputs: the one compiled for any shape, else the one
        compiled for exactly their shapes (compiled now, the first time)."""
        if None in self._requests:
            return self._requests[None]
        key = tuple(tuple(a.shape) for a in arrays)
        if key not in self._requests:
            # only the model's dynamic dimensions may be fixed here: reshaping a static one would
            # run the graph at a size it was not exported for (compiled for any shape, OpenVINO
            # itself refuses such an input)
            ov = import_openvino()
            for port, shape in zip(self._model.inputs, key):
                if not port.get_partial_shape().compatible(ov.PartialShape(list(shape))):
                    raise TinyvimError(f"OpenVINO: {self.model} takes {port_name(port)} of shape "
                                       f"{port.get_partial_shape()}, got {_shape_text((shape,))}")
            if self.log:
                self.log(f"OpenVINO: compiling for input shape {_shape_text(key)} "
                         "(the model's shape is dynamic; --ov-shapes dynamic compiles it once for any shape)")
            self._requests[key] = self._compile(self._model, key)
        return self._requests[key]

    def deactivate_impl(self) -> None:
        self._requests = {}
        self._model = None
        self._core = None

    def infer_impl(self, feed: Mapping[str, np.ndarray]):
        arrays = {n: np.ascontiguousarray(feed[n], dtype=np.float32) for n in self._inputs}
        if self._dynamic_size:
            # the graph itself cannot say it: a size that is not a multiple of 32 would fail
            # deep inside it (or give wrong maps), so it is refused here in one line
            for a in arrays.values():
                check_input_size(*a.shape[2:])
        request = self._request_for(list(arrays.values()))
        start = time.perf_counter()
        try:
            results = request.infer(list(arrays.values()))     # by position: names may be merged
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            raise TinyvimError(f"OpenVINO failed to run {self.model}: {error_reason(exc)}") from None
        compute = time.perf_counter() - start
        outputs = {port_name(port): np.array(value, copy=True) for port, value in results.items()}
        return {n: outputs[n] for n in self._outputs}, {"compute": compute}
