"""Triton python-backend model for a TinyViM export: runs the portable ONNX beside this file
with ONNX Runtime (or OpenVINO), one call per batch the dynamic batcher hands over.

`tinyvim export --fmt triton --triton-backend python` copies this file into a model repository
as `<model>/<version>/model.py`. It runs inside Triton's Python stub with the server's Python,
which needs numpy and onnxruntime (or openvino) importable; `tinyvim serve` starts the server
so that the stub's Python is the virtual environment tinyvim runs in.

This file cannot import tinyvim (any Triton may serve the repository): the parameter names it
reads below are declared in tinyvim.contract.TRITON_PYTHON_PARAMS, and a test holds them equal.

Tensors cross the stub boundary through DLPack, not pb_utils' numpy bridge: the stub shipped
with Triton 2.51 reads numpy 1's array-descriptor layout, so under numpy 2 `as_numpy()` returns
wrong values and `Tensor(name, array)` a wrong size (seen on this project's machines). DLPack
carries dtype, shape and strides itself and works with numpy 1 and 2.

Outputs go through the capsule, not the array: `Tensor.from_dlpack` takes the array's
DLPack capsule and marks it consumed by renaming it 'used_dlpack', where the DLPack protocol
(and numpy's capsule destructor) expects 'used_dltensor'. numpy then takes the capsule for
unconsumed and logs a 5-line `PyCapsule_GetPointer called with incorrect name` traceback per
output tensor - into the server log, for every request. Renaming the capsule as the protocol
says once the stub owns the tensor keeps numpy's destructor off it (the stub frees it through
the tensor's own deleter, as before).
"""
import ctypes
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

PARAM_RUNTIME = "runtime"
PARAM_ONNX_FILE = "onnx_file"
PARAM_THREADS = "intra_op_thread_count"

#: PyCapsule_SetName keeps the pointer, not a copy: the name must live as long as the module
_CONSUMED = ctypes.create_string_buffer(b"used_dltensor")
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_set_name.restype = ctypes.c_int


def _output_tensor(name, array):
    """pb_utils.Tensor holding `array` (C-contiguous), handed over through its DLPack capsule."""
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _capsule_set_name(capsule, _CONSUMED)      # the stub owns it now (see the module docstring)
    return tensor


def _ort_runner(path, threads, gpu, device_id):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Several instances share the cores: idle ORT workers must not spin on them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ([("CUDAExecutionProvider", {"device_id": device_id})] if gpu else []) + ["CPUExecutionProvider"]
    session = ort.InferenceSession(path, sess_options=options, providers=providers)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    return output_names, lambda images: session.run(output_names, {input_name: images})


def _openvino_runner(path, threads, gpu, device_id):
    import openvino as ov

    # f32: OpenVINO's CPU default on bf16-capable CPUs is bf16 (~2e-3 off the fp32 export).
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(path, f"GPU.{device_id}" if gpu else "CPU", config)
    output_names = [o.get_any_name() for o in compiled.outputs]

    def run(images):
        result = compiled(images)
        return [np.asarray(result[o]) for o in compiled.outputs]
    return output_names, run


_RUNTIMES = {"onnxruntime": _ort_runner, "openvino": _openvino_runner}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        runtime = params.get(PARAM_RUNTIME, "onnxruntime")
        if runtime not in _RUNTIMES:
            raise pb_utils.TritonModelException(
                f"parameter {PARAM_RUNTIME}={runtime!r}: choose {', '.join(_RUNTIMES)}")
        path = os.path.join(args["model_repository"], args["model_version"], params.get(PARAM_ONNX_FILE, "model.onnx"))
        gpu = args.get("model_instance_kind") == "GPU"
        device_id = int(args.get("model_instance_device_id") or 0)
        names, self._run = _RUNTIMES[runtime](path, int(params.get(PARAM_THREADS) or 0), gpu, device_id)
        self._input_name = config["input"][0]["name"]
        self._output_names = [o["name"] for o in config["output"]]
        if sorted(names) != sorted(self._output_names):
            raise pb_utils.TritonModelException(
                f"config.pbtxt outputs {self._output_names} are not the ONNX's outputs {names}")
        self._order = [names.index(n) for n in self._output_names]

    def execute(self, requests):
        # Triton validated shape and dtype against config.pbtxt; the batcher may hand over
        # several requests: run them as one batch, then give each its own rows back.
        images = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self._input_name)) for r in requests]
        try:
            outputs = self._run(np.concatenate(images) if len(images) > 1 else np.ascontiguousarray(images[0]))
        except Exception as exc:  # noqa: BLE001 - any runtime failure becomes an error response
            error = pb_utils.TritonError(f"inference failed: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in images:
            stop = start + batch.shape[0]
            tensors = [_output_tensor(name, outputs[i][start:stop]) for name, i in zip(self._output_names, self._order)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
