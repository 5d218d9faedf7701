"""The scan implementations against the independent float64 loop (tinyvim.ops.reference)."""
import numpy as np
import pytest
import torch

import tinyvim
from tinyvim.ops import (available_scan_implementations, check_scan_inputs, cross_selective_scan,
                         current_scan_implementation, scan_dynamic, scan_implementation, scan_parallel, scan_sequential,
                         set_default_scan_implementation)
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs, scan_orders

# (batch, D, h, w, N): odd shapes — h != w, D not a multiple of 8, batch 1 and 3, a
# single row, a prime length, and the model's real 7×7 grid.
SHAPES = [(1, 5, 3, 4, 8), (3, 12, 7, 7, 8), (3, 7, 5, 8, 8), (1, 3, 1, 6, 8), (1, 6, 1, 1, 8),
          (3, 9, 4, 3, 16), (1, 13, 11, 13, 4)]
IMPLS = {"sequential": scan_sequential, "parallel": scan_parallel, "dynamic": scan_dynamic}
# float64: only summation order differs from the reference -> ~1e-15; 1e-6 is the
# contract. float32: inputs rounded to float32 (2^-24 ≈ 6e-8 relative) propagate through
# ≤ 143 steps of contracting recurrences; observed ≤ 3e-7, contract 1e-5.
TOL = {torch.float64: 1e-6, torch.float32: 1e-5}


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_reference(impl, dtype, shape):
    b, d, h, w, n = shape
    inputs = random_scan_inputs(b, d, h, w, n, seed=sum(shape))
    ref = cross_selective_scan_reference(**inputs)
    out = IMPLS[impl](**{k: torch.tensor(v, dtype=dtype) for k, v in inputs.items()})
    assert out.dtype == dtype and out.shape == (b, d, h, w)
    assert _rel_err(out.double().numpy(), ref) <= TOL[dtype]


def test_each_direction_contributes():
    """A change in one direction's projection changes y: the merge really sums four scans."""
    inputs = random_scan_inputs(1, 4, 3, 5, seed=3)
    base = cross_selective_scan_reference(**inputs)
    t = {k: torch.tensor(v) for k, v in inputs.items()}
    for k in range(4):
        changed = dict(t, Cs=t["Cs"].clone())
        changed["Cs"][:, k] += 1.0
        ref_changed = cross_selective_scan_reference(**{n: v.numpy() for n, v in changed.items()})
        assert not np.allclose(ref_changed, base)
        assert _rel_err(scan_parallel(**changed).numpy(), ref_changed) < 1e-10


def test_orders_are_row_column_and_reverses():
    order = scan_orders(2, 3)
    assert order[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert order[1].tolist() == [0, 3, 1, 4, 2, 5]
    assert order[2].tolist() == order[0][::-1].tolist()
    assert order[3].tolist() == order[1][::-1].tolist()


def test_parallel_is_stable_on_long_sequences_and_extreme_steps():
    """32×32 grid (L = 1024) with dt up to ~20 and |A| up to 24: a lowering that took exp of
    a positive cumulative sum would overflow float32 here (exp(>88) = inf)."""
    inputs = random_scan_inputs(1, 3, 32, 32, seed=5)
    inputs["delta"] = inputs["delta"] * 10 + 5
    inputs["delta_bias"] = inputs["delta_bias"] + 6
    inputs["A"] = inputs["A"] * 2
    ref = cross_selective_scan_reference(**inputs)
    out = scan_parallel(**{k: torch.tensor(v, dtype=torch.float32) for k, v in inputs.items()})
    assert torch.isfinite(out).all()
    assert _rel_err(out.double().numpy(), ref) <= 1e-5


def test_op_dispatch_follows_the_selected_implementation(monkeypatch):
    inputs = {k: torch.tensor(v, dtype=torch.float32) for k, v in random_scan_inputs(2, 4, 3, 3).items()}
    calls = []
    from tinyvim.ops import scan as scan_module
    monkeypatch.setitem(scan_module._IMPLEMENTATIONS, "spy", lambda *a: calls.append(1) or scan_sequential(*a))
    with scan_implementation("spy"):
        assert current_scan_implementation() == "spy"
        out = torch.ops.tinyvim.cross_selective_scan(*inputs.values())
    assert calls == [1]
    assert torch.allclose(out, scan_parallel(*inputs.values()), atol=1e-6)
    assert current_scan_implementation() == "auto"


def test_default_implementation_is_process_wide():
    set_default_scan_implementation("sequential")
    try:
        assert current_scan_implementation() == "sequential"
        with scan_implementation("parallel"):
            assert current_scan_implementation() == "parallel"
        assert current_scan_implementation() == "sequential"
    finally:
        set_default_scan_implementation("auto")


def test_auto_uses_parallel_on_cpu(monkeypatch):
    from tinyvim.ops import scan as scan_module
    calls = []
    monkeypatch.setitem(scan_module._IMPLEMENTATIONS, "cuda", lambda *a: calls.append(1))
    inputs = tuple(torch.tensor(v, dtype=torch.float32) for v in random_scan_inputs(1, 4, 3, 3).values())
    with scan_implementation("auto"):
        out = cross_selective_scan(*inputs)
    assert calls == [] and torch.equal(out, scan_parallel(*inputs))


def test_unknown_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scan implementation 'nope'.*parallel"):
        with scan_implementation("nope"):
            pass
    assert {"sequential", "parallel"} <= set(available_scan_implementations())


def test_fake_kernel_gives_shapes_without_compute():
    from torch._subclasses.fake_tensor import FakeTensorMode
    inputs = random_scan_inputs(2, 4, 3, 5)
    with FakeTensorMode():
        fake = {k: torch.empty(v.shape) for k, v in inputs.items()}
        out = torch.ops.tinyvim.cross_selective_scan(*fake.values())
    assert out.shape == (2, 4, 3, 5)


def test_inline_mode_traces_standard_ops_and_op_mode_one_node():
    inputs = tuple(torch.tensor(v, dtype=torch.float32) for v in random_scan_inputs(2, 4, 3, 3).values())

    class M(torch.nn.Module):
        def forward(self, *a):
            return cross_selective_scan(*a)

    ep = torch.export.export(M(), inputs)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.tinyvim.cross_selective_scan.default]
    with scan_implementation("parallel", inline=True):
        ep = torch.export.export(M(), inputs)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "tinyvim.cross_selective_scan.default" not in targets and len(targets) > 5


def test_half_inputs_scan_in_float32():
    inputs = {k: torch.tensor(v, dtype=torch.float32) for k, v in random_scan_inputs(1, 4, 3, 3).items()}
    ref = scan_parallel(**inputs)
    half = dict(inputs, x=inputs["x"].half(), delta=inputs["delta"].half(), Bs=inputs["Bs"].half(),
                Cs=inputs["Cs"].half())
    out = scan_parallel(**half)
    assert out.dtype == torch.float16
    # inputs rounded to fp16 (2^-11 relative) and output rounded once more: ~1e-2 relative.
    assert (out.float() - ref).abs().max() / ref.abs().max() < 1e-2


def test_shape_contract_check_names_the_input():
    inputs = {k: torch.tensor(v) for k, v in random_scan_inputs(1, 4, 3, 3).items()}
    check_scan_inputs(*inputs.values())
    bad = dict(inputs, Ds=inputs["Ds"][:-1])
    with pytest.raises(ValueError, match="Ds must be"):
        check_scan_inputs(*bad.values())
    assert tinyvim.scan_implementation is scan_implementation


@pytest.mark.parametrize("shape", [(3, 7, 5, 8, 8), (1, 13, 11, 13, 4), (1, 3, 1, 6, 8)], ids=lambda s: "x".join(map(str, s)))
def test_traced_parallel_scan_matches_reference(shape):
    """Tracing takes the functional branch of the parallel scan (eager updates in place):
    run the exported program itself against the float64 loop."""
    b, d, h, w, n = shape
    inputs = random_scan_inputs(b, d, h, w, n, seed=11)
    args = tuple(torch.tensor(v, dtype=torch.float32) for v in inputs.values())

    class M(torch.nn.Module):
        def forward(self, *a):
            return cross_selective_scan(*a)

    with scan_implementation("parallel", inline=True):
        ep = torch.export.export(M(), args)
    targets = {str(node.target) for node in ep.graph.nodes if node.op == "call_function"}
    in_place_math = {"aten.exp_.default", "aten.mul_.Tensor", "aten.addcmul_.default", "aten.copy_.default"}
    assert not targets & in_place_math and "aten.addcmul.default" in targets
    out = ep.module()(*args)
    assert _rel_err(out.double().numpy(), cross_selective_scan_reference(**inputs)) <= TOL[torch.float32]


def test_parallel_scan_supports_autograd():
    """With inputs that require grad the scan stays functional, so backward works."""
    inputs = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in random_scan_inputs(1, 3, 3, 4, seed=2).items()}
    scan_parallel(**inputs).sum().backward()
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    scan_sequential(**ref).sum().backward()
    for k in inputs:
        assert torch.allclose(inputs[k].grad, ref[k].grad, rtol=1e-9, atol=1e-12), k
