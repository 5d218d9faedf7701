"""A recording stand-in for the `tensorrt` module, for machines without TensorRT.

`make(version, events)` returns a module object with just the names our code and Polygraphy's
loaders touch on the build-engine and engine-loading paths, each one spelled as in the real
bindings of that version (test_trt_python_api.py checks every name `names()` lists against
TensorRT 10.16's and 11.1's pybind sources). Calls that matter are appended to `events` in
order: ("load_library", path), ("parse", path), ("network_flags", n), ("set_flag", NAME),
("clear_flag", NAME), ("precision", layer), ("output_type", layer, index), ("profile", name,
min, opt, max), ("pool_limit", NAME, bytes), ("timing_cache_in", bytes),
("builder_optimization_level", n), ("progress_monitor",), ("build",), ("deserialize", bytes).

The ONNX parser reads the model: one layer per node (the node's name, a layer type from its op
type), and a custom node needs its creator in the plugin registry (op_type + plugin_version +
plugin_namespace), as in TensorRT's parser; otherwise it fails with the parser's message."""
from __future__ import annotations

import enum
import inspect
import types

import onnx

_LAYER_OF_OP = {"Conv": "CONVOLUTION", "Softplus": "ACTIVATION", "Relu": "ACTIVATION", "Gelu": "ACTIVATION",
                "ReduceMean": "REDUCE", "Exp": "UNARY", "LayerNormalization": "NORMALIZATION",
                "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE"}
_ACTIVATION_OF_OP = {"Softplus": "SOFTPLUS", "Relu": "RELU", "Gelu": "GELU_ERF"}


def make(version: str, events: list, *, refuse_libraries: bool = False):
    """The fake module; `refuse_libraries`: load_library returns None (an old plugin build)."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    flags = "TF32" if major >= 11 else "FP16 BF16 INT8 FP8 TF32 OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS"
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", "WORKSPACE")
    trt.LayerType = enum.IntEnum("LayerType", "CONVOLUTION ACTIVATION REDUCE UNARY NORMALIZATION PLUGIN_V3 SHAPE "
                                              "ELEMENTWISE QUANTIZE DEQUANTIZE")
    trt.ActivationType = enum.IntEnum("ActivationType", "RELU SOFTPLUS GELU_ERF")
    trt.DeviceType = enum.IntEnum("DeviceType", "GPU DLA")
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", "LAYER_NAMES_ONLY DETAILED NONE")
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.DataType = enum.IntEnum("DataType", "FLOAT HALF")
    trt.float32 = trt.DataType.FLOAT
    registry_creators: set[tuple[str, str, str]] = set()

    class ILogger:
        def __init__(self):
            pass

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class IProgressMonitor:
        def __init__(self):
            pass

    class ITensor:
        def __init__(self, name, shape):
            self.name, self.shape, self.is_shape_tensor, self.dtype = name, tuple(shape), False, trt.float32

    class ILayer:
        def __init__(self, node):
            self.name, self.metadata, self.num_outputs = node.name, f"[ONNX Layer: {node.name}]", 1
            self.type = trt.LayerType[_LAYER_OF_OP.get(node.op_type, "PLUGIN_V3" if node.domain else "ELEMENTWISE")]
            self._activation = _ACTIVATION_OF_OP.get(node.op_type)

        if major < 11:   # per-layer precision exists in 10.x only
            precision_is_set = False

            @property
            def precision(self):
                return trt.float32

            @precision.setter
            def precision(self, value):
                events.append(("precision", self.name))

            def set_output_type(self, index, dtype):
                events.append(("output_type", self.name, index))

    class IActivationLayer(ILayer):
        """Viewing an ILayer as this (layer.__class__ = ...) shows its ActivationType as .type."""
        type = property(lambda self: trt.ActivationType[self._activation])

    class INetworkDefinition:
        def __init__(self):
            self.layers, self.inputs = [], []

        num_layers = property(lambda self: len(self.layers))
        num_inputs = property(lambda self: len(self.inputs))

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return self.inputs[i]

        def __len__(self):
            return len(self.layers)

        def __getitem__(self, i):
            return self.layers[i]

    class ParserError:
        def __init__(self, text):
            self._text = text

        def desc(self):
            return self._text

        def __str__(self):
            return f"In node 0 (importFallbackPluginImporter): UNSUPPORTED_NODE: {self._text}"

    class OnnxParser:
        def __init__(self, network, logger):
            self._network, self._errors = network, []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, i):
            return self._errors[i]

        def parse_from_file(self, path):
            events.append(("parse", path))
            graph = onnx.load(path, load_external_data=False).graph
            for node in graph.node:
                if node.domain not in ("", "ai.onnx"):
                    attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
                    key = (node.op_type, attrs.get("plugin_version", "1"), attrs.get("plugin_namespace", ""))
                    if key not in registry_creators:
                        self._errors.append(ParserError("Plugin not found, are the plugin name, version, and "
                                                        "namespace correct?"))
                        return False
                self._network.layers.append(ILayer(node))
            for i in graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
                self._network.inputs.append(ITensor(i.name, dims))
            return True

    class IOptimizationProfile:
        def set_shape(self, name, min, opt, max):
            events.append(("profile", name, list(min), list(opt), list(max)))

        def __bool__(self):
            return True

    class ITimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timings"

    class IBuilderConfig:
        DLA_core = -1
        default_device_type = trt.DeviceType.GPU
        profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY

        def __init__(self):
            self._flags, self._cache, self._profiles = {f: f.name == "TF32" for f in trt.BuilderFlag}, None, 0

        def set_flag(self, flag):
            events.append(("set_flag", flag.name))
            self._flags[flag] = True

        def clear_flag(self, flag):
            events.append(("clear_flag", flag.name))
            self._flags[flag] = False

        def get_flag(self, flag):
            return self._flags[flag]

        def add_optimization_profile(self, profile):
            self._profiles += 1

        num_optimization_profiles = property(lambda self: self._profiles)

        def set_memory_pool_limit(self, pool, size):
            events.append(("pool_limit", pool.name, size))

        def get_memory_pool_limit(self, pool):
            return 0

        def create_timing_cache(self, blob):
            if blob:
                events.append(("timing_cache_in", bytes(blob)))
            return ITimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self._cache = cache

        def get_timing_cache(self):
            return self._cache

        def __setattr__(self, key, value):
            if key in ("builder_optimization_level",):
                events.append((key, value))
            elif key == "progress_monitor":
                assert isinstance(value, IProgressMonitor)
                events.append((key,))
            object.__setattr__(self, key, value)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            events.append(("network_flags", flags))
            return INetworkDefinition()

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            events.append(("build",))
            return b"ENGINE"

    class ICudaEngine:
        num_io_tensors = 0

    class Runtime:
        engine_host_code_allowed = False

        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            events.append(("deserialize", bytes(data)))
            return ICudaEngine() if bytes(data) == b"ENGINE" else None

    class IPluginRegistry:
        def load_library(self, plugin_path):
            events.append(("load_library", plugin_path))
            if refuse_libraries:
                return None
            registry_creators.add(("CrossSelectiveScan", "1", "tinyvim"))
            return object()

        def get_creator(self, type, version, plugin_namespace=""):
            return object() if (type, version, plugin_namespace) in registry_creators else None

    registry = IPluginRegistry()
    for cls in (ILogger, Logger, IProgressMonitor, ITensor, ILayer, IActivationLayer, INetworkDefinition, ParserError,
                OnnxParser, IOptimizationProfile, ITimingCache, IBuilderConfig, Builder, ICudaEngine, Runtime,
                IPluginRegistry):
        setattr(trt, cls.__name__, cls)
    trt.get_plugin_registry = lambda: registry
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.nptype = lambda t: {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}[t]
    return trt


def names(trt) -> list[tuple[str, str]]:
    """(class or '' for the module, name) for every public name the fake defines."""
    out = []
    for name, value in vars(trt).items():
        if name.startswith("_") and name != "__version__":
            continue
        out.append(("", name))
        if isinstance(value, enum.EnumMeta):
            out += [(name, member) for member in value.__members__]
        elif inspect.isclass(value):
            out += [(name, attr) for attr in vars(value) if not attr.startswith("_")]
    return out
