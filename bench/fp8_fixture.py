"""Where fp8 (e4m3 Q/DQ) loses fidelity on the trained digits fixture, against int8 on the same
pictures and ranges: the worst per-picture logits cosine (validate's fp8 criterion) and top-1
agreement with the fp32 export on the 360 held-out digits, for

- int8 and fp8 as `tinyvim quantize` writes them (minmax ranges from 256 training pictures);
- fp8 with only its weights in fp8 (activations fp32) and with only its activations in fp8;
- fp8 with other activation ranges (percentile 99.99, entropy) and with weight scales that map
  a smaller amax to 448 (the scale choice: e4m3's relative step is the same at any scale, so
  this should change little);
- fp8 with each region alone back in float (which region's fp8 costs most), and the per-block
  entry figure of `quantize --max-drop` (where the error enters the trunk);
- the element-wise round-trip error of ORT's fp8 Q/DQ vs an exact ml_dtypes reference, and the
  signal-to-quantization-noise ratio of int8 and e4m3 on the fixture's own activations.

    PYTHONPATH=. .venv/bin/python bench/fp8_fixture.py [--threads 2] [--json fp8_fixture.json]

Accuracy figures: they do not depend on machine load (seconds).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from digits_data import FIXTURE_CHECKPOINT, FIXTURE_SIZE, write_pictures  # noqa: E402
from tinyvim.contract import InputSpec, ModelSpec  # noqa: E402
from tinyvim.export import export_onnx  # noqa: E402
from tinyvim.tools import accuracy_budget as ab  # noqa: E402
from tinyvim.tools import quantize as q  # noqa: E402
from tinyvim.tools.inputs import preprocess_image  # noqa: E402


def logits(model, x, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(), so,
                             providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"images": x[i:i + 60]})[0] for i in range(0, len(x), 60)])


def fidelity(out, ref, labels) -> dict:
    a, b = out.astype(np.float64), ref.astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"worst_cosine": float(cos.min()), "p01_cosine": float(np.quantile(cos, 0.01)),
            "median_cosine": float(np.median(cos)), "agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "top1": float(np.mean(a.argmax(1) == labels)), "max_abs": float(np.abs(a - b).max())}


def bypass(qdq: onnx.ModelProto, source: onnx.ModelProto, *, activations: bool, weights: bool) -> onnx.ModelProto:
    """The Q/DQ model with the quantized nodes' activation and/or weight inputs back to fp32."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    before = {n.name: n for n in source.graph.node}
    producer = {o: n for n in out.graph.node for o in n.output}
    have = {i.name for i in out.graph.initializer}
    fp32 = {i.name: i for i in source.graph.initializer}
    for node in out.graph.node:
        if node.name not in before or node.op_type in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        original = before[node.name]
        if activations:
            node.input[0] = original.input[0]
        if weights:
            node.input[1] = original.input[1]
            if original.input[1] not in have:
                out.graph.initializer.append(fp32[original.input[1]])
                have.add(original.input[1])
    ab._prune(out.graph)
    return out


def rescale_weights(fp8: onnx.ModelProto, source: onnx.ModelProto, fraction: float) -> onnx.ModelProto:
    """fp8 weights whose per-channel scale maps fraction x amax (not amax) to 448, clipping above."""
    out = onnx.ModelProto()
    out.CopyFrom(fp8)
    originals = {i.name: i for i in source.graph.initializer}
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and node.input[0].endswith("_quantized"):
            w = numpy_helper.to_array(originals[node.input[0].removesuffix("_quantized")]).astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % w.ndim
            red = tuple(d for d in range(w.ndim) if d != axis)
            scales = (np.maximum(np.abs(w).max(axis=red), 1e-30) * fraction / 448).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            qw = np.clip(w / scales.reshape(shape), -448, 448).astype(ml_dtypes.float8_e4m3fn)
            inits[node.input[0]].CopyFrom(numpy_helper.from_array(qw, node.input[0]))
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(scales, node.input[1]))
    return out


def sqnr_db(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / max(np.sum((x - y).astype(np.float64) ** 2), 1e-300)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tinyvim-fp8bench-"))
    calib, held = work / "calib", work / "held"
    write_pictures(calib, "train", "flat", limit=256)
    (calib / "val.txt").unlink()
    written = write_pictures(held, "heldout", "flat")
    size = (FIXTURE_SIZE, FIXTURE_SIZE)
    x = np.stack([preprocess_image(held / name, size) for name, _ in written])
    labels = np.array([y for _, y in written])
    fp32 = work / "fp32.onnx"
    export_onnx(fp32, ModelSpec("s", checkpoint=FIXTURE_CHECKPOINT), InputSpec(size=size, batch=None))
    ref = logits(str(fp32), x, args.threads)
    report: dict = {"pictures": len(x), "fp32_top1": float(np.mean(ref.argmax(1) == labels)), "rows": {}}
    rows = report["rows"]
    source = onnx.load(str(fp32))
    models = {}
    for name, dtype, method in (("int8 7-bit minmax", "int8", "minmax"), ("fp8 minmax", "fp8", "minmax"),
                                ("fp8 percentile-99.99", "fp8", "percentile"), ("fp8 entropy", "fp8", "entropy")):
        path = work / f"{name.replace(' ', '_')}.onnx"
        q.quantize_onnx(fp32, path, q.CalibrationRequest(calib_dir=calib, method=method), dtype=dtype,
                        reduce_range=dtype == "int8", threads=args.threads)
        models[name] = onnx.load(str(path))
        rows[name] = fidelity(logits(str(path), x, args.threads), ref, labels)
    fp8 = models["fp8 minmax"]
    int8 = models["int8 7-bit minmax"]
    rows["fp8 weights only"] = fidelity(logits(bypass(fp8, source, activations=True, weights=False), x, args.threads),
                                        ref, labels)
    rows["fp8 activations only"] = fidelity(logits(bypass(fp8, source, activations=False, weights=True), x,
                                                   args.threads), ref, labels)
    rows["int8 weights only"] = fidelity(logits(bypass(int8, source, activations=True, weights=False), x,
                                                args.threads), ref, labels)
    rows["int8 activations only"] = fidelity(logits(bypass(int8, source, activations=False, weights=True), x,
                                                    args.threads), ref, labels)
    for fraction in (0.5, 0.25):
        rows[f"fp8 weights scaled to {fraction:g} amax"] = fidelity(
            logits(rescale_weights(fp8, source, fraction), x, args.threads), ref, labels)

    # each region alone back in float: what fp8 in that region costs
    regions = ab.quantized_regions(fp8, source)
    per_region = {}
    for region, nodes in regions.items():
        per_region[region] = fidelity(logits(ab.restore_float(fp8, source, set(nodes)), x, args.threads), ref, labels)
    report["restore_one"] = dict(sorted(per_region.items(), key=lambda kv: -kv[1]["worst_cosine"]))
    held_out = ab.HeldOut(tuple(x[i:i + 60] for i in range(0, len(x), 60)),
                          tuple(len(x[i:i + 60]) for i in range(0, len(x), 60)), None, "held-out digits")
    scorer = ab._Scorer(held_out, args.threads)
    report["entry"] = {"fp8": ab.entry_errors(scorer, source, fp8), "int8": ab.entry_errors(scorer, source, int8)}

    # ORT's fp8 Q/DQ against ml_dtypes, and int8 vs e4m3 SQNR on the fixture's activations
    rng = np.random.default_rng(0)
    t = rng.normal(size=(1, 4096)).astype(np.float32) * 3
    scale = np.float32(np.abs(t).max() / 448)
    qn = onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])
    dqn = onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    g = onnx.helper.make_graph([qn, dqn], "rt", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                               [numpy_helper.from_array(np.array(scale), "s"),
                                numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn), "z")])
    rt = ort.InferenceSession(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 20)])
                              .SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": t})[0]
    exact = (t / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
    report["ort_fp8_roundtrip_max_diff"] = float(np.abs(rt - exact).max())
    acts = q.collect_ranges(source, q.activation_inputs(source.graph, q.select_nodes(source.graph)[0])[:12],
                            q.CalibrationRequest(calib_dir=calib).calibration_set(8, size), threads=args.threads)
    marked = onnx.ModelProto()
    marked.CopyFrom(source)
    names = list(acts)
    for n in names:
        marked.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"images": x[:32]})))
    sq = {}
    for n in names:
        if n not in values or n == "images":
            continue
        v = values[n]
        amax = max(abs(acts[n][0]), abs(acts[n][1]))
        i8 = np.clip(np.round(v / (amax / 127)), -127, 127) * (amax / 127)
        f8 = np.clip(v / (amax / 448), -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * (amax / 448)
        sq[n] = {"int8_db": sqnr_db(v, i8), "fp8_db": sqnr_db(v, f8)}
    report["sqnr_first_activations"] = sq

    for name, r in rows.items():
        print(f"{name:34s} worst cos {r['worst_cosine']:.5f}  1% {r['p01_cosine']:.5f}  median {r['median_cosine']:.6f}  "
              f"agree {r['agreement'] * 100:6.2f} %  top-1 {r['top1'] * 100:6.2f} %  max|d| {r['max_abs']:.3f}")
    print("restore one region (fp8), best worst-cosine first:")
    for region, r in list(report["restore_one"].items())[:8]:
        print(f"  {region:18s} worst cos {r['worst_cosine']:.5f}  agree {r['agreement'] * 100:.2f} %")
    print("entry (fp8 / int8), largest first:")
    e8 = report["entry"]["fp8"]
    for region in sorted(e8, key=lambda r: -e8[r])[:8]:
        print(f"  {region:18s} {e8[region]:+.4f}  int8 {report['entry']['int8'].get(region, float('nan')):+.4f}")
    print(f"ORT fp8 Q/DQ vs ml_dtypes: max diff {report['ort_fp8_roundtrip_max_diff']:.3g}")
    for n, v in sq.items():
        print(f"  SQNR {n[:40]:40s} int8 {v['int8_db']:.1f} dB  fp8 {v['fp8_db']:.1f} dB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
