"""`build_engine` against a stand-in for the tensorrt module, recording the calls: checks the
builder recipe (flags, pinning, profile, timing cache, atomic outputs, sidecar) on machines
without TensorRT. It checks our use of the API, not TensorRT itself (GPU machines do that)."""
from __future__ import annotations

import enum
import json
import types

import onnx
import pytest

from tinyvim.contract import ExportMetadata
from tinyvim.engines import trt_build, trt_common


def fake_tensorrt(calls: list, parse_ok: bool = True):
    trt = types.SimpleNamespace(__version__="10.3.0.26", float32="float32")
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 BF16 TF32 OBEY_PRECISION_CONSTRAINTS")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NDCF", "STRONGLY_TYPED")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.LayerType = enum.Enum("LayerType", "CONVOLUTION UNARY ACTIVATION")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Layer:
        def __init__(self, name, kind):
            self.name, self.type, self.num_outputs, self.metadata = name, trt.LayerType[kind], 1, ""

        def set_output_type(self, i, t):
            calls.append(("output_type", self.name, t))

        def __setattr__(self, key, value):
            if key == "precision":
                calls.append(("precision", self.name, value))
            object.__setattr__(self, key, value)

    class Network:
        layers = [Layer("node_Conv_1", "CONVOLUTION"), Layer("op.out_norm/ReduceMean", "UNARY")]
        num_layers = 2

        def get_layer(self, i):
            return self.layers[i]

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return parse_ok

        def get_error(self, i):
            return types.SimpleNamespace(desc=lambda: "Plugin not found, are the plugin name, version correct?")

    class Cache:
        def serialize(self):
            return b"cache"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, f):
            calls.append(("set", f.name))

        def clear_flag(self, f):
            calls.append(("clear", f.name))

        def add_optimization_profile(self, p):
            calls.append(("profile", p.shapes))

        def create_timing_cache(self, blob):
            calls.append(("cache_in", blob))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    trt.init_libnvinfer_plugins = lambda logger, ns: True
    return trt


@pytest.fixture
def onnx_file(tmp_path):
    from test_engines_runners import tiny_onnx, tiny_torch
    path = tmp_path / "m.onnx"
    meta = ExportMetadata("s", input_size=(64, 64), batch=None).to_props()
    onnx.save(tiny_onnx(tiny_torch(), size=64, metadata=meta), path)
    return path


def _patch(monkeypatch, calls, parse_ok=True):
    monkeypatch.setattr(trt_common, "import_tensorrt", lambda: fake_tensorrt(calls, parse_ok))
    monkeypatch.setattr(trt_common, "gpu_info", lambda: {"name": "Fake GPU", "compute_capability": "9.0"})


def test_fp16_build_recipe_and_outputs(onnx_file, tmp_path, monkeypatch):
    calls = []
    _patch(monkeypatch, calls)
    (tmp_path / "t.cache").write_bytes(b"old")
    result = trt_build.build_engine(onnx_file, tmp_path / "out" / "m.engine", precision="fp16", min_batch=1,
                                    opt_batch=4, max_batch=8, workspace_mib=256, timing_cache=tmp_path / "t.cache",
                                    log=lambda s: None)
    assert ("network_flags", 0) in calls                      # weakly typed on TensorRT 10
    assert ("set", "FP16") in calls and ("set", "OBEY_PRECISION_CONSTRAINTS") in calls and ("clear", "TF32") in calls
    assert ("workspace", 256 << 20) in calls and ("cache_in", b"old") in calls
    assert ("precision", "op.out_norm/ReduceMean", "float32") in calls  # LayerNorm pinned (by name here)
    assert ("output_type", "op.out_norm/ReduceMean", "float32") in calls
    assert not any(c[0] == "precision" and c[1] == "node_Conv_1" for c in calls)
    assert ("profile", {"images": ([1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64])}) in calls
    assert result.engine_path.read_bytes() == b"ENGINE" and (tmp_path / "t.cache").read_bytes() == b"cache"
    side = json.loads(result.sidecar_path.read_text())
    assert side["tensorrt_version"] == "10.3.0.26" and side["gpu_name"] == "Fake GPU"
    assert side["precision"] == "fp16" and side["onnx_metadata"]["variant"] == "s"
    assert side["onnx"]["sha256"] == trt_common.sha256_file(onnx_file)


def test_parser_plugin_error_explains_fix(onnx_file, tmp_path, monkeypatch):
    calls = []
    _patch(monkeypatch, calls, parse_ok=False)
    with pytest.raises(trt_common.TinyvimError, match="--plugin PATH"):
        trt_build.build_engine(onnx_file, tmp_path / "m.engine", log=lambda s: None)
    assert not (tmp_path / "m.engine").exists()
