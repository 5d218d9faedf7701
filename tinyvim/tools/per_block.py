"""Per-block error attribution (`validate --per-block`): where along the network a backend
starts to disagree with PyTorch, not only *that* the outputs differ (Polygraphy's layer-wise
comparison, for TinyViM's blocks).

The ONNX side: the trunk's "spine" (the tensor every block reads and writes) is followed from
the input through the graph; each block ends in a residual Add(spine, branch). The k-th
residual found is matched with the k-th residual of the PyTorch module tree (a LocalBlock has
one, a TViM block two: x + SS2D(x), then x + FFN(x)), so no node name is trusted. The stem's
and each downsampler's outputs (the spine entering a stage), every block's output, and every
SS2D branch's output become extra graph outputs of a copy of the model, which the backend runs
through the same registry as `validate` (an engine is rebuilt from the marked copy).

The PyTorch side: forward hooks on the same modules of the reference (unfused model,
sequential scan) capture the same tensors. Each pair is compared with
`tinyvim.tools.compare.compare_outputs`; the table lists max-abs / relative / cosine per
tap in network order, and names the tap whose error jumps most above everything before it.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable


from tinyvim.backends.model_file import ModelInfo
from tinyvim.backends.spec import RunnerRequest
from tinyvim.backends.trt.builder import build_engine
from tinyvim.backends.trt.sidecar import read_sidecar
from tinyvim.contract import BF16, FP8, FP16, FP32, INPUT_NAME, INT8, TAP_PREFIX
from tinyvim.errors import TinyvimError
from tinyvim.interrupt import unwind_on_termination
from tinyvim.tools.compare import Tolerance, compare_outputs
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
onnx = lazy_import("onnx")
torch = lazy_import("torch")
models = lazy_import("tinyvim.model")
ss2d = lazy_import("tinyvim.model.ss2d")
ops = lazy_import("tinyvim.ops")

#: error of a tap relative to its reference's scale (max |ref|) below which a jump is noise,
#: by the precision the backend computes in (round-off of that precision through a few layers)
NOISE_FLOOR = {FP32: 1e-6, FP16: 1e-3, BF16: 1e-2,
               # int8/fp8: the first quantized layer already rounds to ~1/127 of its range
               INT8: 3e-2, FP8: 3e-2}
#: how many times the largest error before it a tap's error must be to be named as the jump
JUMP_FACTOR = 3.0


@dataclass(frozen=True)
class Tap:
    """One compared tensor: `module` is its path in the PyTorch model (hooked there), `onnx`
    the tensor in the graph, `kind` stem | downsample | block | ss2d | output."""
    module: str
    kind: str
    stage: int | None
    onnx: str = ""


@dataclass(frozen=True)
class Residual:
    spine_in: str     # the tensor the block reads
    branch: str       # its branch's output (SS2D(x), FFN(x), ...)
    out: str          # spine_in + branch


def expected_residuals(model) -> list[tuple[str, str, int]]:
    """The residual adds of an (unfused) TinyViM in forward order: (module whose output the add
    or its branch is, kind, stage). LocalBlock: (network.i.j, block); TViMBlock:
    (network.i.j.op, ss2d) then (network.i.j, block)."""

    found = []
    for idx in range(0, len(model.network), 2):
        for j, block in enumerate(model.network[idx]):
            if isinstance(block, ss2d.TViMBlock):
                found.append((f"network.{idx}.{j}.op", "ss2d", idx // 2))
            found.append((f"network.{idx}.{j}", "block", idx // 2))
    return found


def trunk_residuals(graph, count: int) -> list[Residual]:
    """The first `count` residual adds along the spine of an ONNX graph, from its input.

    At each spine tensor: if an Add reads it and it has another reader (the branch), that Add
    is a residual and its output the next spine tensor; otherwise the spine runs through its
    single reader (Conv, Gelu, Cast ...), or, where it forks (a backbone's stage output feeds
    its norm and the downsampler), through the Conv. Raises TinyvimError when the structure
    is not there."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                      for o in n.output}
    spine = graph.input[0].name
    found: list[Residual] = []
    seen = set()
    while len(found) < count:
        if spine in seen:
            break
        seen.add(spine)
        readers = consumers.get(spine, [])
        adds = [n for n in readers if n.op_type == "Add" and len(readers) >= 2]
        if adds:
            add = adds[0]
            others = [i for i in add.input if i != spine]
            if len(others) != 1 or others[0] in constants:
                break
            found.append(Residual(spine, others[0], add.output[0]))
            spine = add.output[0]
            continue
        # a quantized model (tinyvim quantize) reads the spine into a Conv through Q -> DQ
        onward = readers if len(readers) == 1 else [n for n in readers if n.op_type in ("Conv", "QuantizeLinear")]
        if len(onward) != 1:
            break
        spine = onward[0].output[0]
    if len(found) != count:
        raise TinyvimError(f"cannot follow TinyViM's blocks through this graph (found {len(found)} of {count} "
                           "residual adds along the trunk): per-block comparison needs a tinyvim export")
    return found


def taps_for(model, graph, output_names: list[str]) -> list[Tap]:
    """Every tap, in network order, matched between the PyTorch `model` and the ONNX `graph`."""
    expected = expected_residuals(model)
    residuals = trunk_residuals(graph, len(expected))
    taps: list[Tap] = []
    stage = -1
    for (module, kind, st), res in zip(expected, residuals):
        if st != stage:      # the spine entering a stage: the stem's or a downsampler's output
            taps.append(Tap("patch_embed", "stem", None, res.spine_in) if st == 0
                        else Tap(f"network.{2 * st - 1}", "downsample", st, res.spine_in))
            stage = st
        taps.append(Tap(module, kind, st, res.branch if kind == "ss2d" else res.out))
    taps += [Tap(name, "output", None, name) for name in output_names]
    return taps


def mark_outputs(proto, taps: list[Tap]):
    """A copy of `proto` whose graph also outputs every tap (as TAP_PREFIX + module). The
    tensors are routed through Identity nodes so that the new outputs have names of their own;
    their types come from shape inference."""

    marked = onnx.ModelProto()
    marked.CopyFrom(proto)
    inferred = onnx.shape_inference.infer_shapes(marked, strict_mode=False)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) +
             list(inferred.graph.output) + list(inferred.graph.input)}
    existing = {o.name for o in marked.graph.output}
    for tap in taps:
        if tap.onnx in existing:
            continue
        if tap.onnx not in types:
            raise TinyvimError(f"internal: no type for tensor {tap.onnx} ({tap.module})")
        out = TAP_PREFIX + tap.module
        marked.graph.node.append(onnx.helper.make_node("Identity", [tap.onnx], [out], name=f"{out}_identity"))
        marked.graph.output.append(onnx.helper.make_tensor_value_info(out, types[tap.onnx], None))
    return marked


def capture_reference(model, taps: list[Tap], batch: np.ndarray, output_names: list[str]) -> dict[str, np.ndarray]:
    """The taps' tensors from the PyTorch reference (forward hooks, sequential scan, fp32)."""


    modules = dict(model.named_modules())
    captured: dict[str, np.ndarray] = {}
    handles = []
    for tap in taps:
        if tap.kind == "output":
            continue

        def hook(_module, _inputs, output, key=tap.module):
            captured[key] = output.detach().float().numpy().copy()
        handles.append(modules[tap.module].register_forward_hook(hook))
    try:
        with torch.inference_mode(), ops.scan_implementation("sequential"):
            result = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    outputs = [result] if isinstance(result, torch.Tensor) else list(result)
    captured.update({n: o.float().numpy() for n, o in zip(output_names, outputs)})
    return captured


def tap_key(tap: Tap) -> str:
    return tap.module if tap.kind == "output" else TAP_PREFIX + tap.module


def per_block_rows(taps: list[Tap], reference: dict, candidate: dict, tolerance: Tolerance,
                   precision: str) -> tuple[list[dict], str | None, str | None]:
    """One row per tap (network order), the module whose error jumps most, and the first module
    with NaN/Inf in its output.

    The jump: the tap whose scale-relative error (max |Δ| / max |ref| over finite values) is the
    largest multiple of the largest before it (both floored at NOISE_FLOOR[precision]), when
    that multiple is at least JUMP_FACTOR; None when no tap's error jumps that much. A tap with
    non-finite values has no such error: from the first one on, the culprit is that tap (every
    later tap inherits its NaN/Inf)."""
    ref = {tap_key(t): reference[t.module] for t in taps}
    comparison = compare_outputs(ref, {tap_key(t): candidate[tap_key(t)] for t in taps}, tolerance)
    floor = NOISE_FLOOR.get(precision, NOISE_FLOOR[FP32])
    rows, worst_before, best_jump, culprit, first_nonfinite = [], floor, 0.0, None, None
    for tap, result in zip(taps, comparison.outputs):
        values = np.asarray(ref[tap_key(tap)], dtype=np.float64)
        finite = values[np.isfinite(values)]
        scale = float(np.max(np.abs(finite))) if finite.size else 0.0
        nonfinite = result.nonfinite_candidate + result.nonfinite_reference
        if nonfinite and first_nonfinite is None:
            first_nonfinite = tap.module
        scaled, jump = float("nan"), float("nan")
        if not nonfinite and math.isfinite(result.max_abs_err):
            scaled = result.max_abs_err / (scale or 1.0)
            jump = max(scaled, floor) / worst_before
            if jump > best_jump and first_nonfinite is None:
                best_jump, culprit = jump, tap.module
            worst_before = max(worst_before, scaled)
        rows.append({"module": tap.module, "kind": tap.kind, "stage": tap.stage, "onnx_tensor": tap.onnx,
                     "shape": result.shape, "max_abs_err": result.max_abs_err, "scaled_err": scaled,
                     "max_rel_err": result.max_rel_err, "cosine": result.cosine, "jump": jump,
                     "nonfinite_reference": result.nonfinite_reference,
                     "nonfinite_candidate": result.nonfinite_candidate})
    return rows, culprit if best_jump >= JUMP_FACTOR else None, first_nonfinite


def _marked_model(info: ModelInfo, marked_proto, folder: Path, backend, options: dict, log) -> ModelInfo:
    """The file the backend runs: the marked ONNX itself, or (engines) an engine built from it
    with the precision and batch the original engine was built with."""

    onnx_path = folder / "marked.onnx"
    onnx.save(marked_proto, os.fspath(onnx_path))
    if "onnx" in backend.model_kinds:
        return replace(info, path=os.fspath(onnx_path))
    if info.kind == "engine":
        batch = info.fixed_batch or (info.batch_range[0] if info.batch_range else 1)
        log(f"building a TensorRT engine from the marked ONNX ({info.precision})...")
        result = build_engine(onnx_path, folder / "marked.engine", precision=info.precision, min_batch=batch,
                              opt_batch=batch, max_batch=batch, plugin=options.get("plugin"), log=log)
        return replace(info, path=os.fspath(result.engine_path))
    raise TinyvimError(f"--per-block needs an ONNX model or a TensorRT engine; {info.path} is {info.kind}")


def per_block_source(info) -> str:
    """The ONNX whose tensors --per-block marks for `info` (itself, or the one an engine was built
    from); a one-line TinyvimError for a model it cannot mark - validate calls it before any work."""
    if info.kind == "engine":
        source = read_sidecar(info.path).onnx_path
        if not os.path.isfile(source):
            raise TinyvimError(f"--per-block rebuilds the engine from the ONNX it was built from, {source or '?'}, "
                               "which is not found here")
        return source
    if info.kind != "onnx":
        raise TinyvimError(f"--per-block marks tensors in an ONNX graph; {info.path} is {info.kind}: validate the "
                           "ONNX it was made from")
    return info.path


def run_per_block(info: ModelInfo, config, *, backend, batch: np.ndarray, tolerance: Tolerance, precision: str,
                  threads: int | None = None, options: dict | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """The per-block section of a validation report: {"batch": int, "rows": [{"module", "kind",
    "stage", "onnx_tensor", "shape", "max_abs_err", "scaled_err", "max_rel_err", "cosine",
    "jump"}], "first_jump": module or None, "noise_floor": float}.

    `info` is the validated model, `config` its tinyvim.tools.reference.ReferenceConfig (the
    PyTorch reference is rebuilt from it, unfused), `backend` the registry entry it runs on."""


    options = dict(options or {})
    source = per_block_source(info)
    log("per-block comparison on the first batch...")
    model = models.build_model(config.model)
    proto = onnx.load(source, format="protobuf")
    taps = taps_for(model, proto.graph, list(info.output_names))
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the temporary folder goes too
    with unwind_on_termination(), tempfile.TemporaryDirectory(prefix="tinyvim-per-block-") as tmp:
        marked = _marked_model(info, mark_outputs(proto, taps), Path(tmp), backend, options, log)
        runner = backend.runner(RunnerRequest(model=marked, threads=threads, options=options, log=log))
        with runner:
            candidate = runner.infer({INPUT_NAME: batch})
    reference = capture_reference(model, taps, batch, list(info.output_names))
    rows, culprit, first_nonfinite = per_block_rows(taps, reference, candidate, tolerance, precision)
    return {"batch": int(batch.shape[0]), "rows": rows, "first_jump": first_nonfinite or culprit,
            "first_nonfinite": first_nonfinite, "noise_floor": NOISE_FLOOR.get(precision, NOISE_FLOOR[FP32])}


def format_per_block(section: dict) -> str:
    """The per-block table: one line per tap, the largest jump (or the first NaN/Inf) marked."""
    header = (f"{'block':<18} {'kind':<10} {'shape':<16} {'max abs':>9} {'abs/|ref|':>9} {'max rel':>9} "
              f"{'cosine':>10} {'jump':>8}")
    lines = [f"per-block comparison (batch of {section['batch']}; abs/|ref| = max |Δ| / max |reference|):",
             header, "-" * len(header)]
    first_nonfinite = section.get("first_nonfinite")
    for r in section["rows"]:
        shape = f"{r['module']:<18} {r['kind']:<10} {'x'.join(map(str, r['shape'])):<16}"
        bad = {side: r.get(f"nonfinite_{side}", 0) for side in ("candidate", "reference")}
        if any(bad.values()):
            where = ", ".join(f"{n} NaN/Inf in the {side}" for side, n in bad.items() if n)
            mark = "  <- first non-finite values here" if r["module"] == first_nonfinite else ""
            lines.append(f"{shape} {where}{mark}")
            continue
        mark = "  <- error jumps here" if r["module"] == section["first_jump"] else ""
        lines.append(f"{shape} {r['max_abs_err']:9.2e} {r['scaled_err']:9.2e} {r['max_rel_err']:9.2e} "
                     f"{r['cosine']:10.7f} {r['jump']:7.1f}x{mark}")
    if first_nonfinite is not None:
        lines.append(f"the first NaN/Inf appears in {first_nonfinite}: the blocks after it only carry it on")
    elif section["first_jump"] is None:
        lines.append(f"no block's error jumps by {JUMP_FACTOR:g}x or more above those before it (noise floor "
                     f"{section['noise_floor']:g} of its scale): the error grows evenly along the network")
    return "\n".join(lines)
