"""Backends: one folder each (torch, ort, ov, trt), Polygraphy style - how its model is loaded or
built (loader.py / builder.py), its runner (runner.py, the BaseRunner interface of base.py), how
its own file kind is read (model_file.py) - and its declaration (`BACKENDS` in its __init__).
registry.py collects the declarations. Tools that work on any backend live in tinyvim.tools.

Optional runtimes (onnxruntime, openvino, tensorrt) are imported when a runner activates, through
tinyvim.lazy, so importing a backend package works without them."""
